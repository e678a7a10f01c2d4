"""A stage's inputs, resolved and checked before any training: data mix, tokenizer,
input checkpoint. Every problem a user can cause ends in one message naming the file.

    mix = mix_folder(params, "sft", data_dir)          # data/shards/sft
    shards = open_shards(mix, params.model.vocab_size)
    tok = resolve_tokenizer(mix, shards, explicit=None, init_config=cfg_of_init)

Stage -> mix: pretrain -> shards/pretrain, midtrain -> shards/midtrain, sft and qat ->
shards/sft. ``data_dir`` may be a mix folder itself (it holds ``meta.json``), a folder of
mixes, or the data root (``<root>/shards/<mix>``); without it the project's data folder
(``mobilemoe.data.paths.data_paths``, else ``<project>/<data.out_dir>``) is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..checkpoint import CheckpointError, sha256_file
from ..data.shards import META, TokenShards
from ..errors import UserError

STAGE_MIX = {"pretrain": "pretrain", "midtrain": "midtrain", "sft": "sft", "qat": "sft"}
PREVIOUS_STAGE = {"pretrain": None, "midtrain": "pretrain", "sft": "midtrain", "qat": "sft"}


def _data_root(params) -> Path:
    try:
        from ..data.paths import data_paths
    except ImportError:  # curation's path helper not present: the documented default layout
        from ..config import project_root

        out = Path(params.data.out_dir)
        return out if out.is_absolute() else project_root() / out
    return Path(data_paths(params).root)


def mix_folder(params, stage: str, data_dir=None) -> Path:
    mix = STAGE_MIX[stage]
    if data_dir is not None:
        d = Path(data_dir)
        candidates = [d, d / mix, d / "shards" / mix]
    else:
        candidates = [_data_root(params) / "shards" / mix]
    for c in candidates:
        if (c / META).is_file():
            return c
    where = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"{stage}: no token shards of the {mix!r} mix at {where} (no {META}); build "
        "them with `dvc repro` or pass the folder with --data"
    )


def open_shards(folder: Path, vocab_size: int, seq_len: int) -> TokenShards:
    from .loader import check_split

    shards = TokenShards(folder)
    if shards.vocab_size > vocab_size:
        raise UserError(
            f"{folder / META}: shards were tokenized with vocab_size="
            f"{shards.vocab_size} but model.vocab_size={vocab_size}; rebuild the "
            "data with this model's vocab_size or fix params.yaml"
        )
    check_split(shards.train, seq_len, str(folder))
    check_split(shards.val, seq_len, str(folder))
    return shards


def shards_digest(shards: TokenShards) -> dict:
    """The data identity recorded in checkpoints: each split's sha256 from meta.json."""
    out = {}
    for name, info in sorted(shards.meta.get("splits", {}).items()):
        out[name] = {k: info[k] for k in ("sha256", "mask_sha256", "tokens") if k in info}
    return out


def resolve_tokenizer(
    mix: Path,
    shards: TokenShards,
    explicit=None,
    init_folder: Optional[Path] = None,
    init_config: Optional[dict] = None,
    vocab_size: Optional[int] = None,
) -> tuple[Path, str]:
    """(tokenizer.json path, its sha256), checked against the data and the input checkpoint."""
    from ..data.tokenizer import load_tokenizer

    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"{path}: tokenizer not found")
    else:
        candidates = []
        if init_folder is not None:
            candidates.append(Path(init_folder) / "tokenizer.json")
        candidates += [
            mix / "tokenizer.json",
            mix.parent / "tokenizer.json",
            mix.parent.parent / "tokenizer.json",
            mix.parent.parent / "tokenizer" / "tokenizer.json",
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UserError(
                f"{mix}: no tokenizer.json found next to the shards (looked in "
                f"{', '.join(str(c.parent) for c in candidates)}); pass --tokenizer"
            )
        path = found
    load_tokenizer(path, vocab_size)  # a readable mobilemoe tokenizer within the vocab
    sha = sha256_file(path)
    data_sha = shards.meta.get("tokenizer_sha256")
    if data_sha and data_sha != sha:
        raise UserError(
            f"{path}: tokenizer (sha256 {sha[:12]}...) does not match the one the data "
            f"in {mix} was tokenized with ({data_sha[:12]}..., {mix / META}); use the "
            "data's tokenizer or rebuild the data"
        )
    init_sha = (init_config or {}).get("tokenizer_sha256")
    if init_sha and init_sha != sha:
        raise UserError(
            f"{init_folder}: the input checkpoint was trained with another tokenizer "
            f"(sha256 {init_sha[:12]}...) than {path} ({sha[:12]}...); its token ids "
            "mean other things: use data tokenized with the checkpoint's tokenizer"
        )
    return path, sha


def check_init_checkpoint(stage: str, init_checkpoint, params=None, out_dir=None) -> Optional[Path]:
    """The input checkpoint folder; required for every stage but pretrain.

    With ``params`` whose ``<stage>.init_from`` is set (``hf:PATH``), the stage starts from
    that Hugging Face folder instead: imported once into ``out_dir/init_from`` (it must be
    ``params.model``'s architecture; ``mobilemoe.hf.resolve_init_from``)."""
    spec = getattr(getattr(params, stage, None), "init_from", None)
    if spec is not None:
        from ..hf import resolve_init_from

        if out_dir is None:
            raise UserError(f"{stage}.init_from: an output folder is needed to import {spec}")
        return resolve_init_from(spec, out_dir, params.model, key=f"{stage}.init_from")
    if init_checkpoint is None:
        prev = PREVIOUS_STAGE[stage]
        if prev is not None:
            raise UserError(
                f"{stage} starts from the {prev} checkpoint: pass it as "
                f"init_checkpoint (CLI: --init {prev.upper()}_OUT/final)"
            )
        return None
    path = Path(init_checkpoint)
    if not path.exists():
        raise CheckpointError(
            f"{path}: input checkpoint for {stage} not found (run the "
            f"{PREVIOUS_STAGE[stage] or 'previous'} stage first, or fix --init)"
        )
    if not (path / "manifest.json").is_file() and (path / "final" / "manifest.json").is_file():
        return path / "final"  # a stage's output folder: its final checkpoint
    return path
