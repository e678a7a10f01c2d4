"""Checks of a loaded configuration that need code above the config layer.

``mobilemoe.config`` validates types, ranges and cross-field rules on its own, but two
names can only be checked by the code that uses them (and whether the training stages fit
the GPU only by the memory plan, ``mobilemoe.plan``): offline lm-eval task names (the
eval suite) and the device-lab queue URI (the device-lab protocol). Importing those from
``config`` would make the bottom layer depend on the layers above it, so the checks live
here and run where work starts: the pipeline's ``start`` step and every CLI command that
loads params. They raise the same :class:`~mobilemoe.config.ConfigError` a bad value
raises while loading, before any work.

    from mobilemoe.preflight import preflight
    preflight(load_params())          # ConfigError: eval.tasks: unknown task(s) ...
"""

from __future__ import annotations

from typing import Optional

from device_lab.schema import ProtocolError, parse_queue_uri

from .config import ConfigError, Params
from .config.base import fail
from .config.device_lab import DeviceLabConfig
from .config.evaluation import EvalConfig
from .eval.suite import available_tasks, describe_available


def preflight(params: Params, source: Optional[str] = None, memory_plan: bool = False) -> None:
    """Check the names in ``params`` that only the eval suite and device lab know, and
    (``memory_plan``: where training starts, the flow's ``start`` and ``mobilemoe train``)
    that each training stage fits its GPUs.

    ``source`` (the params file) prefixes the message as loading does; without it the
    message starts at the dotted key.
    """
    try:
        check_eval_tasks(params.eval, "eval")
        check_device_lab(params.device_lab, "device_lab")
        if memory_plan:
            check_memory_plan(params)
    except ConfigError as e:
        if source:
            raise ConfigError(f"{source}: {e}") from None
        raise


def cuda_memory_gb(params: Params) -> Optional[float]:
    """Memory of the GPU training will use, GB; None when training runs on the CPU
    (``runtime.device: cpu``, or ``auto`` without CUDA)."""
    if params.runtime.device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1e9


def check_memory_plan(params: Params) -> None:
    """Refuse settings whose memory plan (``mobilemoe.plan``) does not fit the GPU, before
    any work, instead of an out-of-memory error an hour into a stage.

    Runs only where training runs on CUDA: each stage's ``nproc`` GPUs of this machine's
    GPU memory. On the CPU nothing is checked (host memory is not planned)."""
    mem = cuda_memory_gb(params)
    if mem is None:
        return
    from .config import TRAIN_STAGES
    from .plan import configured_misfits, plan, render

    misfits, tables = [], []
    for nproc in sorted({getattr(params, s).nproc for s in TRAIN_STAGES}):
        p = plan(params, nproc, mem)
        bad = [
            line for line in configured_misfits(p) if getattr(params, line.split(":", 1)[0]).nproc == nproc
        ]
        if bad:
            misfits += bad
            tables.append(render(p))
    if misfits:
        raise ConfigError(
            "memory plan: the configured settings do not fit the GPU: "
            + "; ".join(misfits)
            + " (`mobilemoe plan --gpus N --gpu-mem-gb M` shows the plan)\n"
            + "\n".join(tables)
        )


def check_eval_tasks(cfg: EvalConfig, key: str) -> None:
    """Offline tasks must be in the bundled suite (hub names are lm-eval's to check)."""
    if cfg.source != "offline":
        return
    known = set(available_tasks())
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        fail(
            f"{key}.tasks", f"unknown task(s) {', '.join(unknown)}; available offline: {describe_available()}"
        )


def check_device_lab(cfg: DeviceLabConfig, key: str) -> None:
    """The queue URI must parse under the device-lab protocol (which also refuses
    credentials written into it, without repeating them)."""
    if cfg.queue is None:
        return
    try:
        parse_queue_uri(cfg.queue, f"{key}.queue")
    except ProtocolError as e:
        fail(f"{key}.queue", str(e).split(": ", 1)[-1])
