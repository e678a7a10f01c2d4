"""``mobilemoe hf``: Hugging Face folders of our checkpoints, and back (docs/hf.md).

    mobilemoe hf export --checkpoint runs/sft/final --out out/hf [--eval-results FILE]
    mobilemoe hf import out/hf --out runs/imported
    mobilemoe hf config --preset mobilemoe-s          # the transformers config of a preset
    mobilemoe hf card out/hf --eval-results results_checkpoint.json

``export`` writes a folder that ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer``
load offline without custom code; ``import`` makes our checkpoint (manifest and all) of a
folder of a mapped architecture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    from . import add_config_args

    p = sub.add_parser("hf", help="Hugging Face folders: export, import, config, card")
    hsub = p.add_subparsers(dest="hf_command", metavar="ACTION", required=True)

    q = hsub.add_parser("export", help="a checkpoint as a transformers folder (native architecture)")
    q.add_argument("--checkpoint", required=True, help="checkpoint folder")
    q.add_argument("--out", required=True, help="output folder (replaced atomically)")
    q.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype (float32)"
    )
    q.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    _card_args(q)
    q.set_defaults(func=run_export)

    q = hsub.add_parser("import", help="a transformers folder (or hub name) as our checkpoint")
    q.add_argument("source", help="a Hugging Face folder, or ORG/NAME on the hub (network needed)")
    q.add_argument("--out", required=True, help="checkpoint folder to write")
    q.set_defaults(func=run_import)

    q = hsub.add_parser("config", help="print the transformers config.json of a configuration")
    add_config_args(q)
    q.add_argument("--no-count", action="store_true", help="skip counting parameters with transformers")
    q.set_defaults(func=run_config)

    q = hsub.add_parser("card", help="rewrite the model card (README.md) of an exported folder")
    q.add_argument("folder", help="a folder `mobilemoe hf export` wrote")
    _card_args(q)
    q.set_defaults(func=run_card)


def _card_args(q) -> None:
    q.add_argument(
        "--params", help="params file of the run, for the card's data sources (default: the project's)"
    )
    q.add_argument("--eval-results", help="results JSON of `mobilemoe eval` for the card's benchmark table")
    q.add_argument(
        "--lineage", action="append", default=[], metavar="KEY=ID", help="lineage ids for the card"
    )


def _card_inputs(args) -> dict:
    """The model card's data, results and lineage sections from the command's options."""
    from ..config import ConfigError, load_params
    from ..errors import UserError
    from ..hf.card import data_section

    data = None
    try:
        params = load_params(args.params) if args.params else load_params()
    except ConfigError as e:
        if args.params:
            raise
        print(f"warning: the card has no data section (project params.yaml: {e})", file=sys.stderr)
        params = None
    if params is not None:
        try:
            from ..data import DataError, data_version
            from ..data.paths import data_paths

            root = data_paths(params).root
            try:
                version = data_version()
            except DataError:
                version = None
        except (ImportError, UserError):
            root, version = None, None
        data = data_section(params, root, version)
    results = None
    if args.eval_results:
        path = Path(args.eval_results)
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"--eval-results {path}: unreadable ({e})") from None
        if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
            raise UserError(f"--eval-results {path}: not a results file of `mobilemoe eval` (no 'tasks')")
    lineage = {}
    for item in args.lineage:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--lineage {item!r}: expected KEY=ID")
        lineage[key] = value
    return {"data": data, "results": results, "lineage": lineage}


def run_export(args) -> int:
    from ..hf import export_hf

    summary = export_hf(
        args.checkpoint, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size, **_card_inputs(args)
    )
    note = (
        " (float weights of a QAT checkpoint; the INT4 model is the .pte)"
        if summary["qat_float_weights"]
        else ""
    )
    what = f"{summary['architecture']}, {summary['params']:,} parameters, {summary['dtype']}"
    print(f"wrote {args.out}: {what}{note}")
    print(f"files: {', '.join(summary['files'])}")
    return 0


def run_import(args) -> int:
    from ..hf.convert import import_hf, source_folder

    folder = Path(args.source)
    if not folder.is_dir():
        folder = source_folder(f"hf:{args.source}", "source")
    r = import_hf(folder, args.out)
    how = "restored the exported checkpoint" if r["restored"] else "stage hf-import"
    print(f"wrote {r['checkpoint']} from {r['architecture']} ({how}); sha256 {r['checkpoint_sha256']}")
    return 0


def run_config(args) -> int:
    from ..hf.convert import hf_param_count
    from ..hf.mapping import hf_config
    from . import load_config

    params = load_config(args)
    out = hf_config(params.model).to_dict()
    if not args.no_count:
        from ..model.accounting import account

        out["_mobilemoe"] = {
            "transformers_param_count": hf_param_count(params.model),
            "arch_total_params": account(params.model).total_params,
        }
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


def run_card(args) -> int:
    from ..hf import write_card

    path = write_card(args.folder, **_card_inputs(args))
    print(f"wrote {path}")
    return 0
