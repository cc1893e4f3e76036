"""The ``pssr`` command line: a thin argparse front, one library call per subcommand.

Each command lives in the module named after it (``pssr train-pssr``: :mod:`pssr.cli.train_pssr`),
which defines ``register(subparsers)`` adding it; every subcommand's handler is
``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from pssr._version import __version__
from pssr.utils.meta import command_line

# One module per command, named after it (pssr train-pssr: pssr.cli.train_pssr), in the order
# `pssr --help` lists them; each has register(subparsers). pssr.cli.training holds the options the
# train-classifier, train-adversarial and train-pssr commands share.
_COMMAND_MODULES = (
    "pssr.cli.train_classifier",
    "pssr.cli.train_adversarial",
    "pssr.cli.train_pssr",
    "pssr.cli.purify",
    "pssr.cli.calibrate",
    "pssr.cli.evaluate",
    "pssr.cli.report",
    "pssr.cli.reproduce",
    "pssr.cli.demo",
    "pssr.cli.zoo",
    "pssr.cli.finding",
    "pssr.cli.certify",
    "pssr.cli.train_denoiser",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="pssr", description="PSSR adversarial purification: train, attack, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"pssr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    # what the run records as its command (also when main() is called with a list, as in tests)
    args.command_line = command_line(["pssr", *argv])  # with its torchrun launcher under torchrun
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from pssr.utils.meta import note_start_revision

    note_start_revision()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        # Our own validation errors (ValueError subclasses: DataError, ConfigError, ...) and files that
        # cannot be read or written are user errors: print them plainly, without a traceback.
        if args.verbose:
            raise
        print(f"pssr {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pssr {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _message(e: BaseException) -> str:
    """One line: an OSError as 'what: file' (not '[Errno 21] ...'), anything else as its text."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split()) or type(e).__name__


def _one_line_warning(command: str) -> Callable[..., None]:
    """``warnings.showwarning`` for the CLI: 'pssr CMD: warning: message' on stderr, no source line."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"pssr {command}: warning: {message}", file=sys.stderr)

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
