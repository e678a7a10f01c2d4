"""``mobilemoe eval``: lm-eval benchmarks on a checkpoint or an exported ``.pte``.

    mobilemoe eval --checkpoint DIR --tasks arc_easy,piqa --limit 50
    mobilemoe eval --pte model.pte [--tokenizer tokenizer.json] --json results.json
    mobilemoe eval --list-tasks        # the offline suite's task names
    mobilemoe eval --task-dir          # the generated task folder, for `lm_eval --include_path`

Tasks, limit, shots and batch size default to the ``eval:`` section of params.yaml.
"""

from __future__ import annotations

from . import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="lm-eval benchmarks on a checkpoint or a .pte (table, JSON)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--checkpoint", metavar="DIR", help="a checkpoint folder")
    what.add_argument("--pte", metavar="FILE", help="an exported ExecuTorch program")
    what.add_argument("--list-tasks", action="store_true", help="print the offline task names")
    what.add_argument(
        "--task-dir",
        action="store_true",
        help="print the generated lm-eval task folder (for lm_eval --include_path)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="tokenizer.json (default: the checkpoint's own / the one beside the .pte)",
    )
    p.add_argument("--tasks", help="comma-separated task names (default: eval.tasks)")
    p.add_argument("--limit", help="examples per task; 'all' = full splits (default: eval.limit)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="scoring: a token budget of N x the context per forward pass; "
        "generation: N requests (default: eval.batch_size)",
    )
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: eval.num_fewshot)")
    p.add_argument("--device", help="cpu | cuda | auto (default: runtime.device)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--paper",
        action="store_true",
        help="also print the comparison with the paper's reported numbers (docs/paper.md)",
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError

    if args.list_tasks:
        from ..eval.suite import SUITE, available_tasks

        for name in available_tasks():
            t = SUITE.get(name)
            print(f"{name}\t{t.kind}\t{t.note}" if t else name)
        return 0
    if args.task_dir:
        from ..eval.suite import build_task_dir

        print(build_task_dir())
        return 0
    if not args.checkpoint and not args.pte:
        raise UserError("give --checkpoint DIR or --pte FILE (or --list-tasks)")
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {args.batch_size}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    params = load_config(args)
    from ..eval.runner import format_table, run_eval, write_results

    results = run_eval(
        params,
        checkpoint=args.checkpoint,
        pte=args.pte,
        tokenizer=args.tokenizer,
        tasks=args.tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        num_fewshot=args.num_fewshot,
        device=args.device,
    )
    s = results["settings"]
    print(
        f"{results['model']['kind']} {results['model']['path']}: {len(s['tasks'])} task(s), "
        f"limit {s['limit'] or 'none (full splits)'}, {s['num_fewshot']}-shot, "
        f"{results['wall_s']:.1f} s"
    )
    print(format_table(results))
    if args.paper:
        from ..eval.report import markdown_comparison, paper_comparison

        print()
        print(markdown_comparison(paper_comparison(results)))
    if args.json:
        print(f"wrote {write_results(results, args.json)}")
    return 0
