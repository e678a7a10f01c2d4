"""``mobilemoe plan``: bytes per GPU of every training stage, the settings that fit, and
the GPU-hours the stages cost (``mobilemoe.plan``)."""

from __future__ import annotations

import json

from . import add_config_args


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="memory per GPU (DDP/FSDP), settings that fit, GPU-hours per stage")
    add_config_args(p)
    p.add_argument("--gpus", type=int, required=True, help="GPUs per stage (nproc)")
    p.add_argument("--gpu-mem-gb", type=float, required=True, help="memory of one GPU, GB (e.g. 80)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation for GPU-hours (0.4)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak of one GPU, TFLOP/s (989: H100/H200)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_params, load_preset, params_path, preset_path
    from ..plan import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, plan, render
    from ..preflight import preflight

    overrides = list(args.overrides) + list(args.set_overrides)
    if args.preset:
        params, source = load_preset(args.preset, overrides), preset_path(args.preset)
    else:
        params = load_params(args.params, overrides)
        source = args.params or params_path()
    preflight(params, str(source))  # the plan is what this command shows: never refused by it
    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    peak = DEFAULT_PEAK_TFLOPS if args.peak_tflops is None else args.peak_tflops
    result = plan(params, args.gpus, args.gpu_mem_gb, mfu=mfu, peak_tflops=peak)
    print(json.dumps(result) if args.json else render(result))
    return 0
