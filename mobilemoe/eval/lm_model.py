"""Our models as lm-eval models: ``mobilemoe`` (a checkpoint) and ``mobilemoe-pte`` (an
exported ExecuTorch program, scored through the ExecuTorch runtime).

    lm_eval --model mobilemoe --model_args checkpoint=DIR[,batch_size=16,device=cpu,dtype=float32] --tasks ...
    lm_eval --model mobilemoe-pte --model_args pte=FILE,tokenizer=FILE --tasks ...
    (add --include_path "$(mobilemoe eval --task-dir)" for our offline tasks)
    simple_evaluate(model=MobileMoELM(checkpoint=DIR), tasks=..., task_manager=...)

The stock ``lm_eval`` command knows these names because the interpreter start-up hook
(``mobilemoe._startup``) imports this module right after ``lm_eval.api.registry``; so this
module must stay light at import (torch is imported when a model is built).

Both implement loglikelihood (batched, ``mobilemoe.eval.scoring``), loglikelihood_rolling
(lm-eval's disjoint windows) and generate_until (greedy, KV cache, stop strings,
``mobilemoe.eval.generation``). Tokens follow training: ``<bos>`` opens every sequence
(lm-eval's ``prefix_token_id``), ``<eos>`` / ``<|eot|>`` end generation. Contexts longer
than the model's window are truncated from the left (lm-eval's convention); ``stats``
counts them per task so results can report it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..errors import UserError
from ..tokens import ASSISTANT, BOS_ID, END_OF_TURN, END_OF_TURN_ID, EOS_ID, PAD_ID, USER

log = logging.getLogger(__name__)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for models (HFLM.max_gen_toks)


def _int_arg(name: str, value, default: Optional[int]) -> Optional[int]:
    if value is None or value == "":
        return default
    if value == "auto":  # lm-eval's batch-size search: we use our default instead
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise UserError(f"model_args {name}={value!r}: expected an integer") from None
    if out <= 0:
        raise UserError(f"model_args {name}={value!r}: must be > 0")
    return out


@contextlib.contextmanager
def _one_error_line():
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class _TokenLM(TemplateLM):
    """Shared tokenization, request handling and statistics; subclasses provide
    ``_logits_last(rows, n_last)`` (logits of the scored positions), optionally
    ``_logits_tree(tokens, positions, mask, pick)`` (packed prefix trees), and
    ``_generate(prompts, budgets, should_stop)``. ``batch_size`` rows of the full window is
    the token budget per pass."""

    backend = "causal"

    # The stock ``lm_eval --model mobilemoe[-pte]`` CLI builds models through these two
    # classmethods: a user error there (missing checkpoint, stale manifest, bad .pte) ends
    # in one ``error:`` line and exit 2, like ``mobilemoe eval``, not in a traceback.
    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        with _one_error_line():
            return super().create_from_arg_string(arg_string, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        with _one_error_line():
            return super().create_from_arg_obj(arg_dict, additional_config)

    def __init__(
        self,
        tokenizer_path: Path,
        max_length: int,
        batch_size: int,
        max_gen_toks: int,
        vocab_size: Optional[int],
    ):
        super().__init__()
        from ..data.tokenizer import load_tokenizer

        self.tokenizer_path = Path(tokenizer_path)
        self.tok = load_tokenizer(self.tokenizer_path, vocab_size)
        self._max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        # Per-task counts of DOCUMENTS (Instance.task_name, doc_id) with at least one
        # request truncated / split / clamped, and of requests: read by eval.runner.
        self._flagged: dict[str, set] = {
            "truncated": set(),
            "long_continuations": set(),
            "clamped_generations": set(),
        }
        self._requests: Counter = Counter()

    @property
    def stats(self) -> dict[str, Counter]:
        out = {"requests": Counter(self._requests)}
        for kind, flagged in self._flagged.items():
            out[kind] = Counter(task for task, _ in flagged)
        return out

    def _flag(self, kind: str, req, flagged) -> None:
        if flagged:
            key = (req.task_name, req.doc_id) if req is not None else (None, len(self._flagged[kind]))
            self._flagged[kind].add(key)

    # -- tokens ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return EOS_ID

    @property
    def prefix_token_id(self) -> int:
        return BOS_ID  # documents were trained as <bos> text <eos>

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        ids = self.tok.encode(string, add_special_tokens=False).ids
        return [BOS_ID, *ids] if add_special_tokens in (None, True) else ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens, skip_special_tokens=True)

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer_path)

    def chat_template(self, chat_template=False) -> Optional[str]:
        return "mobilemoe" if chat_template else None  # mobilemoe.tokens' chat format

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The SFT format of ``mobilemoe.tokens`` (system text joins the first user turn)."""
        out, system = [], ""
        for msg in chat_history:
            role, content = msg["role"], msg["content"].strip()
            if role == "system":
                system = content + "\n\n"
            elif role == "user":
                out.append(f"{USER}{system}{content}{END_OF_TURN}")
                system = ""
            else:
                out.append(f"{ASSISTANT}{content}{END_OF_TURN}")
        if add_generation_prompt:
            out.append(ASSISTANT)
        return "".join(out)

    # -- loglikelihood ---------------------------------------------------------------
    def _encode_pair_or_empty(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # As TemplateLM.loglikelihood: an empty context conditions on the prefix token.
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            return [self.prefix_token_id], cont
        return self._encode_pair(context, continuation)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        encoded = []
        for req in requests:
            context, continuation = req.args
            ctx, cont = self._encode_pair_or_empty(context, continuation)
            encoded.append(((context, continuation), ctx, cont))
        return self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm, instances=requests)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, instances: Optional[list] = None
    ) -> list[tuple[float, bool]]:
        from .scoring import continuation_windows, sum_windows

        windows, counts = [], []
        for k, (_, ctx, cont) in enumerate(requests):
            req = instances[k] if instances else None
            ws, truncated = continuation_windows(ctx, cont, self.max_length)
            self._requests[getattr(req, "task_name", None)] += 1
            self._flag("truncated", req, truncated)
            self._flag("long_continuations", req, len(ws) > 1)
            windows += ws
            counts.append(len(ws))
        scored = self._score(windows, "loglikelihood", disable_tqdm)
        out = sum_windows(scored, counts)
        for (key, _, _), res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from .scoring import rolling_windows, sum_windows

        windows, counts = [], []
        for req in requests:
            (string,) = req.args
            ws = rolling_windows(
                self.tok_encode(string, add_special_tokens=False), self.prefix_token_id, self.max_length
            )
            self._requests[req.task_name] += 1
            windows += ws
            counts.append(len(ws))
        out = [ll for ll, _ in sum_windows(self._score(windows, "rolling", disable_tqdm), counts)]
        for req, ll in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, ll)
        return out

    def _score(self, windows, what: str, disable_tqdm: bool):
        from tqdm import tqdm

        from .scoring import score_windows

        with tqdm(total=len(windows), disable=disable_tqdm, desc=f"mobilemoe {what}") as bar:
            return score_windows(
                windows,
                self._logits_last,
                self.batch_size,
                self.max_length,
                progress=bar.update,
                tree_fn=self._logits_tree,
            )

    # -- generation ------------------------------------------------------------------
    def _gen_budget(self, n_ctx: int, max_gen: int) -> tuple[int, int]:
        """(context tokens kept, new tokens allowed). Our choice: the context keeps at least
        half the window, so a small model's window is never all generation budget."""
        keep = min(n_ctx, max(self.max_length - max_gen, self.max_length // 2))
        return keep, min(max_gen, self.max_length - keep)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        groups: dict[tuple, list[int]] = {}
        specs = []
        for k, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = _int_arg("max_gen_toks", kwargs.pop("max_gen_toks", None), self.max_gen_toks)
            assert max_gen is not None  # the default is an int
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0:
                log.warning("mobilemoe: sampling requested (%s); generating greedily", kwargs)
            ctx = self.tok_encode(context)
            keep, budget = self._gen_budget(len(ctx), max_gen)
            self._requests[req.task_name] += 1
            self._flag("truncated", req, keep < len(ctx))
            self._flag("clamped_generations", req, budget < max_gen)
            specs.append((ctx[len(ctx) - keep :], budget, [u for u in until if u]))
            groups.setdefault((tuple(until), budget), []).append(k)
        out: list[Optional[str]] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="mobilemoe generate_until")
        for idx in groups.values():
            idx.sort(key=lambda k: -len(specs[k][0]))  # similar lengths pad little
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b : b + self.batch_size]
                texts = self._generate_texts([specs[k] for k in chunk])
                for k, text in zip(chunk, texts):
                    out[k] = text
                    self.cache_hook.add_partial("generate_until", requests[k].args, text)
                bar.update(len(chunk))
        bar.close()
        return [text or "" for text in out]  # every slot was filled above

    def _generate_texts(self, specs: list[tuple[list[int], int, list[str]]]) -> list[str]:
        stop_ids = {EOS_ID, END_OF_TURN_ID}

        def should_stop(i: int, new: list[int]) -> bool:
            if new[-1] in stop_ids:
                return True
            until = specs[i][2]
            return bool(until) and any(u in self.tok_decode(new) for u in until)

        new = self._generate([s[0] for s in specs], [s[1] for s in specs], should_stop)
        texts = []
        for (_, _, until), toks in zip(specs, new):
            toks = [t for t in toks if t not in stop_ids]
            text = self.tok_decode(toks)
            for u in until:  # cut at the first stop string (lm-eval convention)
                text = text.split(u)[0]
            texts.append(text)
        return texts

    # -- model hooks -----------------------------------------------------------------
    _logits_tree = None  # optional: packed prefix trees (scoring.score_windows)

    def _logits_last(self, rows: list[list[int]], n_last: list[int]):
        raise NotImplementedError

    def _generate(self, prompts, budgets, should_stop) -> list[list[int]]:
        raise NotImplementedError


def _resolve_device(device: Optional[str]) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        # lm_eval's command passes device=cuda:0 unless told otherwise (as HFLM, fall back)
        log.warning("mobilemoe: device %s requested but CUDA is not available; using cpu", device)
        return "cpu"
    return str(device)


def _resolve_dtype(dtype: Optional[str], device: str):
    import torch

    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if str(dtype) not in names:
        raise UserError(f"model_args dtype={dtype!r}: expected one of {', '.join(names)} or auto")
    return names[str(dtype)]


@register_model("mobilemoe")
class MobileMoELM(_TokenLM):
    """A mobilemoe checkpoint folder (any stage; QAT checkpoints are evaluated converted)."""

    def __init__(
        self,
        checkpoint=None,
        tokenizer=None,
        batch_size=None,
        device=None,
        dtype=None,
        max_length=None,
        max_gen_toks=None,
        threads=None,
        verify=True,
        max_batch_size=None,
        **unknown,
    ):
        if unknown:
            raise UserError(
                f"model_args: unknown {', '.join(sorted(unknown))} for --model "
                "mobilemoe (known: checkpoint, tokenizer, batch_size, device, dtype, "
                "max_length, max_gen_toks, threads, verify)"
            )
        if not checkpoint:
            raise UserError("model_args checkpoint=DIR is required for --model mobilemoe")
        import torch

        from .loading import load_eval_checkpoint

        if threads is not None:
            torch.set_num_threads(_int_arg("threads", threads, 1))
        self.device_name = _resolve_device(device)
        self.model, self.config, tok_path = load_eval_checkpoint(
            checkpoint,
            tokenizer,
            self.device_name,
            _resolve_dtype(dtype, self.device_name),
            verify=str(verify).lower() not in ("0", "false"),
        )
        window = self.model.cfg.max_seq_len
        super().__init__(
            tok_path,
            min(_int_arg("max_length", max_length, window), window),
            _int_arg("batch_size", batch_size, 16),
            _int_arg("max_gen_toks", max_gen_toks, DEFAULT_MAX_GEN_TOKS),
            self.model.cfg.vocab_size,
        )
        self.checkpoint = Path(checkpoint)

    @property
    def device(self):
        return self.device_name

    def _logits_last(self, rows: list[list[int]], n_last: list[int]):
        import torch

        from .forward import hidden_states

        T = max(len(r) for r in rows)
        # Right padding: a causal model's real positions never see the pads after them.
        x = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        with torch.inference_mode(), hidden_states(self.model) as head:
            h = self.model(x.to(self.device_name))
            picked = torch.cat([h[i, len(r) - n : len(r)] for i, (r, n) in enumerate(zip(rows, n_last))])
            return list(head(picked).split(list(n_last)))

    def _logits_tree(self, tokens, positions, mask, pick):
        import torch

        from .forward import hidden_states, packed_forward

        dev = self.device_name
        with torch.inference_mode(), hidden_states(self.model) as head:
            h = packed_forward(self.model, tokens.to(dev), positions.to(dev), mask.to(dev))
            return head(h.reshape(-1, h.shape[-1]).index_select(0, pick.to(dev)))

    def _generate(self, prompts, budgets, should_stop) -> list[list[int]]:
        from .generation import greedy_generate

        return greedy_generate(self.model, prompts, budgets, should_stop)


@register_model("mobilemoe-pte")
class MobileMoEPteLM(_TokenLM):
    """An exported ``.pte`` run by the ExecuTorch runtime (``mobilemoe.export.runtime``)."""

    def __init__(
        self,
        pte=None,
        tokenizer=None,
        batch_size=None,
        max_length=None,
        max_gen_toks=None,
        threads=None,
        device=None,
        max_batch_size=None,
        **unknown,
    ):
        if unknown:
            raise UserError(
                f"model_args: unknown {', '.join(sorted(unknown))} for --model "
                "mobilemoe-pte (known: pte, tokenizer, batch_size, max_length, "
                "max_gen_toks, threads)"
            )
        from .loading import open_pte

        self.program, tok_path, window, vocab = open_pte(pte, tokenizer, _int_arg("threads", threads, None))
        super().__init__(
            tok_path,
            min(_int_arg("max_length", max_length, window), window),
            _int_arg("batch_size", batch_size, 16),
            _int_arg("max_gen_toks", max_gen_toks, DEFAULT_MAX_GEN_TOKS),
            vocab,
        )
        self.pte_path = Path(pte)

    @property
    def device(self):
        return "cpu"

    def _logits_last(self, rows: list[list[int]], n_last: list[int]):
        import torch

        # The program takes one sequence (batch 1) per run: one execution per row.
        return [torch.as_tensor(self.program.logits(r))[-n:] for r, n in zip(rows, n_last)]

    def _generate(self, prompts, budgets, should_stop) -> list[list[int]]:
        from .loading import pte_greedy_generate

        def stop_for(i: int) -> Callable[[list[int]], bool]:
            return lambda new: should_stop(i, new)

        return [
            pte_greedy_generate(self.program, p, n, stop_for(i))
            for i, (p, n) in enumerate(zip(prompts, budgets))
        ]
