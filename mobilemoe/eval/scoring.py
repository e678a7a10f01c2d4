"""Batched log-likelihood scoring of token windows: the core under every lm-eval request.

A request becomes one or more :class:`Window` s: an input that fits the model's context
and the target tokens its LAST positions predict. lm-eval's conventions:

* a (context, continuation) pair is one window ``(ctx + cont)[-(max_len + 1):][:-1]``;
  a longer context is truncated from the left (counted: ``truncated``);
* a continuation longer than the window itself (gold answers of the ``*_bpb`` tasks on a
  small model) is scored in consecutive disjoint chunks of at most half the window, each
  with as much left context as fits, so every chunk sees at least half a window of
  context (our choice; lm-eval would refuse such a request);
* ``loglikelihood_rolling`` uses lm-eval's own disjoint rolling windows.

:func:`score_windows` batches by a TOKEN budget (``batch_size`` rows of the full
context, e.g. 16 x 256): many short rows or a few long ones per forward pass, sorted by
length so a batch pads little. Windows with the same input (the one-token answers
" A"/" B"/" C"/" D" of MMLU after one context) share one row, and rows that share a
context (the k answers of a multiple-choice question) run the context once into the KV
cache (``prefill_fn``) and then only their continuations. The model plugs in through
``logits_fn(rows, n_last)``: per row, the logits of its last positions (the only ones
scored), so the checkpoint (right-padded batches, output head on the scored positions
only) and the ``.pte`` (one program run per row) plug in the same way. Log-softmax is
taken in fp32. ``batch_size=1`` is the plain reference: one forward per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

# (rows, n_last) -> per row the logits (n_last[i], V) of its last n_last[i] positions
LogitsFn = Callable[[list[list[int]], list[int]], Sequence["object"]]


class Prefilled(Protocol):
    def extend(self, group_idx: list[int], suffixes: list[list[int]]) -> Sequence["object"]:
        """Logits (len(suffix) + 1, V) of ``prefix[g] + suffix`` at its last positions."""


# (prefixes, longest suffix to come) -> the prefixes run once into a KV cache
PrefillFn = Callable[[list[list[int]], int], Prefilled]


@dataclass(frozen=True)
class Window:
    inp: tuple[int, ...]    # model input (fits the context)
    targets: tuple[int, ...]  # tokens predicted by the last len(targets) positions of inp


def continuation_windows(ctx: list[int], cont: list[int], max_len: int) -> tuple[list[Window], bool]:
    """Windows scoring ``cont`` after ``ctx``; returns (windows, context was truncated)."""
    if not ctx:
        raise ValueError("empty context: lm-eval conditions on a prefix token (BOS)")
    seq = list(ctx) + list(cont)
    if len(cont) <= max_len:
        kept = seq[-(max_len + 1):]
        return [Window(tuple(kept[:-1]), tuple(cont))], len(seq) > max_len + 1
    windows, start, step = [], len(ctx), max(1, max_len // 2)
    while start < len(seq):
        end = min(start + step, len(seq))
        lo = max(0, end - max_len - 1)
        windows.append(Window(tuple(seq[lo:end - 1]), tuple(seq[start:end])))
        start = end
    return windows, True


def rolling_windows(tokens: list[int], prefix_token: int, max_len: int) -> list[Window]:
    """lm-eval's disjoint rolling windows over a whole text (loglikelihood_rolling)."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    out = []
    for pair in get_rolling_token_windows(token_list=tokens, prefix_token=prefix_token,
                                          max_seq_len=max_len, context_len=1):
        ctx, pred = make_disjoint_window(pair)
        seq = list(ctx) + list(pred)
        out.append(Window(tuple(seq[:-1]), tuple(pred)))
    return out


def _pack(items: list, length: Callable[[object], int], max_tokens: int):
    """Consecutive chunks of ``items`` (sorted longest first) whose padded size
    (rows x longest row) stays within ``max_tokens``; a row alone always fits. A row under
    half the chunk's longest starts a new chunk: on a compute-bound CPU padding costs as
    much as real tokens (our choice of threshold: measured, benchmarks/eval_throughput)."""
    chunk: list = []
    for item in items:
        longest = max(1, length(chunk[0])) if chunk else 0
        if chunk and ((len(chunk) + 1) * longest > max_tokens or 2 * length(item) < longest):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def score_windows(windows: Sequence[Window], logits_fn: LogitsFn, batch_size: int,
                  max_len: int, progress: Optional[Callable[[int], None]] = None,
                  prefill_fn: Optional[PrefillFn] = None) -> list[tuple[float, bool]]:
    """(sum of target log-probs, all targets greedy) per window.

    A forward pass holds at most ``batch_size * max_len`` (padded) tokens.
    ``prefill_fn`` (optional) enables shared-context scoring (see the module doc).
    """
    results: list[tuple[float, bool]] = [(0.0, True)] * len(windows)  # empty targets: log 1
    if batch_size <= 1:
        for i, w in enumerate(windows):
            if w.targets:
                (logits,) = logits_fn([list(w.inp)], [len(w.targets)])
                _gather(windows, [i], len(w.targets), logits, results)
            if progress is not None:
                progress(1)
        return results
    by_input: dict[tuple[int, ...], list[int]] = {}
    for i, w in enumerate(windows):
        if not w.targets:
            continue
        if len(w.targets) > len(w.inp):
            raise ValueError(f"window predicts {len(w.targets)} tokens from {len(w.inp)} inputs")
        by_input.setdefault(w.inp, []).append(i)
    n_last = {inp: max(len(windows[i].targets) for i in members) for inp, members in by_input.items()}
    max_tokens = batch_size * max_len

    def done(inputs) -> None:
        if progress is not None:
            progress(sum(len(by_input[inp]) for inp in inputs))

    flat = list(by_input)
    if prefill_fn is not None:
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for inp in flat:  # the prefix: everything before the scored positions
            groups.setdefault(inp[:len(inp) - n_last[inp] + 1], []).append(inp)
        shared = sorted((p for p, m in groups.items() if len(m) > 1), key=lambda p: (-len(p), p))
        flat = [inp for p, m in groups.items() if len(m) == 1 for inp in m]
        for chunk in _pack(shared, len, max_tokens):
            rows = sorted(((g, inp) for g, p in enumerate(chunk) for inp in groups[p]),
                          key=lambda gi: (-len(gi[1]) + len(chunk[gi[0]]), gi[1]))
            state = prefill_fn([list(p) for p in chunk],
                               max(len(inp) - len(chunk[g]) for g, inp in rows))
            for part in _pack(rows, lambda gi: len(gi[1]) - len(chunk[gi[0]]) + 1, max_tokens):
                out = state.extend([g for g, _ in part], [list(inp[len(chunk[g]):]) for g, inp in part])
                for (_, inp), logits in zip(part, out):
                    _gather(windows, by_input[inp], n_last[inp], logits, results)
                done([inp for _, inp in part])
    flat.sort(key=lambda inp: (-len(inp), inp))
    for chunk in _pack(flat, len, max_tokens):
        for inp, logits in zip(chunk, logits_fn([list(inp) for inp in chunk],
                                                [n_last[inp] for inp in chunk])):
            _gather(windows, by_input[inp], n_last[inp], logits, results)
        done(chunk)
    return results


def _gather(windows, members: list[int], n_last: int, logits, results) -> None:
    """Score every window sharing one input from the logits of its last n_last positions."""
    import torch

    logprobs = torch.log_softmax(torch.as_tensor(logits)[-n_last:].float(), dim=-1)
    greedy = logprobs.argmax(-1)
    for i in members:
        tgt = torch.tensor(windows[i].targets, dtype=torch.long)
        n = len(tgt)
        lp, g = logprobs[n_last - n:], greedy[n_last - n:]
        ll = lp.gather(-1, tgt.unsqueeze(-1)).sum().item()
        results[i] = (float(ll), bool((g == tgt).all()))


def sum_windows(per_window: list[tuple[float, bool]], counts: list[int]) -> list[tuple[float, bool]]:
    """Fold consecutive window results back into one (ll, greedy) per request."""
    out, k = [], 0
    for n in counts:
        part = per_window[k:k + n]
        out.append((sum(p[0] for p in part), all(p[1] for p in part)))
        k += n
    return out
