"""The ``refdcn`` command line: ``refdcn check | bench | verify | vectors | experiment``.

Each subcommand lives in its own module of :mod:`refdcn.commands`, which
provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Exit codes: 0 success, 1 a check failed, 2 a usage error (argparse's convention),
3 a data error (a malformed input file: ``refdcn vectors check``).
User mistakes print one clear line on stderr, never a traceback.
"""

import argparse
import importlib
import importlib.util
import sys

from . import __version__

#: subcommand -> module under refdcn.commands
COMMANDS = {
    "check": "check",
    "bench": "bench",
    "verify": "verify",
    "vectors": "vectors",
    "experiment": "experiment",
}


class UsageError(Exception):
    """A mistake in how a command was called: reported in one line, exit status 2."""


class DataError(Exception):
    """A malformed input file (not a mistake in the call): one line, exit status 3."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="refdcn",
        description="refdcn: the reference implementation of deformable convolution "
                    "(DCNv1/DCNv2).")
    parser.add_argument("--version", action="version", version=f"refdcn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        full = f"refdcn.commands.{modname}"
        if importlib.util.find_spec(full) is None:
            continue
        module = importlib.import_module(full)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as exc:
        print(f"refdcn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"refdcn {args.command}: data error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
