"""The model card (``README.md``) of an exported Hugging Face folder.

    text = model_card(cfg, arch, ckpt_config, data=data_section(params, data_root, version),
                      results=eval_results, lineage={"pipeline_run_id": ...})

What it states: the architecture and how it maps, where the weights come from (stage,
step, QAT float weights), the data sources with their licences, the data version (DVC
md5s) and the tokens each source gave each mix, the benchmark table of the run (from a
results file of ``mobilemoe eval``), and the lineage ids to walk back with ``mobilemoe
lineage``. Sections without information say so and how to fill them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..config.model import ModelConfig
from .mapping import shared_width

MIXES = ("pretrain", "midtrain", "sft")


def data_section(params: Any, data_root: Optional[Path], version: Optional[dict]) -> dict:
    """Sources (name, kind, use, licence, origin) from ``params.data``, tokens per mix from the
    shards' ``meta.json`` under ``data_root`` (if there), the data version."""
    sources = []
    for s in getattr(getattr(params, "data", None), "sources", None) or []:
        origin = s.get("path") or s.get("url") or s.get("kind")
        sources.append(
            {
                "name": s.get("name"),
                "kind": s.get("kind"),
                "use": s.get("use", "pretrain"),
                "licence": s.get("licence"),
                "origin": origin,
            }
        )
    mixes: dict[str, Any] = {}
    for mix in MIXES:
        meta = Path(data_root) / "shards" / mix / "meta.json" if data_root else None
        if meta is not None and meta.is_file():
            try:
                m = json.loads(meta.read_text())
            except ValueError:
                continue
            mixes[mix] = {"licences": m.get("licences"), "source_mix": m.get("source_mix")}
    return {"sources": sources, "mixes": mixes, "version": dict(version or {})}


def _arch_rows(cfg: ModelConfig, arch: str) -> list[tuple[str, str]]:
    rows = [
        ("transformers architecture", f"`{arch}`"),
        ("layers x d_model", f"{cfg.n_layers} x {cfg.d_model}"),
        (
            "attention",
            f"{cfg.n_heads} heads, {cfg.n_kv_heads} KV heads (GQA), head dim {cfg.resolved_head_dim}",
        ),
        ("QK-norm", "RMSNorm per head" if cfg.qk_norm else "none"),
        (
            "RoPE",
            f"theta {cfg.rope_theta:g}"
            + (
                f", llama3 scaling x{cfg.rope_scaling.factor:g} from {cfg.rope_scaling.original_context}"
                if cfg.rope_scaling
                else ""
            ),
        ),
        ("context", str(cfg.max_seq_len)),
        ("vocabulary", f"{cfg.vocab_size} ({'tied' if cfg.tie_embeddings else 'untied'} embeddings)"),
    ]
    if cfg.sliding_window is not None and any(cfg.is_local_layer(i) for i in range(cfg.n_layers)):
        rows.append(("sliding window", f"{cfg.sliding_window}, every {cfg.global_every}-th layer global"))
    moe = cfg.moe
    if moe is None:
        rows.append(("FFN", f"dense SwiGLU {cfg.ffn_hidden}"))
    else:
        rows.append(
            (
                "MoE",
                f"{moe.n_routed_experts} routed experts x {moe.expert_hidden}, top-{moe.top_k}, "
                f"{moe.router} router"
                + (", expert_bias for selection only" if moe.router == "sigmoid" else "")
                + (", renormalised" if moe.renormalize else "")
                + (f", route scale {moe.route_scale:g}" if moe.route_scale != 1 else "")
                + (f", shared SwiGLU {shared_width(moe)}" if shared_width(moe) else ", no shared expert")
                + (
                    f", first {moe.n_dense_layers} layers dense ({cfg.ffn_hidden})"
                    if moe.n_dense_layers
                    else ""
                ),
            )
        )
    return rows


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]


def _results_table(results: dict) -> list[str]:
    lines = ["| task | metric | score | stderr | n |", "|---|---|---|---|---|"]
    for task, r in (results.get("tasks") or {}).items():
        score, err = r.get("score"), r.get("stderr")
        lines.append(
            f"| {task} | {r.get('metric')} | {'-' if score is None else f'{score:.4f}'} | "
            f"{'-' if err is None else f'{err:.4f}'} | {r.get('n', '-')} |"
        )
    return lines


def model_card(
    cfg: ModelConfig,
    arch: str,
    ckpt_config: dict,
    data: Optional[dict] = None,
    results: Optional[dict] = None,
    lineage: Optional[dict] = None,
    params_count: Optional[int] = None,
) -> str:
    stage, step, qat = ckpt_config.get("stage"), ckpt_config.get("step"), ckpt_config.get("qat")
    licences = sorted({s["licence"] for s in (data or {}).get("sources", []) if s.get("licence")})
    out = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [mobilemoe, mixture-of-experts, on-device]" if cfg.moe else "tags: [mobilemoe, on-device]",
        "license: other  # the weights' terms follow the training data's licences below",
        "---",
        "",
        f"# {cfg.name}",
        "",
        f"A model trained with the mobilemoe pipeline, exported as a Hugging Face folder of "
        f"transformers' own `{arch}` (no custom code). Stage `{stage}`, step {step}.",
        "",
    ]
    if qat:
        out += [
            f"**QAT checkpoint**: these are the float (fp32) weights of a quantization-aware "
            f"trained model ({qat.get('scheme')}, group {qat.get('group_size')}). The INT4 model "
            "it was trained for is the ExecuTorch program (`.pte`) exported beside it; these "
            "weights compute the float model, not the INT4 one.",
            "",
        ]
    out += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
    out += [
        'tok = AutoTokenizer.from_pretrained("PATH")      # adds <|bos|>; chat template = our SFT format',
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        "```",
        "",
        "## Architecture",
        "",
        *_table(_arch_rows(cfg, arch), ("", "")),
        "",
    ]
    if params_count is not None:
        out += [f"Parameters: {params_count:,}.", ""]
    out += ["## Training data", ""]
    if data and data.get("sources"):
        out += ["| source | kind | use | licence | origin |", "|---|---|---|---|---|"]
        for s in data["sources"]:
            out.append(f"| {s['name']} | {s['kind']} | {s['use']} | {s['licence']} | {s['origin']} |")
        out += ["", f"Licences: {', '.join(licences) or 'not recorded'}.", ""]
        for mix, m in (data.get("mixes") or {}).items():
            split = (m.get("source_mix") or {}).get("train") or {}
            used = ", ".join(f"{k} {v.get('tokens', 0):,} tokens" for k, v in split.items())
            out.append(f"- `{mix}` mix (train split): {used or 'not recorded'}")
        if data.get("mixes"):
            out.append("")
        if data.get("version"):
            out += ["Data version (DVC md5 of each data stage output):", ""]
            out += [f"- `{p}`: `{md5}`" for p, md5 in data["version"].items()] + [""]
    else:
        out += ["Not recorded (export with `--params` naming the run's params.yaml).", ""]
    out += ["## Benchmarks", ""]
    if results and results.get("tasks"):
        out += _results_table(results) + [""]
        if results.get("limit") is not None:
            out += [f"Evaluated on at most {results['limit']} documents per task.", ""]
    else:
        out += [
            "Not part of this export: a pipeline run's eval step records the scores on the "
            "MLflow LoggedModel of its program (`mobilemoe lineage --pte model.pte`); "
            "`mobilemoe hf card DIR --eval-results FILE` puts a results file of `mobilemoe "
            "eval` here.",
            "",
        ]
    out += ["## Lineage", ""]
    ids = {
        "checkpoint_sha256": ckpt_config.get("_checkpoint_sha256"),
        "init_checkpoint_sha256": ckpt_config.get("init_checkpoint_sha256"),
        "tokenizer_sha256": ckpt_config.get("tokenizer_sha256"),
        **(lineage or {}),
    }
    out += [f"- {k}: `{v}`" for k, v in ids.items() if v]
    out += ["", "Walk back with `mobilemoe lineage --checkpoint DIR` or `--run ID`.", ""]
    return "\n".join(out)
