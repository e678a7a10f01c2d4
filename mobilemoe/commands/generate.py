"""``mobilemoe generate``: a completion from a checkpoint (eager) or an exported ``.pte``.

    mobilemoe generate --checkpoint runs/sft/final --prompt "What is a list?"
    mobilemoe generate --pte out/export/model.pte --prompt "Hello" --max-new-tokens 64
    mobilemoe generate ... --temperature 0.8 --top-p 0.9 --seed 1

Checkpoints of stage ``sft`` or ``qat`` (and programs exported from them) are prompted with
the chat template and stop at the end of their turn; ``--no-chat`` / ``--chat`` override.
A QAT checkpoint runs as its converted INT4 model (``--fp32`` for its float weights).
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint or an exported .pte")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder (eager model with KV cache)")
    src.add_argument("--pte", help="exported program (ExecuTorch runtime)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (default: the checkpoint's, or the one beside the .pte)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="use the chat template (default: for sft/qat models)",
    )
    chat.add_argument("--no-chat", dest="chat", action="store_false")
    p.add_argument(
        "--fp32",
        action="store_true",
        help="a QAT checkpoint's float weights instead of its converted INT4 model",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..errors import UserError
    from ..generate import decode_new, encode_prompt, generate_ids, is_chat_stage

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.pte:
        from ..export import PteModel

        pte = PteModel(args.pte, args.tokenizer, threads=args.threads)
        chat = pte.use_chat_template if args.chat is None else args.chat
        ids = encode_prompt(pte.tokenizer, args.prompt, chat)
        new = pte.generate(ids, args.max_new_tokens, **sampling)
        print(decode_new(pte.tokenizer, new))
        return 0

    from pathlib import Path

    from ..checkpoint import TOKENIZER
    from ..data.tokenizer import load_tokenizer
    from ..quant import load_for_inference

    model, config = load_for_inference(args.checkpoint, quantized=not args.fp32)
    tokenizer = load_tokenizer(args.tokenizer or Path(args.checkpoint) / TOKENIZER, model.cfg.vocab_size)
    chat = is_chat_stage(config.get("stage")) if args.chat is None else args.chat
    ids = encode_prompt(tokenizer, args.prompt, chat)
    new = generate_ids(model, ids, args.max_new_tokens, **sampling)
    print(decode_new(tokenizer, new))
    return 0
