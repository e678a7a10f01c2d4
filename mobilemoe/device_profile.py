"""The pipeline's ``device_profile`` stage: send the ``.pte`` to the device lab, wait, report.

    from mobilemoe.device_profile import run_device_profile, profile_metrics, plot_tok_per_s
    result = run_device_profile(params, "out/model.pte", "out/tokenizer.json", workdir)
    metrics = profile_metrics(result)   # flat floats for MLflow (the .pte's LoggedModel)
    metrics |= bytes_metrics(params, result)   # bytes a decoded token reads, decode GB/s
    fig = plot_tok_per_s(result)        # matplotlib figure for the Metaflow card
    ops = decode_ops(result)            # one decode step's slowest operators (ETDump)

With ``device_lab.queue`` set, the job goes to that lab's queue (its runners live next to
the devices). With ``queue: null`` (the embedded default) a local folder queue is made in
``workdir`` and a runner serves it in a thread of this process for the call's duration;
the benchmark itself still runs in its own child process. The result is the device
lab's result document (``device_lab.schema``): ``status`` ok | error | rejected. A
missing result after ``device_lab.timeout_s`` raises :class:`DeviceProfileTimeout`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional

from .config.base import ConfigError
from .errors import UserError


class DeviceProfileTimeout(UserError):
    """No result within ``device_lab.timeout_s``; the message says how to fetch it later."""


def _check_fits(params) -> None:
    cfg = params.device_lab
    context = params.export.max_seq_len or params.model.max_seq_len
    longest = max(cfg.prompt_lengths) + cfg.decode_tokens
    if longest > context:
        key = "export.max_seq_len" if params.export.max_seq_len else "model.max_seq_len"
        raise ConfigError(
            f"device_lab.prompt_lengths: the longest prompt ({max(cfg.prompt_lengths)}) "
            f"+ device_lab.decode_tokens ({cfg.decode_tokens}) = {longest} tokens do "
            f"not fit the program's context ({key}={context}); shorten them"
        )


def benchmark_of(params, op_profile: bool = True) -> dict[str, Any]:
    cfg = params.device_lab
    return {
        "prompt_lengths": list(cfg.prompt_lengths),
        "decode_tokens": cfg.decode_tokens,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "threads": cfg.threads,
        "op_profile": op_profile,
    }  # one decode step's per-operator times (ETDump)


def run_device_profile(
    params,
    pte_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    workdir: str | os.PathLike,
    labels: Optional[dict[str, str]] = None,
    op_profile: bool = True,
) -> dict:
    """Dispatch one profiling job for ``pte_path`` and return its result document.

    ``op_profile``: also ask for one decode step's per-operator times (ETDump; the result's
    ``raw.decode_op_profile``, see :func:`decode_ops`).
    """
    from device_lab.backends import make_backend, registry
    from device_lab.queue import Queue
    from device_lab.runner import Runner
    from device_lab.schema import ProtocolError
    from device_lab.submit import submit_job, wait_for_result
    from device_lab.transport import TransportError, open_transport

    cfg = params.device_lab
    _check_fits(params)
    for what, path in (("program", pte_path), ("tokenizer", tokenizer_path)):
        if not Path(path).is_file():
            raise UserError(f"device_profile: {what} {path} not found (run the export stage first)")
    workdir = Path(workdir).resolve()
    stop, thread, crashed = threading.Event(), None, []
    try:
        if cfg.queue is None:
            if cfg.backend not in registry():
                raise ConfigError(
                    f"device_lab.backend: {cfg.backend!r} cannot run on the embedded "
                    f"local runner (it has {', '.join(sorted(registry()))}); set "
                    "device_lab.queue to a lab whose runners offer it"
                )
            queue_uri = f"file://{workdir / 'device_lab' / 'queue'}"
            queue = Queue(open_transport(queue_uri))
            runner = Runner(
                Queue(open_transport(queue_uri)),
                [make_backend(cfg.backend)],
                workdir / "device_lab" / "runner",
                poll_s=min(cfg.poll_s, 0.2),
                job_timeout_s=cfg.timeout_s,
            )

            def serve():
                try:
                    runner.serve(stop)
                except BaseException as e:  # reported below, instead of a timeout
                    crashed.append(e)

            thread = threading.Thread(target=serve, daemon=True, name="device-lab-local-runner")
            thread.start()
        else:
            queue_uri = cfg.queue
            queue = Queue(open_transport(cfg.queue, cfg.endpoint_url))
        job_id = submit_job(
            queue,
            pte_path,
            tokenizer_path,
            benchmark_of(params, op_profile),
            backend=cfg.backend,
            deadline_s=cfg.timeout_s,
            labels=labels,
        )
        result = wait_for_result(
            queue,
            job_id,
            cfg.timeout_s,
            cfg.poll_s,
            should_stop=(lambda: not thread.is_alive()) if thread else None,
        )
    except (TransportError, ProtocolError) as e:
        raise UserError(f"device_lab.queue {cfg.queue or '(local)'}: {e}") from None
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
    if result is None and crashed:
        err = crashed[0]
        raise UserError(
            f"device_profile: the embedded device-lab runner stopped "
            f"({type(err).__name__}: {err}); no profile was measured"
        ) from err
    if result is None:
        raise DeviceProfileTimeout(
            f"device_lab: no result for job {job_id} on {queue_uri} within device_lab.timeout_s="
            f"{cfg.timeout_s:g} s; is a runner offering backend {cfg.backend!r} serving that queue? "
            f"Fetch it later: python -m device_lab.submit --queue {queue_uri} --result {job_id}"
        )
    return result


def profile_metrics(result: dict) -> dict[str, float]:
    """Flat numeric metrics of a result (empty unless ``status`` is ok)."""
    if result.get("status") != "ok":
        return {}
    out: dict[str, float] = {}
    if result.get("decode_tok_per_s") is not None:
        out["device_decode_tok_per_s"] = float(result["decode_tok_per_s"])
    for n, v in sorted(result.get("prefill_tok_per_s", {}).items(), key=lambda kv: int(kv[0])):
        out[f"device_prefill_tok_per_s_{n}"] = float(v)
    for name in ("load_s", "peak_rss_bytes"):
        if result.get(name) is not None:
            out[f"device_{name}"] = float(result[name])
    if result.get("peak_rss_bytes") is not None and result.get("baseline_rss_bytes") is not None:
        out["device_program_rss_bytes"] = float(result["peak_rss_bytes"] - result["baseline_rss_bytes"])
    return out


def bytes_metrics(params, result: dict) -> dict[str, float]:
    """What a decoded token reads (``mobilemoe.model.accounting.decode_bytes``) and the
    decode bandwidth that implies at the measured speed (weights + KV cache read per
    token x tokens/s). The program's attention (``mmoe::attend_kv``) reads the slots a
    query may see: counted at the middle of the decode after the median prompt length."""
    import statistics

    from .model.accounting import decode_bytes, kv_read_bytes

    context = params.export.max_seq_len or params.model.max_seq_len
    db = decode_bytes(params.model, context)
    lab = params.device_lab
    position = min(int(statistics.median(lab.prompt_lengths)) + lab.decode_tokens // 2, context - 1)
    kv = kv_read_bytes(params.model, position)
    out = {
        "device_active_weight_bytes_per_token": float(db.active_weight_bytes),
        "device_total_weight_bytes": float(db.total_weight_bytes),
        "device_kv_bytes_per_token": float(kv),
        "device_kv_position": float(position),
        "device_active_weight_fraction": db.active_weight_bytes / db.total_weight_bytes,
    }
    decode = result.get("decode_tok_per_s") if result.get("status") == "ok" else None
    if decode:
        out["device_decode_bandwidth_gb_s"] = (db.active_weight_bytes + kv) * decode / 1e9
    return out


def decode_ops(result: dict, top: int = 12) -> list[tuple[str, float, int]]:
    """The slowest operators of one decode step (ETDump), (op, ms, calls)."""
    prof = (result.get("raw") or {}).get("decode_op_profile") or {}
    return [(o["op"], o["ms"], o["calls"]) for o in prof.get("ops", [])[:top]]


def decode_cost_ratio(moe_profile: dict, dense_profile: dict) -> Optional[float]:
    """MoE decode time per token / the dense-active model's (None without both)."""
    moe = (moe_profile.get("summary") or {}).get("device_decode_tok_per_s")
    dense = (dense_profile.get("summary") or {}).get("device_decode_tok_per_s")
    return dense / moe if moe and dense else None


COST_RATIO_TARGET = 1.3  # our choice: MoE decode time <= 1.3 x the dense-active model's


def plot_tok_per_s(result: dict):
    """Tokens/s by prompt length (prefill and decode), one matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    device = result.get("device", {}).get("description", "device")
    if result.get("status") != "ok":
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"no measurement ({result.get('status')}):\n{result.get('reason')}",
            ha="center",
            va="center",
            wrap=True,
        )
        return fig
    pre = sorted((int(n), v) for n, v in result["prefill_tok_per_s"].items())
    dec = sorted((int(n), v) for n, v in result.get("decode_tok_per_s_by_prompt", {}).items())
    ax.plot([n for n, _ in pre], [v for _, v in pre], "o-", label="prefill")
    if dec:
        ax.plot([n for n, _ in dec], [v for _, v in dec], "s-", label="decode")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("tokens / s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([n for n, _ in pre], [str(n) for n, _ in pre])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    threads = (result.get("benchmark") or {}).get("threads")
    ax.set_title(f"{device[:60]}\n{result.get('backend')}, {threads} thread(s), medians", fontsize=8)
    fig.tight_layout()
    return fig
