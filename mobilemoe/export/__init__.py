"""ExecuTorch export of MobileMoE checkpoints, and running the exported program.

    from mobilemoe.export import export_pte, PteModel
    report = export_pte("runs/qat/final", "out/export")          # model.pte, tokenizer.json,
                                                                  # export_report.json
    pte = PteModel("out/export/model.pte", "out/export/tokenizer.json")
    pte.logits(ids); pte.generate(ids, max_new_tokens=32)

Modules: :mod:`.program` (the chain of transforms), :mod:`.modules` (the export form of
the model), :mod:`.pipeline` (``export_pte``), :mod:`.runtime` (``PteModel``),
:mod:`.parity` (eager vs program checks).
"""

from .pipeline import PTE, REPORT, TOKENIZER, export_pte
from .program import ExportError
from .runtime import PteModel, set_runtime_threads

__all__ = ["export_pte", "PteModel", "ExportError", "set_runtime_threads", "PTE", "TOKENIZER", "REPORT"]
