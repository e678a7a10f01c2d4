"""Open what gets evaluated, with clear errors: a checkpoint folder or an exported ``.pte``.

    model, config, tokenizer_path = load_eval_checkpoint("ckpt/", None, "cpu", torch.float32)
    program, tokenizer_path, window, vocab = open_pte("model.pte", None, threads=1)

A QAT checkpoint is evaluated as the converted (quantized) model it exports to, through
``mobilemoe.quant.load_for_inference``; the ``.pte`` through ``mobilemoe.export.runtime
.PteModel`` (the ExecuTorch runtime). A tokenizer given explicitly must be the one the
checkpoint was trained with (sha256 in its config.json) and fit the model's vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError


def _tokenizer_for(given: Optional[str], default: Path, owner: str) -> Path:
    path = Path(given) if given else default
    if not path.is_file():
        hint = "" if given else f" (the default next to the {owner}); pass tokenizer=FILE / --tokenizer FILE"
        raise UserError(f"{path}: tokenizer not found{hint}")
    return path


def load_eval_checkpoint(checkpoint, tokenizer=None, device: str = "cpu", dtype=None, verify: bool = True):
    """(model in eval mode, config.json dict, tokenizer path)."""
    from ..checkpoint import CONFIG, TOKENIZER, CheckpointError, load_checkpoint, read_config, sha256_file

    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: checkpoint folder not found (--checkpoint / model_args checkpoint=DIR)"
        )
    config = read_config(folder)
    if config.get("qat"):
        try:
            from ..quant import load_for_inference
        except ImportError as e:
            raise UserError(
                f"{folder}: a QAT checkpoint ({config['qat']}) is evaluated as its "
                f"converted model, which needs mobilemoe.quant.load_for_inference "
                f"({e})"
            ) from None
        # The converted (quantized) model keeps its own dtypes: no cast.
        model, config = load_for_inference(folder, quantized=True, device=device)
    else:
        model, config = load_checkpoint(folder, device=device, verify_files=verify)
        if dtype is not None:
            model = model.to(dtype=dtype)
            for r in model.routers():  # routers stay fp32 (docs/paper.md#routing: router fp32)
                r.float()
    tok = _tokenizer_for(tokenizer, folder / TOKENIZER, "checkpoint")
    want = config.get("tokenizer_sha256")
    if tokenizer and want and sha256_file(tok) != want:
        raise UserError(
            f"{tok}: not the tokenizer checkpoint {folder} was trained with (sha256 "
            f"differs from tokenizer_sha256 in its {CONFIG}); drop --tokenizer to "
            "use the checkpoint's own"
        )
    return model.eval(), config, tok


def open_pte(pte, tokenizer=None, threads: Optional[int] = None):
    """(program, tokenizer path, context window in tokens, vocabulary size)."""
    if not pte:
        raise UserError("model_args pte=FILE is required for --model mobilemoe-pte (--pte FILE)")
    path = Path(pte)
    if not path.is_file():
        raise UserError(f"{path}: exported program (.pte) not found")
    tok = _tokenizer_for(tokenizer, path.with_name("tokenizer.json"), ".pte")
    try:
        from ..export.runtime import PteModel
    except ImportError as e:
        raise UserError(
            f"scoring {path} needs the ExecuTorch runtime wrapper mobilemoe.export.runtime ({e})"
        ) from None
    want = program_report(path).get("tokenizer_sha256")
    if tokenizer and want and _sha256(tok) != want:
        raise UserError(
            f"{tok}: not the tokenizer {path.name} was exported with (sha256 differs "
            f"from tokenizer_sha256 in export_report.json); drop --tokenizer to use "
            "the one beside the program"
        )
    program = PteModel(path, tok, threads=threads)
    # PteModel.logits feeds a sequence in calls of max_seq_len tokens into a KV cache of
    # max_context_len slots: the window a request may fill is the cache.
    window = getattr(program, "max_context_len", None) or program.max_seq_len
    return program, tok, int(window), int(program.vocab_size)


def program_report(pte: Path) -> dict:
    """The exporter's ``export_report.json`` beside a program ({} if absent/unreadable)."""
    import json

    path = Path(pte).with_name("export_report.json")
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _sha256(path: Path) -> str:
    from ..checkpoint import sha256_file

    return sha256_file(path)


def pte_greedy_generate(
    program, prompt: list[int], max_new: int, should_stop: Callable[[list[int]], bool]
) -> list[int]:
    """Greedy continuation of one prompt with the program's own KV cache: the prompt in
    one ``logits`` call, then one ``forward`` call per new token at the next position
    (``PteModel.generate`` without its stop-string blind spot: we check every token)."""
    new: list[int] = []
    if max_new <= 0:
        return new
    logits = program.logits(prompt)[-1]
    while True:
        token = int(logits.argmax())
        new.append(token)
        if len(new) >= max_new or should_stop(new):
            return new
        logits = program.forward([token], len(prompt) + len(new) - 1)[-1]
