"""The ``flushsink`` command: say, serve, demo, bench.

Without an API key (``--api-key`` or ``CARTESIA_API_KEY``) and without ``--url``,
``say`` and ``demo`` start the embedded emulator on 127.0.0.1 and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import sys
import time
from typing import Any, AsyncIterator, Callable, NoReturn, Optional, Sequence

from . import __version__
from ._accel import BACKEND, SIMD
from .client import connect
from .errors import ConfigError
from .formats import ENCODINGS, SAMPLE_RATES
from .session import normalize_url
from .writers import FileWriter

DEMO_VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"  # the voice of Cartesia's seed example

#: The exit status after an argument that makes no sense.
USAGE = 2


def version_text() -> str:
    return (f"flushsink {__version__} (core: {BACKEND}, simd: {SIMD}, "
            f"Python {platform.python_version()} {platform.python_implementation()})")


@contextlib.asynccontextmanager
async def _server(url: Optional[str], api_key: Optional[str],
                  out: Any = sys.stderr) -> AsyncIterator[tuple[Optional[str], Optional[str]]]:
    """The url and key to use: Cartesia or --url as given, else the embedded emulator."""
    api_key = api_key or os.environ.get("CARTESIA_API_KEY") or None
    if url is not None or api_key is not None:
        yield url, api_key
        return
    from .emulator import Emulator

    async with Emulator() as emu:
        print(f"no API key (--api-key or CARTESIA_API_KEY): using the embedded emulator at "
              f"{emu.ws_url}", file=out)
        yield emu.url, None


async def synthesize(texts: Sequence[str], *, out_dir: str, container: str, encoding: str,
                     sample_rate: int, model: str, voice: str, url: Optional[str],
                     api_key: Optional[str], language: Optional[str], timeout: float,
                     progress: bool = True) -> list[Any]:
    """Speak ``texts`` in one context, one flush segment each; returns the segments."""
    writer = FileWriter(out_dir, container=container)
    output_format = {"container": "raw", "encoding": encoding, "sample_rate": sample_rate}
    segments = []
    async with _server(url, api_key) as (server_url, key):
        async with connect(server_url, key, writer=writer, receive_timeout=timeout) as tts:
            ctx = tts.context(model_id=model, voice=voice, output_format=output_format,
                              language=language)
            for i, text in enumerate(texts):
                await ctx.push(text)
                if i < len(texts) - 1:
                    await ctx.flush()
            await ctx.no_more_inputs()
            started = time.perf_counter()
            async for segment in ctx.segments():
                segments.append(segment)
                if progress and len(texts) > 3:
                    audio = sum(s.duration for s in segments)
                    print(f"\r  {len(segments)}/{len(texts)} segments, {audio:.1f} s of audio, "
                          f"{time.perf_counter() - started:.1f} s", end="", file=sys.stderr)
            if progress and len(texts) > 3:
                print(file=sys.stderr)
    return segments


def print_table(segments: Sequence[Any], out: Any = sys.stdout) -> None:
    rows = [("flush_id", "duration", "samples", "state", "path")]
    for s in segments:
        state = "complete" if s.complete else f"incomplete ({s.error})"
        rows.append((str(s.flush_id), f"{s.duration:.3f} s", str(len(s.samples)), state,
                     os.path.relpath(s.path) if s.path else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
    total = sum(s.duration for s in segments)
    print(f"{len(segments)} segments, {total:.3f} s of audio", file=out)


def _cmd_say(args: argparse.Namespace) -> int:
    segments = asyncio.run(synthesize(
        args.text, out_dir=args.out, container=args.container, encoding=args.encoding,
        sample_rate=args.sample_rate, model=args.model, voice=args.voice, url=args.url,
        api_key=args.api_key, language=args.language, timeout=args.timeout))
    print_table(segments)
    return 0 if all(s.complete for s in segments) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    print(f"{version_text()}\n"
          "Seed scenario: 'Stay hungry, ' then a flush, then 'stay foolish.' -> two WAV files")
    segments = asyncio.run(synthesize(
        ["Stay hungry, ", "stay foolish."], out_dir=args.out, container="wav",
        encoding="pcm_s16le", sample_rate=44100, model="sonic-latest", voice=DEMO_VOICE,
        url=args.url, api_key=args.api_key, language="en", timeout=args.timeout))
    print_table(segments)
    return 0 if len(segments) == 2 and all(s.complete for s in segments) else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from .emulator import Emulator

    emulator = Emulator(args.host, args.port, api_key=args.api_key, chunk_ms=args.chunk_ms,
                        flush_id_base=args.flush_id_base,
                        flush_id_on_chunks=not args.no_flush_id_on_chunks,
                        pace=args.pace, idle_timeout=args.idle_timeout or None,
                        record_messages=False)

    def ready(emu: Any) -> None:
        print(f"flushsink emulator listening on {emu.ws_url} (Ctrl-C stops it)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(emulator.serve_forever(ready))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import run_quick_bench

    run_quick_bench(seconds=args.seconds, chunk_ms=args.chunk_ms, sample_rate=args.sample_rate)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line like every other error of the command:
    ``flushsink: argument --port: ... (see 'flushsink serve --help')``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"flushsink: {message} (see '{self.prog} --help')\n")


def _number(kind: Callable[[str], Any], low: float, high: float, *,
            above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number (an int if ``kind`` is int) from ``low`` (or
    above it) to ``high``. nan and inf are refused: nan slips through checks such as
    ``x <= 0``, and neither is a duration or a size."""
    noun = "an integer" if kind is int else "a number"
    rule = (f"{noun} above {low:g} and at most {high:g}" if above
            else f"{noun} from {low:g} to {high:g}")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (value is None or (kind is not int and not math.isfinite(value))
                or not (low < value if above else low <= value) or value > high):
            raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}")
        return value

    return parse


def _not_blank(what: str = "must not be empty") -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(what)
        return text

    return parse


def _url(text: str) -> str:
    """A ws:// or wss:// URL with a host (and a port that exists, if it names one)."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    try:
        parse_uri(normalize_url(text))
    except ConfigError as exc:  # not ws:// or wss://
        raise argparse.ArgumentTypeError(str(exc)) from None
    except InvalidURI as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable URL: {exc.msg}") from None
    except ValueError as exc:  # a port out of range
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable URL: {exc}") from None
    return text


def _pace(text: str) -> Any:
    if text in ("fast", "realtime"):
        return text
    try:
        return _number(float, 0, 1e6, above=True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'fast', 'realtime' or a speed factor above 0, not {text!r}") from None


SECONDS_MAX = 86400.0  # a day: longer is a typo, not a wish


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flushsink",
        description="Receive Cartesia-style TTS websocket audio fast: one file per flush.",
        epilog="Without --url and without an API key, 'say' and 'demo' run against the "
               "embedded emulator on 127.0.0.1.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version, the core (compiled or pure), the SIMD path "
                             "and the Python, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", type=_url,
                       help="ws:// or wss:// URL (default: Cartesia, or the emulator when no "
                            "key is set; without a path: /tts/websocket)")
        p.add_argument("--api-key", type=_not_blank("must not be empty (an unset variable?)"),
                       help="API key (default: $CARTESIA_API_KEY)")
        p.add_argument("--out", default="out", type=_not_blank(),
                       help="output directory (default: %(default)s)")
        p.add_argument("--timeout", type=_number(float, 0, SECONDS_MAX, above=True),
                       default=60.0, metavar="SECONDS",
                       help="longest wait for the server's next audio (default: %(default)s)")

    say = commands.add_parser(
        "say", help="speak texts, one flush segment and file each",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speak each TEXT as one flush segment of one context and write one file "
                    "per segment\n(OUT/CONTEXT_ID/FLUSH_ID.wav), then print a table of them.",
        epilog="example:\n  flushsink say 'Stay hungry, ' 'stay foolish.' --out out "
               "--encoding pcm_f32le --sample-rate 24000")
    say.add_argument("text", nargs="+", metavar="TEXT", type=_not_blank("must not be blank"),
                     help="text of one segment")
    server_options(say)
    say.add_argument("--container", choices=("wav", "raw"), default="wav",
                     help="file format (default: %(default)s)")
    say.add_argument("--encoding", choices=tuple(ENCODINGS), default="pcm_s16le",
                     metavar="ENCODING", help=f"one of {', '.join(ENCODINGS)} "
                                              "(default: %(default)s)")
    say.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=44100,
                     metavar="HZ", help=f"one of {', '.join(map(str, SAMPLE_RATES))} "
                                        "(default: %(default)s)")
    say.add_argument("--model", default="sonic-latest", type=_not_blank(),
                     help="model id (default: %(default)s)")
    say.add_argument("--voice", default=DEMO_VOICE, type=_not_blank(),
                     help="voice id (default: %(default)s)")
    say.add_argument("--language", default="en", type=_not_blank(),
                     help="language code (default: %(default)s)")
    say.set_defaults(run=_cmd_say)

    demo = commands.add_parser("demo", help="the seed scenario: two flushes, two WAV files")
    server_options(demo)
    demo.set_defaults(run=_cmd_demo, out=os.path.join("out", "demo"))

    serve = commands.add_parser("serve", help="run the Cartesia emulator")
    serve.add_argument("--host", default="127.0.0.1",
                       type=_not_blank("must not be empty (0.0.0.0 listens on every "
                                       "interface)"),
                       help="address (default: %(default)s)")
    serve.add_argument("--port", type=_number(int, 0, 65535), default=8765,
                       help="port, 0 for any free one (default: %(default)s)")
    serve.add_argument("--api-key", type=_not_blank("must not be empty (an unset variable?)"),
                       help="require this key (default: accept any)")
    serve.add_argument("--chunk-ms", type=_number(float, 1, 10000), default=100.0,
                       metavar="MS", help="audio per chunk, 1 to 10000 (default: %(default)s)")
    serve.add_argument("--flush-id-base", type=int, choices=(0, 1), default=1,
                       help="flush id of a context's first segment (default: %(default)s)")
    serve.add_argument("--no-flush-id-on-chunks", action="store_true",
                       help="send chunks without flush_id")
    serve.add_argument("--pace", default="fast", type=_pace,
                       help="'fast', 'realtime' or a speed factor (default: %(default)s)")
    serve.add_argument("--idle-timeout", type=_number(float, 0, SECONDS_MAX), default=300.0,
                       metavar="SECONDS",
                       help="close a connection idle this long, 0: never (default: "
                            "%(default)s)")
    serve.set_defaults(run=_cmd_serve)

    bench = commands.add_parser("bench", help="a quick Sink benchmark against the stdlib loop",
                                description="Feed chunk frames to the Sink and to the "
                                            "json.loads + base64.b64decode loop; for the full "
                                            "comparison see benchmarks/.")
    bench.add_argument("--seconds", type=_number(float, 0.01, 600), default=10.0,
                       help="audio per segment, 0.01 to 600 (default: %(default)s)")
    bench.add_argument("--chunk-ms", type=_number(float, 1, 10000), default=100.0,
                       metavar="MS", help="audio per chunk, 1 to 10000 (default: %(default)s)")
    bench.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=44100,
                       metavar="HZ", help=f"one of {', '.join(map(str, SAMPLE_RATES))} "
                                          "(default: %(default)s)")
    bench.set_defaults(run=_cmd_bench)
    return parser



def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else USAGE
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear line, not a traceback, for expected failures
        from .errors import FlushsinkError

        if isinstance(exc, (FlushsinkError, OSError)):
            print(f"flushsink: {exc}", file=sys.stderr)
            return 2
        raise
