"""MobileMoE end to end: curate -> scaling (foreach over groups of sweep points) ->
scaling_fit -> pretrain -> midtrain -> sft -> qat -> export
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

HERE = Path(__file__).resolve().parent
# The checkout: the library is one level up. Metaflow's code package (a remote step, or
# the package extracted anywhere): the library sits beside this file.
ROOT = HERE if (HERE / "mobilemoe").is_dir() else HERE.parent
sys.path.insert(0, str(ROOT))
from flow_compute import code_package, per_step_compute  # noqa: E402 (after the path is set)

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


def _datastore(flow):
    """This run's Metaflow datastore (local | s3 | ...), set by Metaflow's own settings."""
    try:
        return flow._datastore._storage_impl.TYPE
    except AttributeError:
        from metaflow.metaflow_config import DEFAULT_DATASTORE

        return DEFAULT_DATASTORE


def _local(ctx, ref):
    """``ref``'s files on this step's machine (pulled from an s3:// stage cache if need be)."""
    from mobilemoe import pipeline

    return pipeline.materialize(ctx.root, ctx.parsed, ref)


def _threads(ctx):
    """Explicit torch threads in every step (2 shared cores: oversubscription is 20x slower)."""
    import torch

    torch.set_num_threads(ctx.parsed.runtime.threads)


@per_step_compute(root=str(ROOT))  # compute.<step> of params: where each step runs (docs/scale-out.md)
@code_package(ROOT)  # the library, device lab, params and DVC files travel with remote steps
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
            self.ctx = pipeline.start(
                self.config, current.pathspec, root=os.environ["MOBILEMOE_ROOT"], datastore=_datastore(self)
            )
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
        with _user_errors(self.ctx):
            self.sweep = pipeline.scaling_plan(_here(self.ctx))
        self.sweep_groups = self.sweep.groups
        self.next(self.scaling, foreach="sweep_groups")

    @card(type="blank")
    @step
    def scaling(self):
        """One group of the scaling sweep's points: each trained (or found in the cache)."""
        from mobilemoe import cards, pipeline

        with _user_errors(self.ctx):
            self.points = pipeline.scaling_points(_here(self.ctx), self.sweep, self.input)
        cards.points_card(current.card, self.points)
        self.next(self.scaling_fit)

    @card(type="blank")
    @step
    def scaling_fit(self, inputs):
        """The law over every point, the design under the budgets, the plots."""
        from mobilemoe import cards, pipeline

        self.merge_artifacts(inputs, include=["ctx", "accounting", "data", "sweep"])
        records = [r for task in inputs for r in task.points]
        with _user_errors(self.ctx):
            self.scaling_result = pipeline.scaling_fit(_here(self.ctx), self.sweep, records)
            self.ctx = pipeline.with_design(self.ctx, self.scaling_result)
        cards.scaling_card(current.card, self.scaling_result)
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
            self.exported = pipeline.export_stage(_here(self.ctx), _local(self.ctx, self.qat_model))
        cards.export_card(current.card, self.exported)
        self.next(self.eval, self.device_profile, self.dense_baseline)

    @card(type="blank")
    @step
    def eval(self):
        from mobilemoe import cards, pipeline

        _threads(self.ctx)
        with _user_errors(self.ctx):
            self.evaluated = pipeline.eval_stage(
                _here(self.ctx), _local(self.ctx, self.qat_model), _local(self.ctx, self.exported)
            )
        cards.eval_card(current.card, self.evaluated)
        self.next(self.join)

    @card(type="blank")
    @step
    def device_profile(self):
        from mobilemoe import cards, pipeline

        with _user_errors(self.ctx):
            self.profile = pipeline.device_profile_stage(_here(self.ctx), _local(self.ctx, self.exported))
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
                "sweep",
                "scaling_result",
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
