"""flushsink.batch.ids: the storage name of an id (safe_id) and its shard.

The property tests are the contract: the mapping is injective, every name is one path
component that stays inside its prefix, and names that are not cut decode back to their id.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re

import pytest
from hypothesis import example, given, settings, strategies as st

from flushsink.batch import ALL, MAX_SAFE_ID, Shard, check_id, id_from_safe, safe_id, shard_of
from flushsink.errors import ConfigError

FUZZ_SCALE = float(os.environ.get("FLUSHSINK_FUZZ_SCALE", "1"))
EXAMPLES = max(10, int(1000 * FUZZ_SCALE))
NAME = re.compile(r"[A-Za-z0-9._%~-]+")

# Valid Unicode only: lone surrogates are refused (check_id), so they are no id.
ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=150)
# Small alphabets find the near misses: dots, escapes, the hash mark, device names.
tricky = st.text(st.sampled_from(list("./\\%~-_aA0Cc:ONUL \x00é\u2028")), min_size=1,
                 max_size=140)
any_id = st.one_of(ids, tricky, st.integers(min_value=-10**30, max_value=10**30).map(str))


@pytest.mark.parametrize("row_id, name", [
    ("abc-DEF_1.2", "abc-DEF_1.2"),
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("...", "%2E.%2E"),
    (".hidden", "%2Ehidden"),
    ("trailing.", "trailing%2E"),
    ("a/b", "a%2Fb"),
    ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
    ("a\\b", "a%5Cb"),
    ("100%", "100%25"),
    ("~x", "%7Ex"),
    ("é", "%C3%A9"),
    ("a b", "a%20b"),
    ("con", "%63on"),
    ("NUL.tar.gz", "%4EUL.tar.gz"),
    ("COM1", "%43OM1"),
    ("console", "console"),
])
def test_safe_id_examples(row_id, name):
    assert safe_id(row_id) == name
    assert id_from_safe(name) == row_id


def test_a_long_id_is_cut_and_hashed_and_never_splits_an_escape():
    row_id = "x" * 86 + "/" + "y" * 100
    name = safe_id(row_id)
    assert len(name) == MAX_SAFE_ID - 1  # the cut stepped back from 87 to before "%2F"
    assert name == "x" * 86 + "~" + hashlib.sha256(row_id.encode()).hexdigest()[:32]
    assert id_from_safe(name) is None
    assert len(safe_id("z" * 120)) == 120 and safe_id("z" * 120) == "z" * 120
    assert "~" in safe_id("z" * 121)


@settings(max_examples=EXAMPLES, deadline=None)
@given(any_id)
@example("..")
@example(".")
@example("/")
@example("a" * 121)
def test_safe_id_is_one_harmless_component(row_id):
    name = safe_id(row_id)
    assert NAME.fullmatch(name), name
    assert len(name) <= MAX_SAFE_ID
    assert name not in (".", "..") and not name.startswith(".") and not name.endswith(".")
    assert name.partition(".")[0].upper() not in ("CON", "PRN", "AUX", "NUL")
    for prefix in ("", "bucket/prefix", "/srv/out"):
        path = posixpath.join(prefix, "audio", name, "0.wav")
        assert posixpath.normpath(path) == path or prefix == ""
        assert posixpath.dirname(posixpath.dirname(path)) == posixpath.join(prefix, "audio")
    decoded = id_from_safe(name)
    assert decoded == (None if "~" in name else row_id)


@settings(max_examples=EXAMPLES, deadline=None)
@given(any_id, any_id)
@example("a" * 121, "a" * 122)
@example(".", "%2E")
@example("con", "%63on")
def test_safe_id_is_injective(first, second):
    if first != second:
        assert safe_id(first) != safe_id(second)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(any_id, min_size=2, max_size=40, unique=True))
def test_many_ids_many_names(batch):
    assert len({safe_id(row_id) for row_id in batch}) == len(batch)


@pytest.mark.parametrize("value, message", [
    ("", "id is empty"),
    (True, "not bool"),
    (1.5, "not float"),
    (None, "not NoneType"),
    ("a\ud800", "lone surrogate"),
])
def test_check_id_refuses(value, message):
    with pytest.raises(ValueError, match=message):
        check_id(value)
    with pytest.raises(ValueError):
        safe_id(value)


def test_integer_ids_are_their_decimal_text():
    assert check_id(42) == "42" and safe_id(-7) == "-7"


def test_shard_of_is_the_documented_hash():
    for row_id in ("a", "row-17", "é", "x" * 1000):
        digest = hashlib.sha256(row_id.encode("utf-8")).digest()
        for count in (1, 2, 3, 8, 1000):
            assert shard_of(row_id, count) == int.from_bytes(digest[:8], "big") % count
    # pinned, so a change of the rule shows: shards already written depend on it
    assert [shard_of(f"row-{i}", 4) for i in range(8)] == [
        int.from_bytes(hashlib.sha256(f"row-{i}".encode()).digest()[:8], "big") % 4
        for i in range(8)]
    assert shard_of("a", 1000) == 0xca978112ca1bbdca % 1000


def test_shards_split_ids_evenly_and_exactly():
    shards = [Shard(i, 4) for i in range(4)]
    counts = [0] * 4
    for i in range(4000):
        owners = [s for s in shards if s.owns(f"id-{i}")]
        assert len(owners) == 1
        counts[owners[0].index] += 1
    assert all(850 < c < 1150 for c in counts), counts
    assert ALL.owns("anything") and ALL == Shard(0, 1)


@pytest.mark.parametrize("text, shard", [("0/1", Shard(0, 1)), ("3/8", Shard(3, 8)),
                                         (" 1/2 ", Shard(1, 2))])
def test_shard_parse(text, shard):
    assert Shard.parse(text) == shard
    assert str(shard) == text.strip() and shard.label == text.strip().replace("/", "of")


@pytest.mark.parametrize("text", ["", "1", "2/2", "-1/2", "1/0", "a/b", "1/2/3", "١/٢"])
def test_shard_parse_refuses(text):
    with pytest.raises(ConfigError):
        Shard.parse(text)
