"""MobileMoE end to end: curate -> pretrain -> midtrain -> sft -> qat -> export
-> (eval | device_profile | dense_baseline) -> join -> end.

    python flows/full_repro.py run            # the embedded default (params.yaml = tiny)

The configuration is the project's params.yaml (a Metaflow Config, read once per run);
DVC versions the same file. Each step is thin: it calls one function of
``mobilemoe.pipeline`` and keeps the ``StageRef`` it returns (paths, hashes, MLflow run ids).
Stage outputs are cached by (params, inputs, code): after editing params.yaml, a new
``run`` redoes only the stages whose inputs changed (docs/pipeline.md, "Rerun one stage").
"""

import contextlib
import os
import sys
from pathlib import Path

from metaflow import Config, FlowSpec, card, current, step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MOBILEMOE_ROOT", str(ROOT))
os.environ.setdefault("MOBILEMOE_OWNER_PID", str(os.getpid()))  # the runtime owns the MLflow runs
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _yaml(text):
    from mobilemoe.config import ConfigError, parse_yaml_text

    try:  # one error line, not Metaflow's "Internal error" and a traceback
        return parse_yaml_text(text, "params.yaml")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _here(ctx):
    """The run's context with this step's pathspec (what the stage's MLflow run records)."""
    import dataclasses

    return dataclasses.replace(ctx, pathspec=current.pathspec)


@contextlib.contextmanager
def _user_errors(ctx=None):
    """Bad input (params, data, checkpoints, lab settings) ends in one clear line, not a
    traceback: the message names the file or key and what to do. Either way a failing
    step marks the pipeline's MLflow run FAILED (a new ``run`` opens a new one)."""
    from mobilemoe.errors import UserError

    try:
        yield
    except UserError as e:
        _mark_failed(ctx)
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception:
        _mark_failed(ctx)
        raise


def _mark_failed(ctx) -> None:
    if ctx is None:
        return
    try:
        from mobilemoe import pipeline

        pipeline.finish(ctx, "FAILED")
    except Exception as e:  # the step's own error matters more
        print(f"warning: could not mark MLflow run {ctx.pipeline_run_id} FAILED: {e}", file=sys.stderr)


def _threads(ctx):
    """Explicit torch threads in every step (2 shared cores: oversubscription is 20x slower)."""
    import torch

    torch.set_num_threads(ctx.parsed.runtime.threads)


class FullReproFlow(FlowSpec):
    config = Config(
        "config",
        default=lambda ctx: str(Path(os.environ["MOBILEMOE_ROOT"]) / "params.yaml"),
        parser=_yaml,
        help="the project's params.yaml (do not point it elsewhere)",
    )

    @card(type="blank")
    @step
    def start(self):
        from mobilemoe import cards, pipeline
        from mobilemoe.model.accounting import account

        with _user_errors(None):
            self.ctx = pipeline.start(self.config, current.pathspec, root=os.environ["MOBILEMOE_ROOT"])
        params = self.ctx.parsed
        acc = account(params.model, params.scaling.context)
        self.accounting = acc.to_dict()
        cards.markdown(
            current.card,
            f"# {params.model.name}: architecture\nMLflow pipeline run `{self.ctx.pipeline_run_id}`",
        )
        cards.table(current.card, list(self.accounting.items()))
        self.next(self.curate)

    @card(type="blank")
    @step
    def curate(self):
        from mobilemoe import cards, pipeline

        with _user_errors(self.ctx):
            self.data = pipeline.curate(_here(self.ctx))
        self.ctx = pipeline.with_data_version(self.ctx, self.data)  # every later stage records it
        cards.markdown(current.card, "# curate (DVC)")
        cards.table(current.card, sorted(self.data.data_version.items()), ("output", "md5"))
        cards.table(current.card, list(pipeline.flatten_numbers(self.data.stats).items())[:60])
        self.next(self.pretrain)

    def _train(self, stage, upstream):
        from mobilemoe import cards, pipeline

        _threads(self.ctx)
        with _user_errors(self.ctx):
            ref = pipeline.train_stage(_here(self.ctx), stage, upstream)
        cards.stage_card(current.card, ref, self.ctx.parsed.model.vocab_size)
        return ref

    @card(type="blank")
    @step
    def pretrain(self):
        self.pretrained = self._train("pretrain", None)
        self.next(self.midtrain)

    @card(type="blank")
    @step
    def midtrain(self):
        self.midtrained = self._train("midtrain", self.pretrained)
        self.next(self.sft)

    @card(type="blank")
    @step
    def sft(self):
        self.sft_model = self._train("sft", self.midtrained)
        self.next(self.qat)

    @card(type="blank")
    @step
    def qat(self):
        self.qat_model = self._train("qat", self.sft_model)
        self.next(self.export)

    @card(type="blank")
    @step
    def export(self):
        from mobilemoe import cards, pipeline

        _threads(self.ctx)
        with _user_errors(self.ctx):
            self.exported = pipeline.export_stage(_here(self.ctx), self.qat_model)
        cards.export_card(current.card, self.exported)
        self.next(self.eval, self.device_profile, self.dense_baseline)

    @card(type="blank")
    @step
    def eval(self):
        from mobilemoe import cards, pipeline

        _threads(self.ctx)
        with _user_errors(self.ctx):
            self.evaluated = pipeline.eval_stage(_here(self.ctx), self.qat_model, self.exported)
        cards.eval_card(current.card, self.evaluated)
        self.next(self.join)

    @card(type="blank")
    @step
    def device_profile(self):
        from mobilemoe import cards, pipeline

        with _user_errors(self.ctx):
            self.profile = pipeline.device_profile_stage(_here(self.ctx), self.exported)
        cards.device_card(current.card, self.profile)
        self.next(self.join)

    @card(type="blank")
    @step
    def dense_baseline(self):
        """The science check: a dense model with the MoE's active parameters, same tokens."""
        from mobilemoe import cards, pipeline

        _threads(self.ctx)
        with _user_errors(self.ctx):
            self.dense = pipeline.dense_baseline_stage(_here(self.ctx), self.pretrained)
        cards.dense_card(current.card, self.dense)
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        from mobilemoe import cards

        self.merge_artifacts(
            inputs,
            include=[
                "ctx",
                "accounting",
                "data",
                "pretrained",
                "midtrained",
                "sft_model",
                "qat_model",
                "exported",
            ],
        )
        self.evaluated = inputs.eval.evaluated
        self.profile = inputs.device_profile.profile
        self.dense = inputs.dense_baseline.dense
        cards.summary_card(current.card, self)
        self.next(self.end)

    @step
    def end(self):
        from mobilemoe import pipeline

        pipeline.finish(self.ctx)
        print(f"done: MLflow pipeline run {self.ctx.pipeline_run_id}")
        print(f"  .pte: {self.exported.pte} (LoggedModel {self.exported.model_id})")
        print(f"  lineage: mobilemoe lineage --pte {self.exported.pte}")


if __name__ == "__main__":
    FullReproFlow()
