"""The export chain as named transforms: source model -> exported program -> XNNPACK -> .pte.

    src = load_source("runs/qat/final", quantize="8da4w")     # converted eager model + facts
    ep = export_program(src.model, max_context_len=256)       # torch.export, dynamic length
    edge = lower(ep, program_metadata(src, 256))              # XNNPACK partitions + metadata
    program = to_executorch(edge)                             # out variants, memory plan
    ops = operator_report(program)                            # delegated vs portable, per layer
    pte_bytes = program.buffer

Each step is a plain function so tests can take the chain apart (the operator count test
lowers and inspects without writing a file). :func:`mobilemoe.export.export_pte` runs the
chain and writes the files.

Conventions of ExecuTorch's LLM runner (``extension/llm/runner``, read from the wheel and
its llama export): the method ``forward(tokens [1, T] int64, input_pos [T] int64) ->
logits [1, T, V]`` (a position vector, not a scalar start: the runner sends the cache
positions when the second input has more than one element); one program serves prefill
and decode (T is dynamic, ``enable_dynamic_shape``); the runner samples from the last
position of a 3-D output; metadata are constant methods ``get_max_seq_len`` (tokens per
call), ``get_max_context_len`` (KV-cache slots), ``get_vocab_size``, ``get_bos_id``,
``get_eos_ids``, ``get_n_layers``, ``use_kv_cache``, ``use_sdpa_with_kv_cache``,
``enable_dynamic_shape``. Ours, which the runner ignores: ``use_chat_template`` (the
source was an sft/qat checkpoint: prompt with ``mobilemoe.tokens.chat_prompt``).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import CONFIG, TOKENIZER, checkpoint_sha256, load_checkpoint
from ..errors import UserError
from ..generate import CHAT_STAGES
from ..tokens import BOS_ID, END_OF_TURN_ID, EOS_ID

QUANTIZE = ("8da4w", "none")
# Operators that must run inside XNNPACK: a program where any of them is left to the
# portable kernels has lost its fast path (the operator-count test holds this).
MATMUL_OPS = ("linear", "mm", "addmm", "bmm", "matmul", "convolution")
# Graph bookkeeping in an ExecuTorch program, not kernels: memory planning and tuple access.
NOT_OPERATORS = ("getitem", "alloc", "view", "free")


class ExportError(UserError):
    """The checkpoint cannot be exported as asked; the message says why and what to do."""


@dataclass
class SourceModel:
    """What the chain exports and what the report says about it."""

    model: Any  # MobileMoE in eval mode (converted by convert_qat for 8da4w)
    config: dict  # the checkpoint's config.json
    checkpoint: Path
    checkpoint_sha256: str
    tokenizer: Path
    quantize: str
    qat: Any = None  # the QATSpec applied (8da4w), else None

    @property
    def group_size(self) -> Optional[int]:
        return self.qat.group_size if self.qat is not None else None

    @property
    def stage(self) -> Optional[str]:
        return self.config.get("stage")

    @property
    def use_chat_template(self) -> bool:
        return self.stage in CHAT_STAGES


def check_tokenizer(path: Path, vocab_size: int) -> None:
    """The tokenizer must be a mobilemoe tokenizer whose ids fit the model's vocabulary."""
    from ..data.tokenizer import load_tokenizer

    if not path.is_file():
        raise ExportError(
            f"{path}: no tokenizer beside the checkpoint; the exported program "
            "ships the tokenizer the model was trained with"
        )
    try:
        tok = load_tokenizer(path)
    except UserError as e:
        raise ExportError(str(e)) from None
    n = tok.get_vocab_size()
    if n > vocab_size:
        raise ExportError(
            f"{path}: tokenizer has {n} ids but the model's vocabulary "
            f"(model.vocab_size) is {vocab_size}: they do not match; export the "
            "checkpoint with the tokenizer it was trained with"
        )


def load_source(checkpoint_dir: str | os.PathLike, quantize: str = "8da4w", ptq: Any = None) -> SourceModel:
    """Load a checkpoint as the eager model to export (converted for 8da4w).

    ``ptq``: a QAT spec (``params.qat``) to quantize a float checkpoint after training in
    the same format (post-training quantization, for programs measured for speed only,
    such as the dense baseline); without it 8da4w needs a QAT checkpoint.
    """
    from ..quant import checkpoint_qat_spec, convert_qat, qat_spec

    if quantize not in QUANTIZE:
        raise ExportError(f"quantize: {quantize!r} is not one of {', '.join(QUANTIZE)}")
    folder = Path(checkpoint_dir)
    sha = checkpoint_sha256(folder)  # verifies the manifest first: a corrupt folder stops here
    model, config = load_checkpoint(folder, verify_files=False)
    tokenizer = folder / TOKENIZER
    check_tokenizer(tokenizer, model.cfg.vocab_size)
    spec = checkpoint_qat_spec(config, str(folder))
    if quantize == "8da4w" and spec is None and ptq is not None:
        spec = qat_spec(ptq)
        config = {**config, "ptq": True}
    if quantize == "8da4w":
        if spec is None:
            raise ExportError(
                f"{folder}: INT4 (8da4w) export needs a QAT checkpoint, but this one is stage "
                f"{config.get('stage')!r} with no 'qat' entry in {CONFIG}; export the qat stage's "
                "checkpoint, or pass quantize='none' (--quantize none) for an fp32 program"
            )
        model = convert_qat(model, spec)
    else:
        model = model.eval()
    return SourceModel(model, config, folder, sha, tokenizer, quantize, spec if quantize == "8da4w" else None)


def program_metadata(src: SourceModel, max_context_len: int) -> dict[str, Any]:
    return runner_metadata(src.model.cfg, max_context_len, src.use_chat_template)


def runner_metadata(cfg: Any, max_context_len: int, use_chat_template: bool = False) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads, for a model of config ``cfg``
    (also used by benchmarks that build models without a checkpoint)."""
    return {
        "get_max_seq_len": max_context_len,  # tokens per call: a whole context fits one prefill
        "get_max_context_len": max_context_len,
        "get_vocab_size": cfg.vocab_size,
        "get_n_layers": cfg.n_layers,
        "get_bos_id": BOS_ID,
        "get_eos_ids": [EOS_ID, END_OF_TURN_ID],
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
        "use_chat_template": use_chat_template,
    }


def export_program(model, max_context_len: int):
    """``torch.export`` of the export form, tokens [1, T] and positions [T], T in [1, S]."""
    from torch.export import Dim, export

    from .modules import ExportableMobileMoE

    program_model = ExportableMobileMoE(model, max_context_len).eval()
    T = Dim("T", min=1, max=max_context_len)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.arange(2))
    try:
        with torch.no_grad():
            return export(program_model, example, dynamic_shapes=({1: T}, {0: T}), strict=False)
    except Exception as e:  # torch.export raises many types; the op name is in the text
        raise ExportError(f"torch.export failed{_op_hint(str(e))}: {_first_line(e)}") from e


def lower(exported, metadata: dict[str, Any]):
    """XNNPACK partitions (fp32 and 8da4w linears, elementwise, softmax, bmm) + metadata."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    _load_quantized_kernels()
    try:
        return to_edge_transform_and_lower(
            exported,
            partitioner=[XnnpackPartitioner()],
            constant_methods=metadata,
            compile_config=EdgeCompileConfig(_check_ir_validity=True),
        )
    except Exception as e:
        raise ExportError(f"lowering to ExecuTorch failed{_op_hint(str(e))}: {_first_line(e)}") from e


def check_kernels(program) -> None:
    """Every operator left outside XNNPACK needs a kernel in the runtime; name the first that has none.

    ``program``: the ExecuTorch program manager (after ``to_executorch``: out variants).
    """
    from executorch.extension.pybindings import portable_lib

    _load_quantized_kernels()  # their operators count as available once loaded
    nodes = list(program.exported_program().graph_module.graph.nodes)
    if any(
        str(getattr(n.target, "_schema", "")).startswith("mmoe::") for n in nodes if n.op == "call_function"
    ):
        load_moe_kernels()
    have = set(portable_lib._get_operator_names())
    for node in nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None or schema.name.startswith(("executorch_prim::", "aten::sym_size")):
            continue
        name = f"{schema.name}.{schema.overload_name}" if schema.overload_name else schema.name
        if name not in have and schema.name not in have:
            raise ExportError(
                f"operator {schema.name} ({_where(node)}) is not supported: XNNPACK does not take "
                "it and the ExecuTorch runtime has no kernel for it; rewrite that part of the "
                "model with supported operators (see mobilemoe/export/modules.py)"
            )


def to_executorch(edge):
    """The ExecuTorch program (out variants, memory plan); ``.buffer`` is the .pte's bytes."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    try:
        program = edge.to_executorch(
            ExecutorchBackendConfig(
                # Plan memory for the longest call (T = max_seq_len), not the example's T.
                sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
                # The KV-cache writes (index_put on the cache buffers) in place: without it
                # every call copies each layer's whole cache twice (measured: a third of a
                # MobileMoE-S decode step at 2,048 slots).
                run_reinplace_pass=True,
                do_quant_fusion_and_const_prop=True,
            )
        )  # INT4 embedding: docs/libraries.md
    except Exception as e:
        raise ExportError(f"ExecuTorch serialisation failed{_op_hint(str(e))}: {_first_line(e)}") from e
    check_kernels(program)
    return program


def operator_report(program) -> dict[str, Any]:
    """Operators delegated to XNNPACK vs left to portable kernels, in all and per layer.

    ``program``: the ExecuTorch program (after :func:`to_executorch`: what runs) or the
    edge program (after :func:`lower`).

    Layers are named by where a node came from in the export form: ``layer.N``,
    ``embedding``, ``head`` (final norm + LM head), ``per-call`` (RoPE tables and masks,
    computed once per call for all layers).
    """
    from executorch.exir.lowered_backend_module import get_lowered_submodules

    gm = program.exported_program().graph_module
    delegated: dict[str, Counter] = defaultdict(Counter)
    portable: dict[str, Counter] = defaultdict(Counter)
    n_partitions = 0
    for _, lowered, _ in get_lowered_submodules(gm):
        n_partitions += 1
        for node in lowered.original_module.graph.nodes:
            if node.op == "call_function" and _op_name(node) not in NOT_OPERATORS:
                delegated[_layer_of(node)][_op_name(node)] += 1
    for node in gm.graph.nodes:
        if node.op != "call_function" or "executorch_call_delegate" in str(node.target):
            continue
        name = _op_name(node)
        if name in NOT_OPERATORS or name.startswith(("sym_size", "executorch_prim")):
            continue
        portable[_layer_of(node)][name] += 1
    layers = sorted(set(delegated) | set(portable), key=_layer_sort_key)
    per_layer = {
        k: {
            "delegated": sum(delegated[k].values()),
            "portable": sum(portable[k].values()),
            "portable_ops": dict(sorted(portable[k].items())),
        }
        for k in layers
    }
    total_delegated = sum(sum(c.values()) for c in delegated.values())
    total_portable = sum(sum(c.values()) for c in portable.values())
    all_delegated: Counter[str] = Counter()
    all_portable: Counter[str] = Counter()
    for c in delegated.values():
        all_delegated.update(c)
    for c in portable.values():
        all_portable.update(c)
    moe = moe_kernel_report(portable)
    return {
        "backend": "XnnpackBackend",
        "partitions": n_partitions,
        "moe": moe,
        "delegated_ops": total_delegated,
        "portable_ops": total_portable,
        "delegated_by_op": dict(sorted(all_delegated.items())),
        "portable_by_op": dict(sorted(all_portable.items())),
        "per_layer": per_layer,
    }


def moe_kernel_report(portable: dict[str, Counter]) -> dict[str, Any]:
    """Which layers run the routed experts with the top-k kernel (``mmoe::``)."""
    kernel = {
        layer: {op: n for op, n in ops.items() if op.startswith("moe_ffn_")}
        for layer, ops in portable.items()
    }
    layers = sorted((k for k, ops in kernel.items() if ops), key=_layer_sort_key)
    return {"kernel_layers": layers, "kernel_calls": {k: kernel[k] for k in layers}}


# -- helpers ------------------------------------------------------------------------------


def _load_quantized_kernels() -> None:
    try:  # registers quantized_decomposed::embedding_4bit & co. (needed at export AND run time)
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        pass


def load_moe_kernels() -> None:
    """Load mobilemoe's kernel library (``mmoe::`` ExecuTorch kernels: MoE and attention) into the process."""
    import mobilemoe_kernels

    try:
        mobilemoe_kernels.load()
    except mobilemoe_kernels.KernelLibraryError as e:
        raise ExportError(f"mobilemoe's kernel library is needed to export and run programs: {e}") from None


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    schema = getattr(target, "_schema", None)
    if schema is not None:
        name = schema.name.split("::")[-1]
    return name.replace(".default", "")


_LAYER_RE = re.compile(r"^(?:attns|ffns|attn_norms|ffn_norms)\.(\d+)")
_ARG_LAYER_RE = re.compile(r"(?:attns|ffns)_(\d+)_")


def _layer_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values()] if stack else []
    for path in reversed(paths):
        path = path.removeprefix("L['self'].").replace("L__self__.", "")
        m = _LAYER_RE.match(path)
        if m:
            return f"layer.{m.group(1)}"
        if path.startswith("tok_embeddings"):
            return "embedding"
        if path.startswith(("output", "norm")):
            return "head"
    # Nodes made by ExecuTorch passes (fused INT4 embedding, cache write-back) lost the
    # module stack: name them by operator or by the buffer they write.
    if _op_name(node).startswith("embedding"):
        return "embedding"
    for arg in node.args:
        m = _ARG_LAYER_RE.search(getattr(arg, "name", ""))
        if m:
            return f"layer.{m.group(1)}"
    return "per-call"


def _layer_sort_key(name: str):
    order = {"embedding": (0, 0), "per-call": (1, 0), "head": (3, 0)}
    if name.startswith("layer."):
        return (2, int(name.split(".")[1]))
    return order.get(name, (4, 0))


def _where(node) -> str:
    return f"in {_layer_of(node)}"


def _op_hint(message: str) -> str:
    m = re.search(r"(?:aten|[a-z_]+)::[A-Za-z0-9_.]+|aten\.[A-Za-z0-9_.]+", message)
    return f" at operator {m.group(0)}" if m else ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]
