"""CLI subcommands (one module each) and their shared argument helpers."""

from __future__ import annotations

import argparse

from ..config import Params, load_params, load_preset


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset NAME | --params FILE, plus trailing dotted overrides KEY=VALUE."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help="a preset in presets/ (default: the project's params.yaml)")
    group.add_argument("--params", help="a params file (default: the project's params.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. model.moe.top_k=2")
    parser.add_argument("--set", dest="set_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="same as a trailing override (repeatable)")


def load_config(args: argparse.Namespace) -> Params:
    overrides = list(args.overrides) + list(args.set_overrides)
    if args.preset:
        return load_preset(args.preset, overrides)
    return load_params(args.params, overrides)
