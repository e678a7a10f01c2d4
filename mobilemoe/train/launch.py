"""Module entry for torchrun: one rank of a training stage.

    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        -m mobilemoe.train.launch --params-json P.json --stage pretrain --out DIR --data MIX

``run_stage`` builds this command itself when ``<stage>.nproc > 1``; run it by hand to
train under a torchrun of your own (multi-node: give torchrun its rendezvous options).
A user error on any rank is written to ``DIR/launch/launch_error.json`` (rank 0's wins)
so the launching process can report it as one message.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mobilemoe.train.launch")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--params-json", help="the Params as JSON (written by run_stage)")
    src.add_argument("--params", help="a params.yaml")
    ap.add_argument("--stage", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--init", default=None)
    ap.add_argument("--tokenizer", default=None)
    args = ap.parse_args(argv)

    from ..config import load_params
    from ..errors import UserError
    from ..io import write_json_atomic
    from .distributed import shutdown_distributed
    from .stage import LAUNCH_ERROR, load_params_json, run_stage

    rank = int(os.environ.get("RANK", "0"))
    try:
        params = load_params_json(args.params_json) if args.params_json else load_params(args.params)
        result = run_stage(
            params,
            args.stage,
            data_dir=args.data,
            out_dir=args.out,
            init_checkpoint=args.init,
            tokenizer=args.tokenizer,
        )
        if rank == 0:
            print(f"{args.stage}: done, checkpoint {result.checkpoint}", file=sys.stderr)
        return 0
    except UserError as e:
        err = Path(args.out) / "launch" / LAUNCH_ERROR
        if rank == 0 or not err.exists():
            err.parent.mkdir(parents=True, exist_ok=True)
            info = {
                "message": str(e),
                "kind": type(e).__name__,
                "rank": rank,
                "step": getattr(e, "step", None),
            }
            write_json_atomic(err, info)
        print(f"error (rank {rank}): {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
