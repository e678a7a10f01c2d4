"""Row adapters and metrics referenced by the generated task YAMLs (``mobilemoe.eval.suite``).

lm-eval resolves ``process_docs: !function mobilemoe.eval.docs.boolq_docs`` by importing
this module, so it stays light (no torch). Each adapter only renames or unwraps fields
so that the bundled rows look like the hub rows lm-eval's official YAML reads; none of
them changes a prompt, a choice or a target.
"""

from __future__ import annotations

import math


def boolq_docs(dataset):
    """google/boolq rows (``answer``: bool) -> super_glue's field (``label``: 0 = no, 1 = yes),
    which lm-eval's boolq YAML reads."""
    return dataset.map(lambda doc: {"label": int(bool(doc["answer"]))})


# lm-eval applies process_docs on every access to a task's documents (dozens of times
# per run); the results are memoised per source dataset (its fingerprint).
_MEMO: dict = {}


def _memo(kind: str, dataset, build):
    key = (kind, getattr(dataset, "_fingerprint", None) or id(dataset))
    if key not in _MEMO:
        _MEMO[key] = build()
    return _MEMO[key]


def _first_per_doc(dataset) -> list[int]:
    """OLMo's request files hold one line per request; several may share a document:
    the row index of each document's first request."""
    seen, keep = set(), []
    for i, doc_id in enumerate(dataset["doc_id"]):  # one column read, not row by row
        if doc_id not in seen:
            seen.add(doc_id)
            keep.append(i)
    return keep


def request_docs(dataset):
    """OLMo request file -> its documents (the upstream rows), one per ``doc_id``."""
    import datasets

    return _memo(
        "docs", dataset, lambda: datasets.Dataset.from_list(dataset.select(_first_per_doc(dataset))["doc"])
    )


def lambada_docs(dataset):
    """OLMo's LAMBADA requests -> lm-eval's ``text`` (the passage with its last word)."""
    import datasets

    def build():
        docs = dataset.select(_first_per_doc(dataset))["doc"]
        return datasets.Dataset.from_list(
            [{"text": f"{d['query']} {d['answers_text'][0]}", "id": d.get("id")} for d in docs]
        )

    return _memo("lambada", dataset, build)


def request_pairs(dataset):
    """OLMo gold-answer request file -> (context, continuation) per document."""
    import datasets

    def build():
        rows = dataset.select(_first_per_doc(dataset))
        return datasets.Dataset.from_list(
            [
                {"context": r["context"], "continuation": r["continuation"], "doc_id": i}
                for r, i in zip(rows["request"], rows["doc_id"])
            ]
        )

    return _memo("pairs", dataset, build)


def bits_per_byte(loglikelihood_nats: float, text: str) -> float:
    """-log2 p(text) / UTF-8 bytes of ``text`` (OLMo's gold bits-per-byte)."""
    n_bytes = len(text.encode("utf-8"))
    return -loglikelihood_nats / (n_bytes * math.log(2)) if n_bytes else float("nan")


def bpb_results(doc: dict, results: list) -> dict:
    """process_results of the ``*_bpb`` tasks: one loglikelihood request per document."""
    ((loglikelihood, _is_greedy),) = results
    return {"bits_per_byte": bits_per_byte(loglikelihood, doc["continuation"])}
