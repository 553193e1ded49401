"""Running a sweep on Ray Tune: one trial per axis point, resume and restore, local or URI storage.

Every grid point (or sample of a search space) of a plan is one Tune trial that
runs one experiment through the same loop as `autoal run`; this is the only
module of the sweep that imports Tune, and it builds the Tune objects (search
spaces, scheduler, placement) from the plain plan.

The experiment does not run in the trial function itself (written when fits in
the driver ran in Ray Train's local mode, which Ray 2.60 refuses inside a Tune
function trial): the trial function starts it as a streaming-generator task in
the trial's placement group and turns each round it yields into a
`tune.report`.

Where trial results live: with a local storage path, each trial's experiment
directory is `<out>/trials/<trial>` and resumes in place. With a storage URI
(s3://, gs://, file://) the experiment runs in a scratch directory on the
trial's node, every round is reported with a Tune checkpoint of that
directory (so it lives in the storage), a restarted trial resumes from it,
and the driver copies the final checkpoints to `<out>/trials` at the end.

Resuming never unpickles: Tune keeps its state as pickles (tuner.pkl, the
experiment state, searcher state) in a directory others may write, and
`Tuner.restore` would run whatever a planted one holds. A re-run instead builds
a new Tuner from the plan autoal saved (YAML) over the same grid, drawn with a
fixed random state so sampled points and trial names repeat; each trial resumes
from its own experiment directory (autoal's files), so a finished trial ends at
once and an interrupted one continues at its last round.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import ray
import yaml
from ray import tune
from ray.tune.schedulers import create_scheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from autoal import config
from autoal.compute import runtime
from autoal.runs import metrics
from autoal.errors import AutoALError
from autoal.runs.lock import DirLock
from autoal.report import sweep_report
from autoal.safe_io import atomic_write, own_dir, private_dir
from autoal.sweep.plan import (EXECUTION_KEYS, NAME_CHARS, SCHEDULERS, SPACES, PLAN_FILE, SweepPlan, load_plan,
                               read_plan, show, trial_count)


# --- the plan as Tune objects -------------------------------------------------

def param_space(plan: SweepPlan) -> dict:
    """A list axis is a grid; a search space is Tune's function of its name."""
    return {key: tune.grid_search(value) if isinstance(value, list)
            else getattr(tune, value["tune"])(*(value[arg] for arg in SPACES[value["tune"]].args))
            for key, value in plan.axes.items()}


def tune_config(plan: SweepPlan) -> tune.TuneConfig:
    scheduler, metric = None, None
    if plan.scheduler:
        options = dict(plan.scheduler)
        kind, metric = options.pop("type"), options.pop("metric")
        scheduler = create_scheduler(SCHEDULERS[kind].tune_name, time_attr="training_iteration",
                                     max_t=plan.max_reports(), **options)
    return tune.TuneConfig(metric=metric, mode="max" if metric else None, scheduler=scheduler,
                           search_alg=BasicVariantGenerator(random_state=0),   # a re-run draws the same points
                           num_samples=plan.num_samples, max_concurrent_trials=plan.max_concurrent_trials,
                           trial_name_creator=trial_label, trial_dirname_creator=trial_label, reuse_actors=True)


def placement(plan: SweepPlan) -> tune.PlacementGroupFactory:
    """An empty bundle for the trial function (it only relays rounds) and one for the experiment task."""
    return tune.PlacementGroupFactory([{}, plan.task_resources()], strategy="STRICT_PACK")


# --- trials ------------------------------------------------------------------

def trial_name(params: dict, trial_id: str) -> str:
    """`<trial index>-<axis=value,...>`: unique, stable across restores, readable in a listing."""
    shown = ",".join(f"{k}={show(v)}" for k, v in params.items())
    return f"{trial_id.rsplit('_', 1)[-1]}-{NAME_CHARS.sub('_', shown)[:120]}"


def trial_label(trial) -> str:
    """Tune's trial name and directory name (picklable: Tune saves it with the experiment)."""
    return trial_name(trial.config, trial.trial_id)


def scratch_dir(experiment_path: str) -> Path:
    """Where trials of a sweep with remote storage keep their experiment on the node (one per storage,
    so that sweeps of the same name do not share it)."""
    digest = hashlib.sha1(experiment_path.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"autoal-sweeps-{os.getuid()}" / f"{Path(experiment_path).name}-{digest}"


def _trainable(plan: SweepPlan, trials_dir: Path, remote: bool):
    def sweep_trial(params: dict) -> None:
        run_trial(plan, params, str(trials_dir), remote)
    return tune.with_resources(sweep_trial, placement(plan))


def run_trial(plan: SweepPlan, params: dict, trials_dir: str, remote: bool) -> None:
    """One Tune trial: run its experiment in a task and report each round (with a checkpoint of the
    experiment directory when the results must travel through remote storage)."""
    runtime.quiet()
    name = trial_name(params, tune.get_context().get_trial_id())
    cfg = plan.trial_config(params)
    exp_dir = Path(trials_dir) / name
    task = experiment_rounds.options(
        num_cpus=plan.resources["cpu"], num_gpus=plan.resources["gpu"],
        scheduling_strategy=PlacementGroupSchedulingStrategy(ray.util.get_current_placement_group(),
                                                             placement_group_capture_child_tasks=False))
    rounds = task.remote(cfg.to_dict(), params, str(exp_dir), name, tune.get_checkpoint() if remote else None,
                         remote)
    curves: dict[tuple, list] = defaultdict(list)
    try:
        for ref in rounds:
            row, snapshot, new = ray.get(ref)
            curve = curves[row["strategy"], row["seed"]]
            curve.append((row["n_labeled"], row["accuracy"]))
            if not new:   # Tune has it from before the checkpoint this trial was restored from
                continue
            report = {key: row[key] for key in ("strategy", "seed", "round", "n_labeled", "accuracy")}
            report["aubc"] = metrics.aubc(*zip(*curve))
            if snapshot:
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(snapshot))
                shutil.rmtree(snapshot)
            else:
                tune.report(report)
    except BaseException:  # stopped by the scheduler (SystemExit inside report) or failed: end the experiment too
        ray.cancel(rounds, force=True)
        raise


@ray.remote(max_retries=0, num_returns="streaming")
def experiment_rounds(cfg: dict, params: dict, exp_dir: str, name: str, checkpoint, snapshots: bool):
    """Run one experiment, yielding (results row, snapshot dir or None, report it) per round.

    Rounds already in the directory come first: a trial restarted without a Tune
    checkpoint begins at Tune iteration 0 and reports them again; one restored from
    a checkpoint continues its iteration count and only counts them into its AUBC.
    """
    from autoal.engine.experiment import Experiment

    root = Path(exp_dir)
    if snapshots:   # the scratch space lies in /tmp, where others may plant files
        private_dir(root.parent.parent)
        _drop_snapshots(root)
    own_dir(root.parent.parent, root.parent.name, root.name)   # a link planted here would take the writes away
    if checkpoint is not None:
        shutil.rmtree(root, ignore_errors=True)
        checkpoint.to_directory(str(root))
    done = object()
    rows: queue.Queue = queue.Queue()

    def on_round(row: dict) -> None:
        rows.put((row, _snapshot(root, row) if snapshots else None, True))

    experiment = Experiment.prepare(config.from_dict(cfg), root, log=lambda line: print(f"[{name}] {line}"),
                                    on_round=on_round)
    atomic_write(root / "params.json", json.dumps(params).encode())
    for row in experiment.store.results.to_dict("records"):
        yield row, None, checkpoint is None

    def work() -> None:
        try:
            experiment.run()
            rows.put(done)
        except BaseException as exc:  # handed to the generator, which re-raises it in the task
            rows.put(exc)

    threading.Thread(target=work, daemon=True).start()
    while (item := rows.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    if snapshots:  # the storage holds it now; scratch space on the node is not kept
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):  # the sweep's scratch folder, once its last trial is done
            root.parent.rmdir()


def _drop_snapshots(root: Path) -> None:
    """Remove snapshots a killed attempt left behind (a finished attempt's trial function removes its own)."""
    for stale in root.parent.glob(f".{root.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def _snapshot(root: Path, row: dict) -> str:
    """A consistent copy of the experiment directory, taken between rounds (the run waits for it)."""
    target = root.parent / f".{root.name}.{row['strategy']}-s{row['seed']}-r{row['round']}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root, target)
    return str(target)


# --- the sweep ---------------------------------------------------------------

def run_sweep(plan_path: str, out: str | None = None, storage: str | None = None, log=print) -> Path:
    """Run (or resume) the sweep of `plan_path`; returns its output directory.

    Raises AutoALError for a bad plan, an `out` holding another sweep, or failed
    trials (after writing the results of the others); KeyboardInterrupt when
    interrupted (Tune has saved its state: the same command resumes).
    """
    plan = load_plan(plan_path)
    root = Path(out or Path("runs") / plan.name).resolve()
    _claim(root, plan)
    with DirLock(root):  # one driver per sweep; each trial locks its own experiment directory
        return _run_claimed(plan, root, storage, log)


def _run_claimed(plan: SweepPlan, root: Path, storage: str | None, log) -> Path:
    remote = storage is not None and "://" in storage
    storage_path = storage.rstrip("/") if remote else str(Path(storage or root / "tune").resolve())
    runtime.init_ray()
    # Checkpointing every round forces Tune state snapshots, which Tune warns about each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    experiment_path = f"{storage_path}/{plan.name}"
    trainable = _trainable(plan, scratch_dir(experiment_path) if remote else root / "trials", remote)
    resuming = (root / "trials").is_dir() and any((root / "trials").iterdir())
    log(f"sweep {plan.name}: {'resuming ' if resuming else ''}{trial_count(plan)} trials -> {root}")
    tuner = tune.Tuner(trainable, param_space=param_space(plan), tune_config=tune_config(plan),
                       run_config=tune.RunConfig(name=plan.name, storage_path=storage_path, verbose=0,
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    grid = tuner.fit()
    if remote:
        _fetch(grid, root / "trials")
    log(sweep_report(root, root))
    failed = [r for r in grid if r.error]
    if failed:
        first = failed[0]
        raise AutoALError(f"{len(failed)} of {len(grid)} trials failed; first {Path(first.path).name}: "
                          f"{_root_cause(first.error)}. Results of the others are in {root}; "
                          f"re-run the same command to retry the failed trials once their cause is fixed")
    # After Ctrl-C Tune returns normally, with trials neither terminated nor errored, or fewer
    # trials than the grid (later ones not created).
    if grid.num_terminated + grid.num_errors < trial_count(plan):
        raise KeyboardInterrupt(f"sweep {plan.name} interrupted; re-run the same command to resume")
    return root


def _claim(root: Path, plan: SweepPlan) -> None:
    """Write the plan into `root`, or check that `root` holds this same sweep."""
    path = root / PLAN_FILE
    if path.exists():
        saved = read_plan(root).to_dict()
        diff = sorted(k for k, v in plan.to_dict().items() if k not in EXECUTION_KEYS and saved[k] != v)
        if diff:
            raise AutoALError(f"{root} holds a different sweep (differs in {', '.join(diff)}); "
                              f"choose another --out or restore its plan")
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise AutoALError(f"output {root} is not empty and holds no autoal sweep")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(plan.to_dict(), sort_keys=False).encode())


def _fetch(grid, trials: Path) -> None:
    """Copy each trial's latest checkpoint (its experiment directory) from the storage into `trials`."""
    for result in grid:
        if result.checkpoint is not None:
            target = trials / Path(result.path).name
            shutil.rmtree(target, ignore_errors=True)
            result.checkpoint.to_directory(str(target))


def _root_cause(error: BaseException) -> str:
    """The innermost error under Ray's task and actor wrappers, in one line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    text = (str(error).strip().splitlines() or [""])[-1]
    return text if isinstance(error, AutoALError) else f"{type(error).__name__}: {text}"
