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
context, e.g. 16 x 256). Windows with the same input (the one-token answers " A"/" B"/
" C"/" D" of MMLU after one context) share one input. With a ``tree_fn`` (the checkpoint
model) the distinct inputs, sorted, are packed as PREFIX TREES into rows of at most
``max_len`` tokens (:func:`pack_prefix_trees`): a token shared by several inputs (the
context of a question's k answers, the common start of WinoGrande's two sentences) is
computed once, and short inputs fill one row instead of padding k rows; each token
attends to its own ancestors only (an explicit mask), at its own RoPE position, so every
input gets the hidden states of its own forward pass (to float rounding). Without one (the ``.pte``:
one program run per row) inputs are batched plainly through ``logits_fn(rows, n_last)``:
per row, the logits of its last positions (the only ones scored). Log-probabilities are
taken in fp32, for all scored positions of a pass at once.
``batch_size=1`` is the plain reference: one forward per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

_Item = TypeVar("_Item")

# (rows, n_last) -> per row the logits (n_last[i], V) of its last n_last[i] positions
LogitsFn = Callable[[list[list[int]], list[int]], Sequence["object"]]

# (tokens (B, T), positions (B, T), attn_mask (B, T, T), pick (N,) flat indices into B*T)
#   -> logits (N, V) at the picked positions of packed rows (PackedRows)
TreeFn = Callable[["object", "object", "object", "object"], "object"]


@dataclass(frozen=True)
class Window:
    inp: tuple[int, ...]  # model input (fits the context)
    targets: tuple[int, ...]  # tokens predicted by the last len(targets) positions of inp


def continuation_windows(ctx: list[int], cont: list[int], max_len: int) -> tuple[list[Window], bool]:
    """Windows scoring ``cont`` after ``ctx``; returns (windows, context was truncated)."""
    if not ctx:
        raise ValueError("empty context: lm-eval conditions on a prefix token (BOS)")
    seq = list(ctx) + list(cont)
    if len(cont) <= max_len:
        kept = seq[-(max_len + 1) :]
        return [Window(tuple(kept[:-1]), tuple(cont))], len(seq) > max_len + 1
    windows, start, step = [], len(ctx), max(1, max_len // 2)
    while start < len(seq):
        end = min(start + step, len(seq))
        lo = max(0, end - max_len - 1)
        windows.append(Window(tuple(seq[lo : end - 1]), tuple(seq[start:end])))
        start = end
    return windows, True


def rolling_windows(tokens: list[int], prefix_token: int, max_len: int) -> list[Window]:
    """lm-eval's disjoint rolling windows over a whole text (loglikelihood_rolling)."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    out = []
    for pair in get_rolling_token_windows(
        token_list=tokens, prefix_token=prefix_token, max_seq_len=max_len, context_len=1
    ):
        ctx, pred = make_disjoint_window(pair)
        seq = list(ctx) + list(pred)
        out.append(Window(tuple(seq[:-1]), tuple(pred)))
    return out


def _lcp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PackedRows:
    """Rows of prefix trees: ``paths[k]`` are the row and the node indices of ``inputs[k]``
    (its tokens in order: ``tokens[row, path] == inputs[k]``, positions ``0..len - 1``)."""

    tokens: Any  # (B, T) long, PAD_ID after each row's last node
    positions: Any  # (B, T) long, RoPE positions (0 on padding)
    mask: Any  # (B, T, T) bool: True = the key is the query's ancestor or itself
    inputs: list[tuple[int, ...]]
    paths: list[tuple[int, list[int]]]
    sizes: list[int]  # nodes (real tokens) per row


def row_nodes(row: list[tuple[tuple[int, ...], int]]) -> int:
    """Tokens (tree nodes) of a packed row: each input brings what it does not share."""
    return sum(len(inp) - shared for inp, shared in row)


def pack_prefix_trees(
    inputs: Sequence[tuple[int, ...]], capacity: int
) -> list[list[tuple[tuple[int, ...], int]]]:
    """Distinct inputs -> rows of (input, tokens it shares with the previous input of its
    row). Inputs are sorted, so inputs with a common prefix are neighbours and a prefix
    tree of a row has ``sum(len(input) - shared)`` nodes; a row takes inputs while its
    nodes stay within ``capacity`` (an input longer than ``capacity`` gets a row alone)."""
    rows: list[list[tuple[tuple[int, ...], int]]] = []
    row: list[tuple[tuple[int, ...], int]] = []
    used = 0
    for inp in sorted(inputs):
        shared = _lcp(row[-1][0], inp) if row else 0
        if row and used + len(inp) - shared > capacity:
            rows.append(row)
            row, used, shared = [], 0, 0
        row.append((inp, shared))
        used += len(inp) - shared
    if row:
        rows.append(row)
    return rows


def build_packed(rows: list[list[tuple[tuple[int, ...], int]]]) -> PackedRows:
    """Tensors of packed prefix-tree rows (see :func:`pack_prefix_trees`)."""
    import numpy as np
    import torch

    from ..tokens import PAD_ID

    sizes = [row_nodes(row) for row in rows]
    B, T = len(rows), max(sizes)
    tokens = np.full((B, T), PAD_ID, dtype=np.int64)
    positions = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T, T), dtype=bool)
    mask[:, np.arange(T), np.arange(T)] = True  # itself (and padding sees only itself)
    inputs, paths = [], []
    for b, row in enumerate(rows):
        prev: list[int] = []
        s = 0
        for inp, shared in row:
            e = s + len(inp) - shared
            tokens[b, s:e] = inp[shared:]
            positions[b, s:e] = np.arange(shared, len(inp))
            if shared:
                mask[b, s:e, prev[:shared]] = True  # the shared prefix: ancestors of all
            mask[b, s:e, s:e] = np.tri(e - s, dtype=bool)  # causal within the new part
            path = prev[:shared] + list(range(s, e))
            inputs.append(inp)
            paths.append((b, path))
            prev, s = path, e
    return PackedRows(
        torch.from_numpy(tokens), torch.from_numpy(positions), torch.from_numpy(mask), inputs, paths, sizes
    )


def score_windows(
    windows: Sequence[Window],
    logits_fn: LogitsFn,
    batch_size: int,
    max_len: int,
    progress: Optional[Callable[[int], None]] = None,
    tree_fn: Optional[TreeFn] = None,
) -> list[tuple[float, bool]]:
    """(sum of target log-probs, all targets greedy) per window.

    A forward pass holds at most ``batch_size * max_len`` (padded) tokens.
    ``tree_fn`` (optional) enables prefix-tree packing (see the module doc).
    """
    results: list[tuple[float, bool]] = [(0.0, True)] * len(windows)  # empty targets: log 1
    if batch_size <= 1:
        for i, w in enumerate(windows):
            if w.targets:
                (logits,) = logits_fn([list(w.inp)], [len(w.targets)])
                _score_picked(windows, {w.inp: [i]}, {w.inp: (0, len(w.targets))}, logits, results)
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

    def done(inputs) -> None:
        if progress is not None:
            progress(sum(len(by_input[inp]) for inp in inputs))

    import torch

    if tree_fn is not None:
        rows = sorted(pack_prefix_trees(list(by_input), max_len), key=lambda row: -row_nodes(row))
        for chunk in _pack(rows, row_nodes, batch_size * max_len):
            packed = build_packed(chunk)
            T = packed.tokens.shape[1]
            pick: list[int] = []
            spans: dict = {}
            for inp, (r, path) in zip(packed.inputs, packed.paths):
                spans[inp] = (len(pick), n_last[inp])
                pick += [r * T + j for j in path[len(path) - n_last[inp] :]]
            logits = tree_fn(packed.tokens, packed.positions, packed.mask, torch.tensor(pick))
            _score_picked(windows, by_input, spans, logits, results)
            done(packed.inputs)
        return results
    flat = sorted(by_input, key=lambda inp: (-len(inp), inp))
    for batch in _pack(flat, len, batch_size * max_len):
        out = logits_fn([list(inp) for inp in batch], [n_last[inp] for inp in batch])
        spans, k = {}, 0
        for inp in batch:
            spans[inp] = (k, n_last[inp])
            k += n_last[inp]
        _score_picked(windows, by_input, spans, torch.cat([torch.as_tensor(o) for o in out]), results)
        done(batch)
    return results


def _pack(items: list[_Item], length: Callable[[_Item], int], max_tokens: int) -> Iterator[list[_Item]]:
    """Consecutive chunks of ``items`` (sorted longest first) whose padded size
    (rows x longest row) stays within ``max_tokens``; a row alone always fits. A row under
    half the chunk's longest starts a new chunk: on a compute-bound CPU padding costs as
    much as real tokens (our choice of threshold: measured, benchmarks/eval_throughput)."""
    chunk: list[_Item] = []
    for item in items:
        longest = max(1, length(chunk[0])) if chunk else 0
        if chunk and ((len(chunk) + 1) * longest > max_tokens or 2 * length(item) < longest):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def _score_picked(windows, by_input: dict, spans: dict, logits, results) -> None:
    """Score the windows of every input in ``spans`` ({input: (first row of its scored
    positions in ``logits``, how many)}): log-softmax in fp32, greedy = the
    target's logit is the row's maximum, all positions of one pass in a few tensor ops."""
    import torch

    logits = torch.as_tensor(logits).float()
    logprobs = torch.log_softmax(logits, dim=-1)  # faster than logsumexp on CPU (measured)
    top = logits.amax(dim=-1)
    rows: list = []
    tgts: list = []
    owner: list = []
    ids: list = []
    for inp, (start, n_last) in spans.items():
        for i in by_input[inp]:
            tgt = windows[i].targets
            first = start + n_last - len(tgt)
            rows += range(first, first + len(tgt))
            tgts += tgt
            owner += [len(ids)] * len(tgt)
            ids.append(i)
    rows_t, tgts_t, owner_t = torch.tensor(rows), torch.tensor(tgts), torch.tensor(owner)
    ll = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, owner_t, logprobs[rows_t, tgts_t].double())
    missed = torch.zeros(len(ids), dtype=torch.long).index_add_(
        0, owner_t, (logits[rows_t, tgts_t] < top[rows_t]).long()
    )
    for i, v, m in zip(ids, ll.tolist(), missed.tolist()):
        results[i] = (float(v), m == 0)


def sum_windows(per_window: list[tuple[float, bool]], counts: list[int]) -> list[tuple[float, bool]]:
    """Fold consecutive window results back into one (ll, greedy) per request."""
    out, k = [], 0
    for n in counts:
        part = per_window[k : k + n]
        out.append((sum(p[0] for p in part), all(p[1] for p in part)))
        k += n
    return out
