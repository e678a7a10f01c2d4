"""``mobilemoe use-preset`` and ``mobilemoe config``: choose and inspect the configuration.

The project's ``params.yaml`` is the one file DVC, the flows and lineage read, so a preset
is chosen by copying it there (after validating it); the old file is kept as
``params.yaml.bak``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from . import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("use-preset", help="make presets/NAME.yaml the project's params.yaml")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("name", nargs="?", help="preset name (see `mobilemoe presets`)")
    g.add_argument("--file", metavar="PATH", help="install this params file instead of a preset")
    p.set_defaults(func=run_use)
    p = sub.add_parser("config", help="print the validated configuration as YAML")
    add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with its type and range instead")
    p.set_defaults(func=run_show)
    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=run_list)


def run_use(args) -> int:
    from ..config import load_params, params_path, preset_path
    from ..preflight import preflight

    src = Path(args.file) if args.file else preset_path(args.name)
    preflight(load_params(src), str(src))  # never install an invalid file
    dst = params_path()
    what = f"file {str(src)!r}" if args.file else f"preset {args.name!r}"
    if dst.exists() and src.resolve() == dst.resolve():
        print(f"params.yaml already is {what}; nothing changed")
        return 0
    # Validated first and installed by one rename: a failure leaves params.yaml as it was.
    tmp = dst.with_name(f".params.yaml.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        if dst.exists():
            shutil.copy2(dst, dst.with_name("params.yaml.bak"))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"params.yaml is now {what} (previous file kept as params.yaml.bak)")
    return 0


def run_show(args) -> int:
    if args.keys:
        from ..config import Params
        from ..config.base import describe_keys
        from ..config.data import SourceConfig

        for key, kind in [*describe_keys(Params), *describe_keys(SourceConfig, "data.sources[].")]:
            print(f"{key:<48} {kind}")
        return 0
    print(yaml.safe_dump(load_config(args).to_dict(), sort_keys=False), end="")
    return 0


def run_list(args) -> int:
    from ..config import load_preset, preset_names

    for name in preset_names():
        print(f"{name:<22} {load_preset(name).model.name}")
    return 0
