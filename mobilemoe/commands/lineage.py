"""``mobilemoe lineage``: walk back from a model to the data, params and code that made it.

    mobilemoe lineage --pte artifacts/.../model.pte      # the program on the phone
    mobilemoe lineage --checkpoint DIR | --run RUN_ID | --model-id MODEL_ID [--json]

Follows the ``mobilemoe.input_run_id`` tags (and ``reused_from_run_id`` for cached
stages) from the given run back to the first stage, printing for each stage its run,
checkpoint sha256, params, data version and code commit.
"""

from __future__ import annotations

import json

from . import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("lineage", help="walk MLflow lineage back from a .pte, checkpoint or run")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="an MLflow run id")
    g.add_argument("--model-id", help="an MLflow LoggedModel id (an exported .pte)")
    g.add_argument("--pte", help="an exported .pte file (found by its sha256)")
    g.add_argument("--checkpoint", help="a checkpoint folder (found by its sha256)")
    p.add_argument("--json", action="store_true")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import lineage as L
    from ..errors import UserError

    tracker = L.Tracker(load_config(args))
    run_id = args.run
    if args.model_id or args.pte:
        models = _find_models(tracker, args)
        if not models:
            what = args.model_id or args.pte
            raise UserError(f"no MLflow LoggedModel found for {what} in {tracker}")
        run_id = models[0].source_run_id
    elif args.checkpoint:
        from ..checkpoint import checkpoint_sha256

        sha = checkpoint_sha256(args.checkpoint)
        runs = [
            r for r in tracker.find_runs({L.CHECKPOINT_SHA256: sha}) if L.REUSED_FROM_RUN not in r.data.tags
        ]
        if not runs:
            raise UserError(
                f"{args.checkpoint}: no MLflow run produced a checkpoint with "
                f"sha256 {sha[:16]}... in {tracker}"
            )
        run_id = runs[0].info.run_id
    chain = walk(tracker, run_id)
    if args.json:
        print(json.dumps(chain, indent=1))
        return 0
    for i, node in enumerate(chain):
        reused = node.get("reused_from_run_id")
        print(
            f"{'  ' * i}{node['stage']:<15} run {node['run_id']}"
            + (f" (reused output of {reused})" if reused else "")
        )
        pad = "  " * i + " " * 16
        for key in (
            "checkpoint_sha256",
            "pte_sha256",
            "input_checkpoint_sha256",
            "data_version_sha256",
            "git_commit",
            "git_dirty",
            "code_version",
            "metaflow_pathspec",
        ):
            if node.get(key):
                print(f"{pad}{key}: {node[key]}")
        if node.get("params"):
            shown = ", ".join(f"{k}={v}" for k, v in list(node["params"].items())[:8])
            print(f"{pad}params: {shown}{' ...' if len(node['params']) > 8 else ''}")
    return 0


def _find_models(tracker, args):
    from .. import lineage as L

    if args.model_id:
        try:
            return [tracker.client.get_logged_model(args.model_id)]
        except Exception:
            return []
    from ..checkpoint import sha256_file

    sha = sha256_file(args.pte)
    return list(
        tracker.client.search_logged_models(
            experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{L.PTE_SHA256}` = '{sha}'"
        )
    )


def walk(tracker, run_id: str, limit: int = 20) -> list[dict]:
    """The chain of stage runs from ``run_id`` back to the first stage."""
    from .. import lineage as L

    chain: list[dict] = []
    seen: set[str] = set()
    while run_id and run_id not in seen and len(chain) < limit:
        seen.add(run_id)
        run = tracker.get_run(run_id)
        tags = run.data.tags
        node = {"stage": tags.get(L.STAGE, "?"), "run_id": run_id, "params": dict(run.data.params)}
        for name in (
            "checkpoint_sha256",
            "pte_sha256",
            "input_checkpoint_sha256",
            "data_version_sha256",
            "git_commit",
            "git_dirty",
            "code_version",
            "metaflow_pathspec",
            "reused_from_run_id",
            "input_run_id",
            "data_version",
        ):
            value = tags.get(L.TAG_PREFIX + name)
            if value:
                node[name] = value
        chain.append(node)
        run_id = tags.get(L.INPUT_RUN_ID)
    return chain
