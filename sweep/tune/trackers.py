"""``sweep run --log mlflow,wandb,tensorboard``: every trial, task by task, in the experiment trackers
researchers already use, through Ray Tune's own logger callbacks; off by default.

Each tracker writes inside the study folder, in ``<study>/trackers/<tracker>/``, which ``study.json``
records before the sweep writes it (so ``sweep clean`` removes it, and nothing else):

- ``mlflow``: an MLflow tracking store, ``sqlite:///<study>/trackers/mlflow/mlflow.db`` (MLflow 3 refuses
  its old ``file:`` store by default), one experiment named as the study, one run per trial;
- ``wandb``: W&B runs in ``<study>/trackers/wandb/wandb/``, offline unless ``$WANDB_MODE`` says otherwise
  (an API key alone uploads nothing; ``wandb sync`` uploads a run later); W&B's cache, config and
  data folders are moved inside too;
- ``tensorboard``: a tensorboardX event file per trial in ``<study>/trackers/tensorboard/<trial id>/``.

Every run carries the trial's id of ``trials.parquet`` (TensorBoard's folder, W&B's run id, MLflow's
``trial_id`` tag; MLflow's params: the trial's searched hyperparameters); after each task it gets both
objectives (``stability``, ``plasticity``) and every metric's mean and std over the seeds on validation
and test (``val_*_mean``, ``test_*_std``, ...), at the step ``tasks_done``; the final report adds the
Fisher scale and the duration. The trackers see what the Parquet files hold, never instead of them: a
trial that diverged logs nothing after its last completed task (its objectives are not metrics).

Ray is imported inside the functions only, as everywhere in this stage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sweep.errors import ConfigError, SweepError, did_you_mean
from sweep.results.schema import METRICS, SPLITS, metric_column
from sweep.results.store import TRACKERS_FOLDER

TRACKERS = ("mlflow", "wandb", "tensorboard")
# the module each tracker imports, and the package that provides it (the extras of pyproject.toml)
MODULES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}
PACKAGES = {"mlflow": "mlflow-skinny", "wandb": "wandb", "tensorboard": "tensorboardX"}
# W&B modes that upload nothing; any other $WANDB_MODE is the user's choice to reach a W&B server
WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")
# W&B's own folders besides the run's (its service logs land in the cache): all inside the study's
WANDB_FOLDERS = {"WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config", "WANDB_DATA_DIR": "data",
                 "WANDB_ARTIFACT_DIR": "artifacts"}
# what each report logs besides the metric columns: both objectives and the searcher's one number
LOGGED = ("stability", "plasticity", "objective", "tasks_done", "fisher_mean", "fisher_trace", "duration_s")
LOGGED_METRICS = tuple(metric_column(s, m, st) for s in SPLITS for m in METRICS for st in ("mean", "std"))


def trackers(log: object) -> tuple[str, ...]:
    """``--log``'s trackers, each once, in order; a one-line ConfigError for a name that is not one of
    :data:`TRACKERS`, a tracker whose package is not installed, or W&B set to upload without a key; checked
    before anything is written or Ray starts, importing nothing (but W&B, to find its key, when it uploads)."""
    names = log.split(",") if isinstance(log, str) else log
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"--log must name trackers ({', '.join(TRACKERS)}), got {log!r}")
    chosen = tuple(dict.fromkeys(name.strip() for name in names))
    for name in chosen:
        if name not in TRACKERS:
            raise ConfigError(f"--log {name!r} is unknown; allowed: {', '.join(TRACKERS)}"
                              f"{did_you_mean(name, TRACKERS)}")
    for name in chosen:
        if not _installed(MODULES[name]):
            raise ConfigError(f"--log {name} needs the Python package {MODULES[name]}, which is not installed: "
                              f"pip install -e '.[{name}]' (or pip install {PACKAGES[name]})")
    if "wandb" in chosen:
        _check_wandb_login()
    return chosen


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that is not a package; a module set to None in sys.modules
        return False


def wandb_mode() -> str:
    """The W&B mode of a sweep: ``$WANDB_MODE`` when set, else offline."""
    return os.environ.get("WANDB_MODE") or "offline"


def _check_wandb_login() -> None:
    """A W&B mode that uploads needs a key; without one W&B would fail once the sweep has started."""
    if wandb_mode() in WANDB_LOCAL_MODES or os.environ.get("WANDB_API_KEY"):
        return
    import wandb

    try:
        wandb.ensure_configured()
        logged_in = bool(wandb.api.api_key)
    except AttributeError:  # a W&B without this API: Ray's callback asks again when it starts
        return
    if not logged_in:
        raise ConfigError(f"--log wandb with WANDB_MODE={wandb_mode()} needs a W&B API key: run `wandb login` or "
                          "set WANDB_API_KEY; or unset WANDB_MODE to log offline, in the study folder")


def tracker_folder(study_dir: Path, name: str) -> Path:
    return study_dir / TRACKERS_FOLDER / name


def prepare_folders(study_dir: Path, names: tuple[str, ...]) -> None:
    """Create ``<study>/trackers/<name>/`` for each tracker; a link or a file in their place is refused (a
    tracker would write through it). The study's record names ``trackers`` already."""
    for path in (study_dir / TRACKERS_FOLDER, *(tracker_folder(study_dir, name) for name in names)):
        try:
            path.mkdir()
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise SweepError(f"{path} is not a folder (a link or a file); refusing to log a tracker through "
                                 "it: remove it") from None


def logged(result: dict[str, Any]) -> dict[str, Any] | None:
    """What the trackers get of a trial's report at a task's end: both objectives and every metric column that
    is a number, at the step ``tasks_done`` (as Tune's ``training_iteration``, which Ray's callbacks take as
    the step); None for any other report: one at an epoch rung inside a task (``rung_epoch``), or one that
    holds no measured metrics (a diverged or a pruned trial's last)."""
    if (result.get("status") not in ("running", "finished") or result.get("rung_epoch")
            or not isinstance(result.get("tasks_done"), int)):
        return None
    values = {key: result[key] for key in (*LOGGED, *LOGGED_METRICS)
              if isinstance(result.get(key), (int, float)) and not isinstance(result.get(key), bool)}
    return {**values, "training_iteration": result["tasks_done"]}


def tracker_callbacks(names: tuple[str, ...], study_dir: Path, study: str) -> list[Any]:
    """Ray Tune's logger callbacks for ``names``, each writing in its folder of the study (one set per Tune run)."""
    build = {"mlflow": _mlflow, "wandb": _wandb, "tensorboard": _tensorboard}
    return [build[name](tracker_folder(study_dir, name), study) for name in names]


def _mlflow(folder: Path, study: str) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = f"sqlite:///{folder / 'mlflow.db'}"

    class Callback(MLflowLoggerCallback):
        def setup(self, *args: Any, **kwargs: Any) -> None:
            import logging

            import mlflow

            for name in ("mlflow", "alembic"):  # its database's creation is not the sweep's news
                logging.getLogger(name).setLevel(logging.WARNING)
            # the experiment made here first, with its artifacts inside the study (MLflow's default is ./mlruns)
            client = mlflow.MlflowClient(tracking_uri=uri)
            if client.get_experiment_by_name(study) is None:
                client.create_experiment(study, artifact_location=(folder / "artifacts").as_uri())
            with _environment(MLFLOW_EXPERIMENT_ID=None):  # the experiment is the study's, whatever the shell says
                super().setup(*args, **kwargs)

        def log_trial_start(self, trial: Any) -> None:
            self.tags = {"study": study, "trial_id": trial.trial_id, "role": trial.config.get("role", "search")}
            super().log_trial_start(trial)

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            values = logged(result)
            if values is not None:
                super().log_trial_result(iteration, trial, values)

    return Callback(tracking_uri=uri, experiment_name=study)


def _wandb(folder: Path, study: str) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class Actor(_WandbLoggingActor):  # Ray's, in a process of its own: W&B's folders moved into the study's
        def __init__(self, logdir: str, *args: Any, **kwargs: Any) -> None:
            for variable, name in WANDB_FOLDERS.items():
                os.environ[variable] = str(folder / name)
            os.environ.setdefault("WANDB_SILENT", "true")
            super().__init__(str(folder), *args, **kwargs)  # its working folder: the study's, not Tune's

        def run(self) -> None:
            try:
                super().run()
            finally:  # Ray kills the actor once the run ends: W&B's exit handlers would never run
                _wandb_teardown()

    mode = wandb_mode()

    class Callback(WandbLoggerCallback):
        _logger_actor_cls = Actor

        def setup(self, *args: Any, **kwargs: Any) -> None:
            with _environment(WANDB_MODE=mode):  # offline: Ray's callback asks for no API key
                super().setup(*args, **kwargs)

        def _cleanup_logging_actor(self, trial: Any) -> None:
            queue = self._trial_queues.get(trial)
            super()._cleanup_logging_actor(trial)
            actor: Any = queue.actor if queue is not None else None
            if actor is not None:
                # its actor imported W&B to read the results: ended as an actor ends (its exit handlers run, W&B's
                # temporary folders go), once, not killed with Ray at the sweep's end
                import ray

                done = actor.__ray_terminate__.options(max_task_retries=0).remote()
                if not ray.wait([done], timeout=5)[0]:
                    ray.kill(actor, no_restart=True)

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            values = logged(result)
            if values is not None:
                super().log_trial_result(iteration, trial, values)

    # a W&B project name holds none of / \ # ? % : (a study name may)
    return Callback(project=re.sub(r"[/\\#?%:]", "_", study), dir=str(folder), mode=mode)


def _wandb_teardown() -> None:
    """What W&B's exit handlers do, in a logging actor Ray is about to kill: stop W&B's service process (its
    socket folder goes with it) and remove the temporary folders W&B made in ``$TMPDIR`` when imported."""
    import wandb

    with contextlib.suppress(Exception):
        wandb.teardown()
    with contextlib.suppress(Exception):  # W&B's own names: gone in another version, then nothing to do
        from wandb.sdk.artifacts.artifact import Artifact
        from wandb.sdk.data_types._private import MEDIA_TMP

        for folder in (MEDIA_TMP, Artifact._TMP_DIR):
            folder.cleanup()


def _tensorboard(folder: Path, study: str) -> Any:
    from ray.tune.logger import TBXLoggerCallback

    class Callback(TBXLoggerCallback):
        def log_trial_start(self, trial: Any) -> None:  # Ray's, in the study's folder instead of Tune's trial folder
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            self._trial_writer[trial] = self._summary_writer_cls(str(folder / trial.trial_id), flush_secs=30)
            self._trial_result[trial] = {}

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            values = logged(result)
            if values is not None:
                super().log_trial_result(iteration, trial, values)

    return Callback()


@contextlib.contextmanager
def _environment(**variables: str | None) -> Iterator[None]:
    """Environment variables set (None: unset) inside the block, and put back after it."""
    before = {name: os.environ.get(name) for name in variables}
    try:
        _set_environment(variables)
        yield
    finally:
        _set_environment(before)


def _set_environment(variables: Mapping[str, str | None]) -> None:
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
