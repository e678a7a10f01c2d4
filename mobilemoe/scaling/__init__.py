"""The on-device MoE scaling law (docs/scaling.md): shapes from coordinates, the law and its
fit, the design under budgets, the paper check, the figures.

    shapes   make_model(base, active_params=..., sparsity=..., granularity=..., shared_fraction=...)
    law      fit(records) -> law dict; predict(law, ...)
    design   design(law, base, memory_gib=..., gflops_per_token=...)
    check    paper_check(law, base, memory_gib=..., gflops_per_token=...)
    plots    render(records, law, design_result, out_dir)

Submodules are imported where used (scipy and matplotlib load only when needed).
"""
