"""Evaluation with lm-eval: the paper's benchmarks, offline, on checkpoints and on ``.pte``.

    from mobilemoe.eval import run_eval, format_table, flat_metrics, plot_results, paper_comparison
    results = run_eval(params, checkpoint="artifacts/sft")        # per-task score/stderr/n
    print(format_table(results)); mlflow.log_metrics(flat_metrics(results))
    fig = plot_results({"checkpoint": results, ".pte": run_eval(params, pte="out/model.pte")})

Modules: ``suite`` (offline task YAMLs derived from lm-eval's own), ``lm_model`` (the
``mobilemoe`` / ``mobilemoe-pte`` lm-eval models), ``scoring`` (batched log-likelihoods,
requests packed as prefix trees), ``forward`` (the model's forward on those packed rows,
query-block attention), ``generation`` (KV-cache generation), ``loading`` (checkpoint /
.pte), ``runner`` (``run_eval`` and result tables), ``report`` (bar chart, paper
comparison), ``docs`` (row adapters the generated YAMLs call). Kept import-light.
"""

from __future__ import annotations

_RUNNER = ("run_eval", "evaluate_lm", "format_table", "flat_metrics", "write_results")
_REPORT = ("plot_results", "paper_comparison", "markdown_results", "markdown_comparison")
__all__ = [*_RUNNER, *_REPORT]


def __getattr__(name):
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    if name in _REPORT:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module 'mobilemoe.eval' has no attribute {name!r}")
