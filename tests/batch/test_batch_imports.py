"""The core stays light: ``import flushsink`` does not import the batch package, and the
batch package imports neither obstore nor pyarrow (nor datasets) until an S3 store is
opened or a Parquet file read, whether or not they are installed."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import flushsink
assert "flushsink.batch" not in sys.modules
import flushsink.batch
from flushsink.batch import read_rows, LocalStore, safe_id
heavy = sorted(m for m in ("obstore", "pyarrow", "datasets", "pandas", "moto")
               if m in sys.modules)
assert not heavy, heavy
"""


def test_import_flushsink_and_flushsink_batch_stay_light():
    subprocess.run([sys.executable, "-c", CHECK], check=True, timeout=60)
