"""``mobilemoe train``: run one training stage (resumable) from the command line.

    mobilemoe train --stage pretrain --out runs/pretrain [--data data] [KEY=VALUE ...]
    mobilemoe train --stage midtrain --out runs/midtrain --init runs/pretrain/final
    mobilemoe train --stage sft --out runs/sft --init runs/midtrain/final --preset tiny

Rerunning the same command after an interruption resumes from the latest checkpoint in
``--out``; ``<stage>.nproc=2`` trains with 2 data-parallel processes (torchrun).
"""

from __future__ import annotations

import json

from ..config import TRAIN_STAGES
from . import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one stage: pretrain | midtrain | sft | qat (resumable)")
    p.add_argument("--stage", required=True, choices=TRAIN_STAGES)
    p.add_argument("--out", required=True, help="output folder (checkpoints/, final/, metrics.jsonl)")
    p.add_argument("--init", default=None, help="input checkpoint folder (required after pretrain)")
    p.add_argument(
        "--data",
        default=None,
        help="data root, folder of mixes, or the mix folder itself (default: the project's data)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (default: the input checkpoint's, else the one beside the data)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..train import run_stage

    params = load_config(args, memory_plan=True)
    torch.set_num_threads(params.runtime.threads)
    result = run_stage(
        params,
        args.stage,
        data_dir=args.data,
        out_dir=args.out,
        init_checkpoint=args.init,
        tokenizer=args.tokenizer,
    )
    summary = {
        "stage": args.stage,
        "checkpoint": str(result.checkpoint),
        "checkpoint_sha256": result.checkpoint_sha256,
        **result.summary(),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0
