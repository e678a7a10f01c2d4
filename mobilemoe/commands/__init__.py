"""CLI subcommands (one module each) and their shared argument helpers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Params, load_params, load_preset, params_path, preset_path
from ..preflight import preflight


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset NAME | --params FILE, plus trailing dotted overrides KEY=VALUE."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help="a preset in presets/ (default: the project's params.yaml)")
    group.add_argument("--params", help="a params file (default: the project's params.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. model.moe.top_k=2"
    )
    parser.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="same as a trailing override (repeatable)",
    )


def load_config(args: argparse.Namespace, memory_plan: bool = False) -> Params:
    """The params the command asked for, validated and preflighted (task names, queue
    URI; with ``memory_plan``, commands that train: the GPU memory plan) before the
    command does any work."""
    overrides = list(args.overrides) + list(args.set_overrides)
    if args.preset:
        params = load_preset(args.preset, overrides)
        source = preset_path(args.preset)
    else:
        params = load_params(args.params, overrides)
        source = Path(args.params) if args.params else params_path()
    preflight(params, str(source), memory_plan=memory_plan)
    return params
