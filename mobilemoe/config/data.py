"""The ``data`` section: sources, cleaning, dedup, decontamination, tokenizer, mixes, remote.

Read by the DVC stages of ``dvc.yaml`` (``scripts/py -m mobilemoe.data.stages STAGE``);
each stage lists in ``dvc.yaml`` exactly the keys below that it reads, so editing one
reruns only the stages that use it. Values not taken from the paper (docs/paper.md) are "our choice"
with the reason next to them (here and in ``presets/*.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from .base import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Range,
    build,
    fail,
    require,
)

SOURCE_KINDS = ("cpython", "files", "hf", "chatterbot")


@dataclass
class SourceConfig:
    """One source of documents (``use: pretrain``) or prompt/response pairs (``use: sft``).

    Kinds:
      cpython     CPython's own text: ``parts`` of [topics, docstrings]; from the running
                  interpreter, or from ``snapshot`` (a JSONL written by
                  ``python -m mobilemoe.data.sources snapshot OUT``; the default ships one)
      files       local files/globs: ``paths`` (+ ``exclude``), ``format`` txt|jsonl|parquet|dictd
      hf          a Hugging Face dataset streamed with ``datasets.load_dataset(path, config,
                  split=split, streaming=True)``; a hub name or a local folder; ``max_docs`` caps it
      chatterbot  chatterbot-corpus conversations as prompt/response pairs (``languages``)
    """

    name: str  # tag stored on every document (stats, midtrain weights)
    kind: Literal["cpython", "files", "hf", "chatterbot"]
    use: Literal["pretrain", "sft"] = "pretrain"
    licence: str = "unknown"  # tagged on every document
    optional: bool = False  # a missing path is skipped with a note, not an error
    max_docs: Optional[PositiveInt] = None  # cap on records read (hf: required)
    max_chars: Optional[PositiveInt] = None  # cap on characters kept from this source
    min_chars: Optional[NonNegativeInt] = None  # overrides clean.min_chars (short records, e.g. fortunes)
    # cpython
    parts: list[str] = field(default_factory=lambda: ["topics", "docstrings"])
    snapshot: Optional[str] = None  # that text as shipped JSONL(.gz); null = the interpreter's
    # files
    paths: list[str] = field(default_factory=list)  # globs; relative to the project root
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns on the file name
    format: Literal["auto", "txt", "jsonl", "parquet", "dictd"] = "auto"
    split: str = "file"  # txt: file | paragraph | a regex matching separator lines
    # files (jsonl/parquet) and hf
    text_field: str = "text"
    prompt_field: str = "prompt"  # use: sft
    response_field: str = "response"  # use: sft
    # hf
    path: Optional[str] = None
    config: Optional[str] = None
    hf_split: str = "train"
    # chatterbot
    languages: list[str] = field(default_factory=lambda: ["english"])

    def validate(self, key: str) -> None:
        require(bool(self.name.strip()), f"{key}.name", "must not be empty")
        if self.kind == "cpython":
            bad = sorted(set(self.parts) - {"topics", "docstrings"})
            require(
                not bad and bool(self.parts),
                f"{key}.parts",
                f"must list topics and/or docstrings, got {self.parts}",
            )
            require(self.use == "pretrain", f"{key}.use", "cpython text is pretrain text")
        elif self.kind == "files":
            require(bool(self.paths), f"{key}.paths", "list at least one file or glob")
        elif self.kind == "hf":
            require(bool(self.path), f"{key}.path", "name a dataset (hub name or local folder)")
            require(self.max_docs is not None, f"{key}.max_docs", "streamed datasets need a document cap")
        elif self.kind == "chatterbot":
            require(self.use == "sft", f"{key}.use", "chatterbot-corpus gives sft pairs")

    def outside_project(self) -> Optional[str]:
        """Why this source reads something that does not install with the project (its files
        and pinned Python packages), or None. Such a source can build other data on another
        machine: a system package absent, another Python release's stdlib, a changed hub copy."""
        if self.optional:
            return "is optional (where it is absent the data differ)"
        if self.kind == "cpython":
            if self.snapshot is None:
                return (
                    "reads the running interpreter's stdlib (it differs between Python "
                    "releases); set snapshot"
                )
            if not _inside_project(self.snapshot):
                return f"snapshot {self.snapshot} is not a path inside the project"
        if self.kind == "files":
            outside = [p for p in self.paths if not _inside_project(p)]
            if outside:
                return f"reads {', '.join(outside)}, outside the project"
        if self.kind == "hf" and not (self.path or "").startswith("./"):
            return f"streams {self.path!r} from the hub (a folder inside the project is ./FOLDER)"
        return None


def _inside_project(path: str) -> bool:
    """A relative path that stays inside the project folder (no ~, no leading /, no ..)."""
    return not path.startswith(("/", "~")) and ".." not in path.replace("\\", "/").split("/")


@dataclass
class CleanConfig:
    """Normalisation and quality filters (applied in this order; stats per filter)."""

    unicode_form: Literal["NFC", "NFKC"] = "NFC"  # our choice: NFC keeps code/math symbols intact
    chunk_chars: PositiveInt = 4000  # our choice: long docs are split at paragraphs (~1k tokens)
    min_chars: NonNegativeInt = 200  # our choice: shorter texts teach little (one-line docstrings)
    max_line_chars: PositiveInt = 2000  # our choice: longer lines are minified data, not prose
    min_words: NonNegativeInt = 30
    min_alpha_fraction: Fraction = 0.55  # letters / non-space chars (drops tables, code dumps)
    max_non_latin_fraction: Fraction = 0.1  # letters outside Latin script (English heuristic)
    min_stopword_fraction: Fraction = 0.06  # English function words / words (language heuristic)
    max_dup_line_fraction: Fraction = 0.3  # Gopher-style repetition rule (our choice of bound)
    max_top_bigram_fraction: Fraction = 0.2  # Gopher (Rae et al. 2021) value; the paper is silent
    max_dup_5gram_fraction: Fraction = 0.4  # our choice: API docs repeat phrases (Gopher: 0.15 on web)
    sft_max_chars: PositiveInt = 2000  # prompt or response longer than this is dropped

    def validate(self, key: str) -> None:
        require(
            self.min_chars < self.chunk_chars,
            f"{key}.min_chars",
            f"must be below chunk_chars={self.chunk_chars}",
        )


@dataclass
class DedupConfig:
    """Exact dedup (normalised text hash) and near dedup (MinHash + LSH)."""

    exact: bool = True
    near: bool = True
    shingle_words: PositiveInt = 5  # our choice: word 5-grams (a ~5%-edited copy keeps J ~ 0.6)
    num_perm: PositiveInt = (
        128  # our choice: 32 bands x 4 rows finds J = 0.5 with p ~ 0.87, J >= 0.6 with p > 0.99
    )
    bands: PositiveInt = 32
    threshold: Annotated[float, Range(gt=0, le=1)] = (
        0.5  # estimated Jaccard at which a candidate pair is a duplicate
    )
    seed: NonNegativeInt = 0

    def validate(self, key: str) -> None:
        require(self.num_perm % self.bands == 0, f"{key}.bands", f"must divide num_perm={self.num_perm}")


@dataclass
class DecontamConfig:
    """Drop training texts sharing an n-gram with any evaluation set (evalsets.py)."""

    enabled: bool = True
    ngram: PositiveInt = 13  # GPT-3's 13-gram overlap rule; the paper is silent
    min_words: PositiveInt = 8  # our choice: shorter eval passages match as a whole if >= this
    eval_sets: list[str] = field(default_factory=list)  # empty = every registered set

    def validate(self, key: str) -> None:
        require(self.min_words <= self.ngram, f"{key}.min_words", f"must be <= ngram={self.ngram}")


@dataclass
class TokenizerConfig:
    """Byte-level BPE (vocabulary size: ``model.vocab_size``)."""

    min_frequency: PositiveInt = 2
    max_train_chars: PositiveInt = 200_000_000  # our choice: a sample suffices at paper scale


@dataclass
class MidtrainConfig:
    """The mid-training mix: the higher-quality part of the pretrain text, re-weighted."""

    quality_fraction: Annotated[float, Range(gt=0, le=1)] = (
        0.5  # our choice: top half by quality (docs/paper.md#training-recipe)
    )
    source_weights: dict[str, NonNegativeFloat] = field(default_factory=dict)  # repeat factor per source name
    sft_fraction: Annotated[float, Range(ge=0, lt=1)] = (
        0.0  # share of SFT pairs (as plain chat text) mixed in
    )


@dataclass
class RemoteConfig:
    """Where ``dvc push`` sends the data (``mobilemoe data remote`` writes .dvc/config)."""

    name: str = "store"
    url: str = ".dvc/store"  # a folder (relative to the project) or s3://bucket/prefix
    endpoint_url: Optional[str] = None  # S3-compatible endpoint; env MOBILEMOE_S3_ENDPOINT_URL wins


@dataclass
class DataConfig:
    out_dir: str = "data"  # DVC stage outputs, relative to the project (dvc.yaml reads it)
    # true: every source must install with the project (its files and pinned packages), so
    # every machine that meets the README's requirements builds the same data (the default)
    self_contained: bool = False
    # Each entry is a SourceConfig; kept as mappings so an entry states only the keys of its
    # kind (the rest take SourceConfig's defaults); ``source_configs()`` gives the typed list.
    sources: list[dict[str, Any]] = field(default_factory=list)
    max_record_bytes: PositiveInt = 8_000_000  # our choice: bigger raw records (a 50 MB line) are skipped
    val_fraction: Annotated[float, Range(gt=0, lt=0.5)] = 0.05  # our choice: held-out documents per mix
    seed: NonNegativeInt = 1234  # split and shuffle seed of the shards
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    midtrain: MidtrainConfig = field(default_factory=MidtrainConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    def source_configs(self, key: str = "data") -> list[SourceConfig]:
        return [build(SourceConfig, s, f"{key}.sources[{i}]") for i, s in enumerate(self.sources)]

    def validate(self, key: str) -> None:
        sources = self.source_configs(key)
        names = [s.name for s in sources]
        if self.self_contained:
            for i, src in enumerate(sources):
                why = src.outside_project()
                if why:
                    fail(
                        f"{key}.sources[{i}]",
                        f"{src.name} {why}, but {key}.self_contained is "
                        "true; drop the source, or set self_contained: false (e.g. preset "
                        "tiny-system-text)",
                    )
        for i, name in enumerate(names):
            if name in names[:i]:
                fail(f"{key}.sources[{i}].name", f"duplicate source name {name!r}")
        for name in self.midtrain.source_weights:
            if names and name not in names:
                fail(
                    f"{key}.midtrain.source_weights.{name}",
                    f"no source of that name (sources: {', '.join(names)})",
                )
