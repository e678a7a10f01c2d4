"""The pipeline behind ``flows/full_repro.py``: one plain function per stage.

Flow steps are thin: each calls one function here with the run's :class:`Context` and
keeps the :class:`StageRef` it returns (paths, hashes, MLflow run ids), which the next
step and the step's card read.

Modules, one job each:

* ``stages``   the orchestration of each stage (start, curate, the training stages,
               export, eval, device profile, dense baseline, finish)
* ``cache``    stage keys (the trainer's weight settings + inputs + the code the stage
               runs), cache folders, finding a cached output again
* ``stores``   the stage cache on S3 (a local mirror, pushed and pulled by entry) and
               the checks ``start`` makes of every shared store
* ``tracking`` MLflow bookkeeping: tags, reused-stage runs, the ``.pte``'s LoggedModel,
               the trainer callback that streams metrics to a stage's run
* ``slots``    ``cpu_slot``: heavy local work one (or N) at a time, a lock on this machine
* ``scaling``  the scaling sweep's points, the fitted law and the design it drives
* ``refs``     the records the steps pass: ``Context``, ``CurateRef``, a ``StageRef``
               per stage (``TrainRef``, ``ExportRef``, ``EvalRef``, ``ProfileRef``, ``DenseRef``)
"""

from .cache import STAGE_CODE, artifact_key, artifact_store, load_cached, materialize, stage_folder, stage_key
from .refs import (
    Context,
    CurateRef,
    DenseRef,
    EvalRef,
    ExportRef,
    ProfileRef,
    ScalingPointRef,
    ScalingRef,
    StageRef,
    TrainRef,
)
from .scaling import SweepPlan, latest_records, scaling_fit, scaling_plan, scaling_points, with_design
from .slots import cpu_slot, slot_folder
from .stages import (
    curate,
    dense_baseline_stage,
    device_profile_stage,
    ensure_data,
    eval_stage,
    export_stage,
    export_summary,
    finish,
    start,
    train_stage,
    with_data_version,
)
from .tracking import MlflowSink, flatten_numbers

__all__ = [
    "STAGE_CODE",
    "Context",
    "CurateRef",
    "DenseRef",
    "EvalRef",
    "ExportRef",
    "MlflowSink",
    "ProfileRef",
    "ScalingPointRef",
    "ScalingRef",
    "StageRef",
    "SweepPlan",
    "TrainRef",
    "artifact_key",
    "artifact_store",
    "cpu_slot",
    "curate",
    "dense_baseline_stage",
    "device_profile_stage",
    "ensure_data",
    "eval_stage",
    "export_stage",
    "export_summary",
    "finish",
    "flatten_numbers",
    "latest_records",
    "load_cached",
    "materialize",
    "scaling_fit",
    "scaling_plan",
    "scaling_points",
    "slot_folder",
    "stage_folder",
    "stage_key",
    "start",
    "train_stage",
    "with_data_version",
    "with_design",
]
