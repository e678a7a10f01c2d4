"""Checkpoint <-> Hugging Face folder.

    export_hf("runs/sft/final", "out/hf")                 # config.json, safetensors, tokenizer, card
    import_hf("out/hf", "runs/imported")                  # our checkpoint (manifest and all)
    resolve_init_from("hf:out/hf", work_dir, params.model)  # what <stage>.init_from starts from

The exported folder holds transformers' own files (``config.json`` of a native
architecture, ``model.safetensors`` or shards with ``model.safetensors.index.json``,
``generation_config.json``, ``tokenizer.json`` + ``tokenizer_config.json`` +
``chat_template.jinja``), the model card ``README.md``, and ``mobilemoe.json``: our
checkpoint's ``config.json`` verbatim with the sha256 of the weight files written. An
import of a folder whose weights still have those sha256s restores that config (stage,
step, training-only model settings), so ours -> HF -> ours gives the same checkpoint,
byte for byte; any other folder imports as stage ``hf-import`` with the training-only
settings at their defaults (or the caller's, for ``init_from``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import (
    TOKENIZER,
    CheckpointError,
    checkpoint_sha256,
    load_checkpoint,
    shape_mismatches,
    verify,
)
from ..config.model import ModelConfig
from ..errors import UserError
from ..io import write_json_atomic, write_text_atomic
from ..tokens import BOS_ID, END_OF_TURN_ID, EOS_ID, PAD_ID
from .mapping import (
    ARCHITECTURES,
    HFMappingError,
    architecture,
    architecture_diff,
    architecture_for,
    from_hf_config,
    hf_config,
)

SIDECAR = "mobilemoe.json"
SIDECAR_FORMAT = 1
INDEX = "model.safetensors.index.json"
DTYPES = ("float32", "bfloat16")
IMPORT_STAGE = "hf-import"
HF_PREFIX = "hf:"
# What a folder's identity is made of (for the stage cache of init_from).
SOURCE_FILES = ("config.json", INDEX, "tokenizer.json", "tokenizer_config.json", SIDECAR)


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _sha256(path: Path) -> str:
    from ..checkpoint import sha256_file

    return sha256_file(path)


def _in_place(out_dir: Path, fill) -> None:
    """Write a folder atomically: ``fill(tmp)`` into a sibling, then one rename."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    try:
        fill(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- export --------------------------------------------------------------------------------
def hf_param_count(cfg: ModelConfig) -> int:
    """Parameters of the transformers model of ``cfg``, counted by transformers (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    return sum(p.numel() for p in model.parameters())


def export_hf(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    max_shard_size: str | int = "5GB",
    data: Optional[dict] = None,
    results: Optional[dict] = None,
    lineage: Optional[dict] = None,
) -> dict:
    """Write the Hugging Face folder of a checkpoint; returns a summary (also in the card).

    ``data``/``results``/``lineage``: the model card's sections (``mobilemoe.hf.card``).
    A QAT checkpoint exports its float weights (the card says so)."""
    import torch
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    from .card import model_card
    from .tokenizer import save_hf_tokenizer
    from .weights import to_hf_state

    if dtype not in DTYPES:
        raise UserError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    folder, out = Path(checkpoint_dir), Path(out_dir)
    sha = checkpoint_sha256(folder)  # verifies every file first
    model, config = load_checkpoint(folder, verify_files=False)
    cfg = model.cfg
    arch = architecture_for(cfg)
    tokenizer = folder / TOKENIZER
    if not tokenizer.is_file():
        raise UserError(f"{folder}: no {TOKENIZER}; a Hugging Face folder ships the model's tokenizer")
    torch_dtype = getattr(torch, dtype)
    state = to_hf_state(model.state_dict(), cfg)
    state = {
        k: v if k.endswith("e_score_correction_bias") else v.to(torch_dtype) for k, v in state.items()
    }  # transformers keeps the selection bias in fp32 whatever the dtype
    n_params = hf_param_count(cfg)
    summary: dict[str, Any] = {
        "architecture": arch,
        "dtype": dtype,
        "checkpoint": str(folder),
        "checkpoint_sha256": sha,
        "stage": config.get("stage"),
        "qat_float_weights": bool(config.get("qat")),
        "params": n_params,
    }

    def fill(tmp: Path) -> None:
        hf_config(cfg, dtype).save_pretrained(str(tmp))
        GenerationConfig(
            bos_token_id=BOS_ID, eos_token_id=[EOS_ID, END_OF_TURN_ID], pad_token_id=PAD_ID, do_sample=False
        ).save_pretrained(str(tmp))
        save_torch_state_dict(state, str(tmp), max_shard_size=max_shard_size, metadata={"format": "pt"})
        save_hf_tokenizer(tokenizer, tmp, cfg.max_seq_len)
        weights = {p.name: _sha256(p) for p in _weight_files(tmp)}
        write_json_atomic(
            tmp / SIDECAR,
            {
                "format": SIDECAR_FORMAT,
                "dtype": dtype,
                "config": config,
                "checkpoint_sha256": sha,
                "weights": weights,
            },
        )
        card = model_card(
            cfg, arch, {**config, "_checkpoint_sha256": sha}, data, results, lineage, params_count=n_params
        )
        write_text_atomic(tmp / "README.md", card)
        summary["files"] = sorted(p.name for p in tmp.iterdir())

    _in_place(out, fill)
    return summary


def write_card(hf_dir: str | os.PathLike, data=None, results=None, lineage=None) -> Path:
    """Rewrite the model card of an exported folder (e.g. once the run's scores exist)."""
    from .card import model_card

    folder = Path(hf_dir)
    side = _sidecar(folder)
    if side is None:
        raise UserError(f"{folder}: no {SIDECAR}; not a folder `mobilemoe hf export` wrote")
    cfg = _model_config(side["config"], folder / SIDECAR)
    config = {**side["config"], "_checkpoint_sha256": side.get("checkpoint_sha256")}
    return write_text_atomic(
        folder / "README.md",
        model_card(
            cfg, architecture_for(cfg), config, data, results, lineage, params_count=hf_param_count(cfg)
        ),
    )


# -- import ----------------------------------------------------------------------------------
def _sidecar(folder: Path) -> Optional[dict]:
    path = folder / SIDECAR
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
        return side if isinstance(side, dict) and isinstance(side.get("config"), dict) else None
    except ValueError:
        return None


def _model_config(config: dict, source) -> ModelConfig:
    from ..checkpoint import model_config

    return model_config(config, str(source))


def _read_hf_config(folder: Path):
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: no config.json; not a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path}: not valid JSON") from None
    archs = raw.get("architectures") or []
    if not (archs and archs[0] in ARCHITECTURES):
        from types import SimpleNamespace

        # Unmapped (or unknown to transformers): refuse from the raw fields, naming them.
        from_hf_config(SimpleNamespace(**raw), str(path))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: transformers cannot read it ({e})") from None


def _read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    index = folder / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{index}: unreadable index") from None
        files = [folder / n for n in names]
    else:
        files = [folder / "model.safetensors"]
    for f in files:
        if not f.is_file():
            other = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf")]
            hint = f" (found {', '.join(other[:3])}: only safetensors are read)" if other else ""
            raise UserError(f"{f}: weight file missing{hint}")
    tensors: dict = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def _sidecar_matches(folder: Path, side: Optional[dict]) -> bool:
    if side is None or not side.get("weights"):
        return False
    have = {p.name for p in _weight_files(folder)}
    return have == set(side["weights"]) and all(_sha256(folder / n) == s for n, s in side["weights"].items())


def import_hf(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, model: Optional[ModelConfig] = None
) -> dict:
    """Write our checkpoint of a Hugging Face folder of a mapped architecture; returns
    ``{"checkpoint", "checkpoint_sha256", "architecture", "restored"}``.

    ``model``: the configured model (``params.model``, for ``init_from``): the folder must
    be that architecture; training-only settings (name, init_std, max_seq_len, bias
    update rate, auxiliary losses) are taken from it."""
    import torch

    from ..checkpoint import save_checkpoint
    from ..model import build_model
    from .tokenizer import check_special_tokens, without_post_processor
    from .weights import from_hf_state

    folder, out = Path(hf_dir), Path(out_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: Hugging Face folder not found")
    hf = _read_hf_config(folder)
    source = str(folder / "config.json")
    derived = from_hf_config(hf, source, name=folder.name)
    side = _sidecar(folder)
    restored = _sidecar_matches(folder, side)
    meta: dict[str, Any]
    cfg = derived
    if restored and side is not None:
        mine = _model_config(side["config"], folder / SIDECAR)
        restored = architecture(mine) == architecture(derived)
        if restored:
            cfg = mine
    if model is not None:
        diff = architecture_diff(model, derived)
        if diff:
            raise HFMappingError(
                f"{folder}: another architecture than the configured model ({'; '.join(diff[:6])}); "
                "init_from needs a model of params.yaml's shape"
            )
        cfg = model
    if restored and side is not None:
        meta = {k: v for k, v in side["config"].items() if k not in ("format", "model", "tokenizer_sha256")}
    else:
        meta = {
            "stage": IMPORT_STAGE,
            "step": 0,
            "qat": None,
            "hf_import": {
                "source": str(folder),
                "architecture": hf.architectures[0],
                "config_sha256": _sha256(folder / "config.json"),
            },
        }
    tok_path = folder / TOKENIZER
    if not tok_path.is_file():
        raise UserError(f"{folder}: no {TOKENIZER}; our checkpoints carry the model's tokenizer")
    from tokenizers import Tokenizer

    try:
        tok_text = without_post_processor(tok_path.read_text())
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise UserError(f"{tok_path}: not a valid tokenizer.json ({e})") from None
    check_special_tokens(Tokenizer.from_str(tok_text), tok_path)

    n_mtp = int(getattr(hf, "num_nextn_predict_layers", 0) or 0)

    def mtp_layer(name: str) -> bool:  # multi-token-prediction layers after the last: not ours
        parts = name.split(".")
        return n_mtp > 0 and len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= cfg.n_layers

    state = from_hf_state(_read_weights(folder), cfg, str(folder), ignore=mtp_layer)
    net = build_model(cfg, device="meta")
    want = net.state_dict()
    bad = shape_mismatches(want, state)
    if bad:
        raise HFMappingError(
            f"{folder}: weights do not match config.json ({len(bad)} differ, e.g. {'; '.join(bad[:3])})"
        )
    net = net.to_empty(device="cpu")
    state = {k: v.to(want[k].dtype) for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "output.weight")]
    if missing or unexpected:  # a mapping bug, not a user's: say what
        raise HFMappingError(
            f"{folder}: mapped weights incomplete (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    if cfg.tie_embeddings:
        net.output.weight = net.tok_embeddings.weight
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / TOKENIZER
        tok_file.write_text(tok_text)
        with torch.no_grad():
            save_checkpoint(out, net, meta, tokenizer=tok_file)
    return {
        "checkpoint": str(out),
        "checkpoint_sha256": checkpoint_sha256(out),
        "architecture": hf.architectures[0],
        "restored": restored,
    }


# -- init_from ---------------------------------------------------------------------------------
def parse_init_from(spec: str, key: str = "init_from") -> str:
    if not spec.startswith(HF_PREFIX) or len(spec) == len(HF_PREFIX):
        raise UserError(
            f"{key}: {spec!r} must be hf:PATH (a Hugging Face folder) or hf:ORG/NAME (a hub model)"
        )
    return spec[len(HF_PREFIX) :]


def source_folder(spec: str, key: str = "init_from") -> Path:
    """The local folder of ``hf:PATH`` (a folder) or ``hf:ORG/NAME`` (downloaded from the hub)."""
    target = parse_init_from(spec, key)
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or target.startswith(".") or target.count("/") != 1:
        raise UserError(f"{key}: {path} is not a folder (nor a hub name ORG/NAME)")
    try:
        from huggingface_hub import snapshot_download

        got = snapshot_download(
            target, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.md"], local_files_only=False
        )
    except Exception as e:  # offline, unknown repo, gated: one message
        raise UserError(
            f"{key}: could not fetch {target!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download the folder where the network allows and give hf:PATH"
        ) from None
    return Path(got)


def source_digest(spec: str, key: str = "init_from") -> str:
    """One sha256 naming the content of an ``init_from`` source (its config, weights, tokenizer)."""
    folder = source_folder(spec, key)
    h = hashlib.sha256()
    names = [n for n in SOURCE_FILES if (folder / n).is_file()] + [p.name for p in _weight_files(folder)]
    for name in sorted(names):
        h.update(f"{name}\0{_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def resolve_init_from(
    spec: str, work_dir: str | os.PathLike, model: ModelConfig, key: str = "init_from"
) -> Path:
    """Our checkpoint of an ``init_from`` source, imported once under ``work_dir/init_from``
    (reused while the source's content is unchanged)."""
    dest = Path(work_dir) / "init_from"
    marker, ckpt = dest / "source.json", dest / "checkpoint"
    digest = source_digest(spec, key)
    try:
        if json.loads(marker.read_text()).get("sha256") == digest:
            verify(ckpt)
            return ckpt
    except (OSError, ValueError, CheckpointError):
        pass
    try:
        import_hf(source_folder(spec, key), ckpt, model=model)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None
    write_json_atomic(marker, {"spec": spec, "sha256": digest})
    return ckpt


__all__ = [
    "export_hf",
    "import_hf",
    "write_card",
    "hf_param_count",
    "resolve_init_from",
    "source_digest",
]
