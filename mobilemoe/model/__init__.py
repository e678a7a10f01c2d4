"""The MobileMoE model family: one decoder for MoE and dense (see transformer.py, moe.py)."""

from .transformer import MobileMoE, build_model

__all__ = ["MobileMoE", "build_model"]
