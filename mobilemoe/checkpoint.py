"""Checkpoints: a folder of files with a manifest of their sha256.

    ckpt/
      model.safetensors   weights (tied tensors stored once)
      config.json         {"format": 1, "model": {...ModelConfig...}, "stage": "sft",
                           "step": 60, "qat": null | {"scheme": "8da4w", "group_size": 32,
                           "quantize_embedding": true}, "tokenizer_sha256": ..., ...}
      tokenizer.json      the tokenizer the model was trained with
      optimizer.pt        optional: optimizer/scheduler/RNG state for resuming
      trainer_state.json  optional: step, metrics so far
      manifest.json       {"files": {name: {"sha256", "bytes"}}, "sha256": <of the listing>}

Written atomically: files go to a temporary sibling folder, the manifest last, then one
``rename``; a folder without a valid manifest is not a checkpoint. ``verify`` re-hashes
every file, so a truncated or corrupt checkpoint is detected before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from .errors import UserError
from .io import write_text_atomic

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


class CheckpointError(UserError):
    pass


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listing_digest(files: dict[str, dict]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(folder: Path) -> dict:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"format": FORMAT, "files": files, "sha256": _listing_digest(files)}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def verify(folder: str | os.PathLike) -> dict:
    """Return the manifest if every listed file exists with its size and sha256."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(
            f"{folder}: not a checkpoint (no {MANIFEST}); it may be "
            "incomplete (interrupted while writing) or the wrong folder"
        )
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{mpath}: unreadable manifest") from None
    if _listing_digest(files) != manifest.get("sha256"):
        raise CheckpointError(f"{mpath}: manifest digest does not match its file list")
    for name, info in files.items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"{folder}: {name} listed in the manifest is missing")
        if p.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"{p}: {p.stat().st_size} bytes, manifest says {info['bytes']} (truncated?)"
            )
        if sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"{p}: sha256 does not match the manifest (corrupt)")
    return manifest


def checkpoint_sha256(folder: str | os.PathLike) -> str:
    """One digest naming a checkpoint: the sha256 of its manifest's file listing."""
    return verify(folder)["sha256"]


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}; not a mobilemoe checkpoint")
    try:
        cfg = json.loads(path.read_text())
    except ValueError:
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise CheckpointError(f"{path}: has no 'model' section; not a mobilemoe checkpoint")
    return cfg


def model_config(cfg: dict, source: str = "checkpoint"):
    from .config.base import ConfigError, build
    from .config.model import ModelConfig

    try:
        return build(ModelConfig, cfg["model"], "model")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def save_checkpoint(
    folder: str | os.PathLike,
    model,
    meta: dict[str, Any],
    tokenizer: Optional[str | os.PathLike] = None,
    extra_files: Optional[dict[str, Any]] = None,
    torch_files: Optional[dict[str, Any]] = None,
) -> dict:
    """Write ``model`` and ``meta`` (merged into config.json) atomically to ``folder``.

    ``extra_files``: name -> JSON-able object; ``torch_files``: name -> object for
    ``torch.save`` (optimizer state). Returns the manifest.
    """
    import torch
    from safetensors.torch import save_file

    from .config.base import to_dict

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is shared like any output
    try:
        state = {}
        seen: dict[int, str] = {}
        for name, t in model.state_dict().items():
            key = t.data_ptr() if t.numel() else id(t)
            if key in seen and seen[key] != name:  # tied weight: store once
                continue
            seen[key] = name
            state[name] = t.detach().to("cpu").contiguous()
        save_file(state, str(tmp / WEIGHTS), metadata={"format": str(FORMAT)})
        config = {"format": FORMAT, "model": to_dict(model.cfg), **meta}
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER)
            config["tokenizer_sha256"] = sha256_file(tmp / TOKENIZER)
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1, sort_keys=True))
        for name, obj in (torch_files or {}).items():
            torch.save(obj, tmp / name)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
            _fsync(p)
        manifest = write_manifest(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def shape_mismatches(want: dict, state: dict) -> list[str]:
    """``"name (file shape) vs (model shape)"`` for every tensor of ``state`` whose shape is
    not the one the model (``want``: its state dict) has."""
    return [
        f"{k} {tuple(v.shape)} vs {tuple(want[k].shape)}"
        for k, v in state.items()
        if k in want and tuple(v.shape) != tuple(want[k].shape)
    ]


def _check_shapes(model, state: dict, path: Path) -> None:
    """Every tensor in the file has the shape config.json implies: a config (and manifest)
    edited to another size is one clear error, not torch's "size mismatch" traceback."""
    bad = shape_mismatches(model.state_dict(), state)
    if bad:
        raise CheckpointError(
            f"{path}: weights do not match config.json ({len(bad)} tensors "
            f"differ in shape, e.g. {'; '.join(bad[:3])}); the checkpoint "
            "folder was edited or mixed up: use the files one save wrote"
        )


def load_checkpoint(
    folder: str | os.PathLike, device: str = "cpu", verify_files: bool = True, expect_model=None
):
    """Load ``(model, config_dict)``; the model is built from the checkpoint's own config.

    ``expect_model``: a ModelConfig the caller needs; a checkpoint of another
    architecture stops with a message listing the differing keys.
    """
    import torch
    from safetensors.torch import load_file

    from .config.base import to_dict
    from .model import build_model

    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if verify_files:
        verify(folder)
    cfg = read_config(folder)
    mcfg = model_config(cfg, str(folder / CONFIG))
    if expect_model is not None:
        want, have = to_dict(expect_model), to_dict(mcfg)
        diff = _diff_keys(want, have, "model", ignore={"model.name", "model.source"})
        if diff:
            raise CheckpointError(
                f"{folder}: checkpoint is a different architecture from the configured model "
                f"({'; '.join(diff[:6])}); use a checkpoint of this model or fix params.yaml"
            )
    model = build_model(mcfg, device="meta")
    state = load_file(str(folder / WEIGHTS), device=str(device))
    _check_shapes(model, state, folder / WEIGHTS)
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=False)
    tied = {"output.weight"} if mcfg.tie_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / WEIGHTS}: weights do not match config.json "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    if mcfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    with torch.no_grad():  # non-persistent buffers are not in the file
        from .model.transformer import rope_inv_freq

        model.inv_freq.copy_(rope_inv_freq(mcfg.resolved_head_dim, mcfg.rope_theta, mcfg.rope_scaling))
        for r in model.routers():
            r.load_accum.zero_()
    return model, cfg


def _diff_keys(want: Any, have: Any, prefix: str, ignore: set[str]) -> list[str]:
    if isinstance(want, dict) and isinstance(have, dict):
        out = []
        for k in sorted(set(want) | set(have)):
            out += _diff_keys(want.get(k), have.get(k), f"{prefix}.{k}", ignore)
        return out
    if prefix in ignore or want == have:
        return []
    return [f"{prefix}: checkpoint {have!r}, configured {want!r}"]
