"""Hugging Face interop: our checkpoints as transformers folders of native architectures, and back.

    from mobilemoe.hf import export_hf, import_hf
    export_hf("runs/sft/final", "out/hf")          # AutoModelForCausalLM / AutoTokenizer load it offline
    import_hf("out/hf", "runs/imported")           # our checkpoint again (bit-identical round trip)

Modules: :mod:`.mapping` (configs both ways, which architecture), :mod:`.weights` (tensor
names and layouts), :mod:`.tokenizer` (BOS post-processor, chat template), :mod:`.card`
(the model card), :mod:`.convert` (the folders). Light at import: transformers is imported
by the functions that need it. docs/hf.md explains the mapping and its limits.
"""

from __future__ import annotations

_CONVERT = ("export_hf", "import_hf", "write_card", "hf_param_count", "resolve_init_from", "source_digest")
_MAPPING = ("architecture_for", "HFMappingError")
__all__ = [*_CONVERT, *_MAPPING]


def __getattr__(name):
    if name in _CONVERT:
        from . import convert

        return getattr(convert, name)
    if name in _MAPPING:
        from . import mapping

        return getattr(mapping, name)
    raise AttributeError(f"module 'mobilemoe.hf' has no attribute {name!r}")
