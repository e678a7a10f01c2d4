"""``mobilemoe``: the command line. Each subcommand lives in ``mobilemoe/commands/``.

    mobilemoe arch --preset mobilemoe-s [--json] [--context N] [KEY=VALUE ...]
    mobilemoe use-preset tiny
    mobilemoe config [--preset NAME] [KEY=VALUE ...]

A user error (bad params, missing files, ...) prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UserError

# Subcommand modules; each defines add_parser(subparsers) that sets func=run(args)->int.
COMMANDS = [
    "arch",
    "presets",
    "lineage",
    "train",
    "data",
    "eval",
    "export",
    "generate",
    "scaling",
    "design",
    "hf",
    "plan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilemoe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mobilemoe.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mobilemoe config --keys | head`: the reader left, not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
