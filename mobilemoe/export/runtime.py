"""Run an exported ``.pte`` with the ExecuTorch runtime: per-position logits and generation.

    pte = PteModel("out/model.pte", "out/tokenizer.json")
    logits_TV = pte.logits([1, 87, 301, ...])             # every position (evaluation)
    new_ids = pte.generate(prompt_ids, max_new_tokens=32)  # greedy; or temperature/top_p/seed
    text = pte.generate_text("Hello", max_new_tokens=32)   # chat template if the source was sft/qat
    pte.executions                                          # program runs so far (proof it ran)

The program keeps its KV cache inside the loaded method; every call writes the positions
it is given, so a new sequence simply starts again at position 0 (stale slots beyond the
current position are masked, never read as values). Prompts longer than one call
(``max_seq_len``) are fed in chunks; nothing may exceed ``max_context_len``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from ..errors import UserError

METADATA_INT = ("get_max_seq_len", "get_max_context_len", "get_vocab_size", "get_n_layers", "get_bos_id")
METADATA_BOOL = ("use_kv_cache", "enable_dynamic_shape", "use_sdpa_with_kv_cache", "use_chat_template")


def _runtime():
    try:  # the extension itself; portable_lib would import all of exir first (seconds)
        from executorch.extension.pybindings import _C as rt
    except ImportError:  # pragma: no cover - older wheels
        from executorch.extension.pybindings import portable_lib as rt
    try:  # INT4 embedding kernels: needed at run time too
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        pass
    return rt


def load_kernels_for(path: Path) -> list[str]:
    """Load mobilemoe's MoE kernel library if the program calls it (a UserError if it cannot)."""
    import mobilemoe_kernels

    _runtime()
    try:
        return mobilemoe_kernels.load_for(path)
    except mobilemoe_kernels.KernelLibraryError as e:
        raise UserError(str(e)) from None


def set_runtime_threads(n: int) -> None:
    """ExecuTorch's own thread pool ignores torch/OMP settings (docs/libraries.md#threads)."""
    _runtime()._unsafe_reset_threadpool(int(n))


def refuse_unloadable(path: Path) -> None:
    """A UserError naming ``path`` unless a child process can load it: ExecuTorch aborts
    the process on some corrupt files rather than raising (device_lab.program_probe)."""
    from device_lab.program_probe import probe_program

    if (problem := probe_program(path)) is not None:
        raise UserError(f"{path}: {problem}; is it a .pte written by `mobilemoe export`?")


class PteModel:
    """An LLM-convention ``.pte`` loaded in this process."""

    def __init__(
        self, pte_path: str | Path, tokenizer_path: str | Path | None = None, threads: Optional[int] = None
    ):
        self.path = Path(pte_path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: program not found")
        refuse_unloadable(self.path)
        self.kernel_ops = load_kernels_for(self.path)
        rt = _runtime()
        if threads is not None:
            rt._unsafe_reset_threadpool(int(threads))
        try:  # a bad file may load lazily and fail at the first question asked of it
            self._module = rt._load_for_executorch(str(self.path))
            names = set(self._module.method_names())
        except RuntimeError as e:
            raise UserError(
                f"{self.path}: ExecuTorch could not load it ({e}); is it a .pte "
                "written by `mobilemoe export`?"
            ) from None
        missing = [m for m in ("forward", "get_max_seq_len", "get_vocab_size") if m not in names]
        if missing:
            raise UserError(
                f"{self.path}: not an LLM-convention program (no {', '.join(missing)} "
                "method); export it with `mobilemoe export`"
            )
        self.metadata: dict = {}
        for name in METADATA_INT + METADATA_BOOL:
            if name in names:
                value = self._module.run_method(name, ())[0]
                self.metadata[name] = bool(value) if name in METADATA_BOOL else int(value)
        if "get_eos_ids" in names:
            self.metadata["get_eos_ids"] = [int(v) for v in self._module.run_method("get_eos_ids", ())]
        self.executions = 0  # forward runs of the program (prefill chunks + decode steps)
        self.tokenizer_path = (
            Path(tokenizer_path) if tokenizer_path else self.path.with_name("tokenizer.json")
        )
        self._tokenizer = None
        report = self.path.with_name("export_report.json")
        self.report = json.loads(report.read_text()) if report.is_file() else None

    # -- metadata ---------------------------------------------------------------------------
    @property
    def max_seq_len(self) -> int:
        """Most tokens one call takes."""
        return self.metadata["get_max_seq_len"]

    @property
    def max_context_len(self) -> int:
        """KV-cache slots: prompt + generated tokens must fit."""
        return self.metadata.get("get_max_context_len", self.max_seq_len)

    @property
    def vocab_size(self) -> int:
        return self.metadata["get_vocab_size"]

    @property
    def bos_id(self) -> int:
        return self.metadata.get("get_bos_id", 1)

    @property
    def eos_ids(self) -> list[int]:
        return self.metadata.get("get_eos_ids", [])

    @property
    def use_chat_template(self) -> bool:
        return self.metadata.get("use_chat_template", False)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..data.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_path, self.vocab_size)
        return self._tokenizer

    # -- running ----------------------------------------------------------------------------
    def forward(self, token_ids: Sequence[int], start_pos: int) -> torch.Tensor:
        """One program run: logits (T, V) of ``token_ids`` written at ``start_pos``..."""
        T = len(token_ids)
        if T == 0 or T > self.max_seq_len:
            raise ValueError(f"a call takes 1..{self.max_seq_len} tokens, got {T}")
        if start_pos < 0 or start_pos + T > self.max_context_len:
            raise UserError(
                f"positions {start_pos}..{start_pos + T - 1} exceed the program's "
                f"context of {self.max_context_len} tokens (export --max-seq-len)"
            )
        tokens = torch.tensor([list(token_ids)], dtype=torch.long)
        pos = torch.arange(start_pos, start_pos + T, dtype=torch.long)
        out = self._module.forward((tokens, pos))[0]
        self.executions += 1
        return out.reshape(T, -1)

    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits (T, V) for every position of a sequence starting at position 0."""
        ids = [int(t) for t in token_ids]
        if len(ids) > self.max_context_len:
            raise UserError(
                f"{len(ids)} tokens exceed the program's context of "
                f"{self.max_context_len}; split the text or export with a longer "
                "context (export --max-seq-len)"
            )
        chunks = [
            self.forward(ids[i : i + self.max_seq_len], i) for i in range(0, len(ids), self.max_seq_len)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, self.vocab_size)

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_ids: Optional[Iterable[int]] = None,
        seed: Optional[int] = None,
    ) -> list[int]:
        """New token ids after ``prompt_ids`` (stops after a stop id, which is included)."""
        from ..generate import Sampler

        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise UserError("generate needs at least one prompt token")
        budget = self.max_context_len - len(prompt)
        if budget <= 0:
            raise UserError(
                f"the prompt has {len(prompt)} tokens; the program's context is {self.max_context_len}"
            )
        sampler = Sampler(temperature, top_p, seed)
        stop = set(self.eos_ids if stop_ids is None else stop_ids)
        n_new = min(max_new_tokens, budget)
        out: list[int] = []
        if n_new <= 0:
            return out
        logits_V = self.logits(prompt)[-1]
        while True:
            token = sampler(logits_V)
            out.append(token)
            if token in stop or len(out) == n_new:
                return out
            logits_V = self.forward([token], len(prompt) + len(out) - 1)[-1]

    def generate_text(
        self, prompt: str, max_new_tokens: int = 64, chat: Optional[bool] = None, **sampling
    ) -> str:
        from ..generate import decode_new, encode_prompt

        chat = self.use_chat_template if chat is None else chat
        ids = encode_prompt(self.tokenizer, prompt, chat)
        new = self.generate(ids, max_new_tokens, **sampling)
        return decode_new(self.tokenizer, new)
