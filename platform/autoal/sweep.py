"""Sweeps: many experiments as one Ray Tune run, resumable, with one results table.

A spec (YAML) names a base experiment config and axes over its fields; every
grid point (or sample of a search space) is one Tune trial that runs one
experiment through the same loop as `autoal run`. README "Sweeps and
ablations" describes the format.

The experiment does not run in the trial function itself: Ray Train's local
mode (workers=0) calls `ray.train.get_context()`, which Ray 2.60 refuses
inside a Tune function trial. The trial function starts the experiment as a
streaming-generator task in the trial's placement group and turns each round
it yields into a `tune.report`.

Where trial results live: with a local storage path, each trial's experiment
directory is `<out>/trials/<trial>` and resumes in place. With a storage URI
(s3://, gs://, file://) the experiment runs in a scratch directory on the
trial's node, every round is reported with a Tune checkpoint of that
directory (so it lives in the storage), a restarted trial resumes from it,
and the driver copies the final checkpoints to `<out>/trials` at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import re
import shutil
import tempfile
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, get_type_hints

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

from autoal import config, datasets, metrics, plots, runtime  # noqa: E402
from autoal.errors import AutoALError  # noqa: E402
from autoal.lock import DirLock  # noqa: E402
from autoal.store import ExperimentDir, atomic_write, parquet_bytes  # noqa: E402

# The paper's nested candidate pools (section 4.3): size n is the first n names.
PAPER_CANDIDATES = ("entropy", "margin", "least_confidence", "kmeans", "bald", "var_ratio", "mean_std")
SPEC_FILE = "sweep.yaml"
SPEC_KEYS = ("name", "base", "axes", "resources", "scheduler", "max_concurrent_trials", "num_samples")
# Keys that change how a sweep executes, not what it computes: they may differ on resume.
EXECUTION_KEYS = ("resources", "max_concurrent_trials")
# Nested Ray Train worker groups and Ray Data actor pools inside trials are slow on
# small machines and Ray Data aggregations hang in trial placement groups.
TRIAL_DEFAULTS = {"actors": 0, "workers": 0}
# Axes whose values are already columns of every results row.
ROW_AXES = ("strategy", "seed", "dataset")
NAME_CHARS = re.compile(r"[^\w.=+,-]")


def nested_pool(size) -> list[str]:
    """`candidates_size: n`: the paper's nested pool of the first n candidates."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(PAPER_CANDIDATES):
        raise AutoALError(f"candidates_size must be an integer from 1 to {len(PAPER_CANDIDATES)}, got {size!r}")
    return list(PAPER_CANDIDATES[:size])


@dataclass(frozen=True)
class SpecialAxis:
    """An axis that sets a config field from a shorthand value."""

    field: str
    value: Callable[[Any], Any]


SPECIAL_AXES = {
    "strategy": SpecialAxis("strategies", lambda v: [v]),            # one strategy per trial
    "seed": SpecialAxis("seeds", lambda v: [v]),                     # one seed per trial
    "candidates_size": SpecialAxis("search.candidates", nested_pool),
}


@dataclass(frozen=True)
class Space:
    """A Tune search space an axis may use: `{tune: <name>, <args>}`."""

    args: tuple[str, ...]
    build: Callable[[dict], Any]
    examples: Callable[[dict], list]   # values that validation tries


SPACES = {
    "choice": Space(("values",), lambda a: tune.choice(a["values"]), lambda a: list(a["values"])),
    "uniform": Space(("low", "high"), lambda a: tune.uniform(a["low"], a["high"]), lambda a: [a["low"], a["high"]]),
    "loguniform": Space(("low", "high"), lambda a: tune.loguniform(a["low"], a["high"]),
                        lambda a: [a["low"], a["high"]]),
    "randint": Space(("low", "high"), lambda a: tune.randint(a["low"], a["high"]),
                     lambda a: [a["low"], a["high"] - 1]),
}


def _asha(args: dict, max_t: int) -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=args.get("grace_period", 2),
                         reduction_factor=args.get("reduction_factor", 2))


# scheduler type -> (accepted keys besides type and metric, builder(args, max reports per trial))
SCHEDULERS: dict[str, tuple[tuple[str, ...], Callable[[dict, int], Any]]] = {
    "asha": (("grace_period", "reduction_factor"), _asha),
}
# Metrics a scheduler may act on (every round reports both).
SCHEDULER_METRICS = {"aubc": "area under the accuracy curve of the rounds so far",
                     "accuracy": "test accuracy of the latest round"}


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec. `base` holds ExperimentConfig fields with the trial defaults applied."""

    name: str
    base: dict
    axes: dict
    resources: dict = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    scheduler: dict | None = None
    max_concurrent_trials: int | None = None
    num_samples: int = 1

    def trial_config(self, params: dict) -> config.ExperimentConfig:
        """The experiment one trial runs: the base with this trial's axis values."""
        overrides = _flatten(self.base)
        for key, value in params.items():
            if key in SPECIAL_AXES:
                key, value = SPECIAL_AXES[key].field, SPECIAL_AXES[key].value(value)
            overrides[key] = value
        return config.load(None, overrides)

    def param_space(self) -> dict:
        return {key: _domain(value) for key, value in self.axes.items()}

    def tune_config(self) -> tune.TuneConfig:
        scheduler, metric = None, None
        if self.scheduler:
            args = dict(self.scheduler)
            _, build = SCHEDULERS[args.pop("type")]
            metric = args.pop("metric", "aubc")
            scheduler = build(args, self.max_reports())
        return tune.TuneConfig(metric=metric, mode="max" if metric else None, scheduler=scheduler,
                               num_samples=self.num_samples, max_concurrent_trials=self.max_concurrent_trials,
                               trial_name_creator=trial_label, trial_dirname_creator=trial_label, reuse_actors=True)

    def placement(self) -> tune.PlacementGroupFactory:
        """An empty bundle for the trial function (it only relays rounds) and one for the experiment task."""
        return tune.PlacementGroupFactory([{}, self.task_resources()], strategy="STRICT_PACK")

    def task_resources(self) -> dict:
        return {"CPU": self.resources["cpu"], **({"GPU": self.resources["gpu"]} if self.resources["gpu"] else {})}

    def max_reports(self) -> int:
        """Rounds a trial reports at most (a scheduled trial is one run): ASHA's max_t."""
        rounds = [self.base.get("rounds", config.ExperimentConfig.rounds)]
        if isinstance(self.axes.get("rounds"), list):
            rounds += self.axes["rounds"]
        return int(max(rounds)) + 1

    def to_dict(self) -> dict:
        return asdict(self)


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested config sections as dotted override keys (`search.lam`)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _domain(value):
    if isinstance(value, list):
        return tune.grid_search(value)
    args = dict(value)
    return SPACES[args.pop("tune")].build(args)


# --- spec parsing and validation ---------------------------------------------

def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; every problem is an AutoALError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AutoALError(f"cannot read sweep spec {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AutoALError(f"sweep spec {path} is not valid YAML: {config.yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise AutoALError(f"sweep spec {path} must be a YAML mapping (name, base, axes, ...)")
    try:
        return from_dict({"name": path.stem, **data})
    except AutoALError as exc:
        raise AutoALError(f"sweep spec {path}: {exc}") from None


def from_dict(data: dict) -> SweepSpec:
    """A SweepSpec from plain data, checked against the config and the registries."""
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise AutoALError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"known: {', '.join(SPEC_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise AutoALError(f"name must be letters, digits, '.', '_' or '-', got {name!r}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise AutoALError("base must be a mapping of experiment config fields")
    spec = SweepSpec(name=name, base={**TRIAL_DEFAULTS, **base}, axes=_check_axes(data.get("axes")),
                     resources=_check_resources(data.get("resources") or {}),
                     scheduler=_check_scheduler(data.get("scheduler")),
                     max_concurrent_trials=_positive_int(data, "max_concurrent_trials", None),
                     num_samples=_positive_int(data, "num_samples", 1))
    _check_configs(spec)
    return spec


def _positive_int(data: dict, key: str, default):
    value = data.get(key, default)
    if value is not default and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise AutoALError(f"{key} must be a positive integer, got {value!r}")
    return value


def _check_axes(axes) -> dict:
    if not axes:
        raise AutoALError("axes is empty: a sweep needs at least one axis (use `autoal run` for one experiment)")
    if not isinstance(axes, dict):
        raise AutoALError("axes must map config fields to a list of values or a search space {tune: ...}")
    for key, value in axes.items():
        _check_axis_key(key)
        if isinstance(value, list):
            if not value:
                raise AutoALError(f"axis {key} has no values")
        elif isinstance(value, dict):
            _check_space(key, value)
        else:
            raise AutoALError(f"axis {key} must be a list of values or a search space "
                              f"{{tune: {'|'.join(SPACES)}, ...}}, got {value!r}")
    for special, target in SPECIAL_AXES.items():
        if special in axes and target.field in axes:
            raise AutoALError(f"axes {special} and {target.field} both set {target.field}; keep one")
    return dict(axes)


def _check_axis_key(key) -> None:
    """An axis is a special key or a (dotted) ExperimentConfig field."""
    if key in SPECIAL_AXES:
        return
    cls, parts = config.ExperimentConfig, str(key).split(".")
    for i, part in enumerate(parts):
        fields = {f.name for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(parts[:i]) or "the experiment config"
            special = "" if i else f"; special axes: {', '.join(SPECIAL_AXES)}"
            raise AutoALError(f"unknown axis {key}: {where} has no field {part!r} "
                              f"(fields: {', '.join(sorted(fields))}){special}")
        cls = get_type_hints(cls)[part]
        if i < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            raise AutoALError(f"unknown axis {key}: {'.'.join(parts[:i + 1])} has no fields")
    if dataclasses.is_dataclass(cls):
        raise AutoALError(f"axis {key} is a config section; sweep one of its fields ({key}.<field>)")


def _check_space(key: str, value: dict) -> None:
    kind = value.get("tune")
    if kind not in SPACES:
        raise AutoALError(f"axis {key}: unknown search space {kind!r}; known: {', '.join(SPACES)}")
    args = set(value) - {"tune"}
    if args != set(SPACES[kind].args):
        raise AutoALError(f"axis {key}: search space {kind} takes {', '.join(SPACES[kind].args)}, "
                          f"got {', '.join(sorted(args)) or 'nothing'}")
    if kind == "choice" and (not isinstance(value["values"], list) or not value["values"]):
        raise AutoALError(f"axis {key}: choice needs a non-empty list of values")


def _check_resources(resources) -> dict:
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise AutoALError(f"resources takes cpu and gpu (per trial), got {resources!r}")
    out = {"cpu": resources.get("cpu", 1.0), "gpu": resources.get("gpu", 0.0)}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise AutoALError(f"resources.{key} must be a number >= 0, got {value!r}")
    if out["cpu"] <= 0:
        raise AutoALError("resources.cpu must be > 0: the experiment task needs a CPU share")
    return {k: float(v) for k, v in out.items()}


def _check_scheduler(scheduler) -> dict | None:
    if scheduler is None:
        return None
    if not isinstance(scheduler, dict) or scheduler.get("type") not in SCHEDULERS:
        raise AutoALError(f"scheduler must be a mapping with type one of {', '.join(SCHEDULERS)}, "
                          f"got {scheduler!r}")
    accepted, _ = SCHEDULERS[scheduler["type"]]
    unknown = sorted(set(scheduler) - {"type", "metric", *accepted})
    if unknown:
        raise AutoALError(f"scheduler {scheduler['type']} has no option {', '.join(unknown)}; "
                          f"known: metric, {', '.join(accepted)}")
    if scheduler.get("metric", "aubc") not in SCHEDULER_METRICS:
        raise AutoALError("scheduler metric must be " + " or ".join(f"{k} ({v})" for k, v in SCHEDULER_METRICS.items()))
    for key in accepted:
        _positive_int(scheduler, key, None)
    return dict(scheduler)


def _check_configs(spec: SweepSpec) -> None:
    """Build the config of every axis value (search spaces: their bounds) on the base, so that a bad
    field, value, strategy or dataset fails now and not in trial 57."""
    from autoal.experiment import hook

    sources = {name for name, _ in datasets.sources()}
    configs = [spec.trial_config({})]
    for key, value in spec.axes.items():
        values = value if isinstance(value, list) else SPACES[value["tune"]].examples(value)
        for v in values:
            try:
                configs.append(spec.trial_config({key: v}))
            except AutoALError as exc:
                raise AutoALError(f"axis {key} value {v!r}: {exc}") from None
    for cfg in configs:
        for name in cfg.strategies:
            hook(name, cfg)
        if cfg.dataset.partition(":")[0].strip().lower() not in sources:
            raise AutoALError(f"unknown dataset {cfg.dataset!r}; sources: {', '.join(sorted(sources))}")
        if cfg.gpus > 0 and cfg.workers == 0 and spec.resources["gpu"] == 0:
            raise AutoALError("the experiment uses gpus in the trial process (workers: 0) but resources.gpu is 0")
    if spec.scheduler:
        for special, target in (("strategy", "strategies"), ("seed", "seeds")):
            if special not in spec.axes and any(len(getattr(c, target)) > 1 for c in configs):
                raise AutoALError(f"a scheduler compares trials round by round, so each trial must be one run: "
                                  f"make {special} an axis or give base one {special}")


# --- trials ------------------------------------------------------------------

def trial_name(params: dict, trial_id: str) -> str:
    """`<trial index>-<axis=value,...>`: unique, stable across restores, readable in a listing."""
    shown = ",".join(f"{k}={_show(v)}" for k, v in params.items())
    return f"{trial_id.rsplit('_', 1)[-1]}-{NAME_CHARS.sub('_', shown)[:120]}"


def trial_label(trial) -> str:
    """Tune's trial name and directory name (picklable: Tune saves it with the experiment)."""
    return trial_name(trial.config, trial.trial_id)


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scratch_dir(experiment_path: str) -> Path:
    """Where trials of a sweep with remote storage keep their experiment on the node (one per storage,
    so that sweeps of the same name do not share it)."""
    digest = hashlib.sha1(experiment_path.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / "autoal-sweeps" / f"{Path(experiment_path).name}-{digest}"


def _trainable(spec: SweepSpec, trials_dir: Path, remote: bool):
    def sweep_trial(params: dict) -> None:
        run_trial(spec, params, str(trials_dir), remote)
    return tune.with_resources(sweep_trial, spec.placement())


def run_trial(spec: SweepSpec, params: dict, trials_dir: str, remote: bool) -> None:
    """One Tune trial: run its experiment in a task and report each round (with a checkpoint of the
    experiment directory when the results must travel through remote storage)."""
    runtime.quiet()
    name = trial_name(params, tune.get_context().get_trial_id())
    cfg = spec.trial_config(params)
    exp_dir = Path(trials_dir) / name
    task = experiment_rounds.options(
        num_cpus=spec.resources["cpu"], num_gpus=spec.resources["gpu"],
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
    from autoal.experiment import Experiment

    root = Path(exp_dir)
    _drop_snapshots(root)
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

def run_sweep(spec_path: str, out: str | None = None, storage: str | None = None, log=print) -> Path:
    """Run (or resume) the sweep of `spec_path`; returns its output directory.

    Raises AutoALError for a bad spec, an `out` holding another sweep, or failed
    trials (after writing the results of the others); KeyboardInterrupt when
    interrupted (Tune has saved its state: the same command resumes).
    """
    spec = load_spec(spec_path)
    root = Path(out or Path("runs") / spec.name).resolve()
    _claim(root, spec)
    with DirLock(root):  # one driver per sweep; each trial locks its own experiment directory
        return _run_claimed(spec, root, storage, log)


def _run_claimed(spec: SweepSpec, root: Path, storage: str | None, log) -> Path:
    remote = storage is not None and "://" in storage
    storage_path = storage.rstrip("/") if remote else str(Path(storage or root / "tune").resolve())
    runtime.init_ray()
    # Checkpointing every round forces Tune state snapshots, which Tune warns about each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    experiment_path = f"{storage_path}/{spec.name}"
    trainable = _trainable(spec, scratch_dir(experiment_path) if remote else root / "trials", remote)
    if tune.Tuner.can_restore(experiment_path):
        log(f"sweep {spec.name}: resuming from {experiment_path}")
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        log(f"sweep {spec.name}: {trial_count(spec)} trials -> {root}")
        tuner = tune.Tuner(trainable, param_space=spec.param_space(), tune_config=spec.tune_config(),
                           run_config=tune.RunConfig(name=spec.name, storage_path=storage_path, verbose=0,
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    grid = tuner.fit()
    if remote:
        _fetch(grid, root / "trials")
    log(finish(root))
    failed = [r for r in grid if r.error]
    if failed:
        first = failed[0]
        raise AutoALError(f"{len(failed)} of {len(grid)} trials failed; first {Path(first.path).name}: "
                          f"{_root_cause(first.error)}. Results of the others are in {root}; "
                          f"re-run the same command to retry the failed trials once their cause is fixed")
    # After Ctrl-C Tune returns normally; its saved state (what a resume reads) then lists trials
    # that are neither terminated nor errored, or fewer trials than the grid (later ones not created).
    saved = tune.ExperimentAnalysis(experiment_path).trials
    if len(saved) < trial_count(spec) or any(t.status not in ("TERMINATED", "ERROR") for t in saved):
        raise KeyboardInterrupt(f"sweep {spec.name} interrupted; re-run the same command to resume")
    return root


def trial_count(spec: SweepSpec) -> int:
    count = spec.num_samples
    for value in spec.axes.values():
        count *= len(value) if isinstance(value, list) else 1
    return count


def _claim(root: Path, spec: SweepSpec) -> None:
    """Write the spec into `root`, or check that `root` holds this same sweep."""
    path = root / SPEC_FILE
    if path.exists():
        saved = read_spec(root).to_dict()
        diff = sorted(k for k, v in spec.to_dict().items() if k not in EXECUTION_KEYS and saved[k] != v)
        if diff:
            raise AutoALError(f"{root} holds a different sweep (differs in {', '.join(diff)}); "
                              f"choose another --out or restore its spec")
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise AutoALError(f"output {root} is not empty and holds no autoal sweep")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())


def read_spec(root: Path) -> SweepSpec:
    try:
        return from_dict(yaml.safe_load((root / SPEC_FILE).read_text()))
    except (AutoALError, yaml.YAMLError, TypeError) as exc:
        raise AutoALError(f"{root / SPEC_FILE} is not a valid sweep spec: {exc}") from None


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


# --- results -----------------------------------------------------------------

def finish(root: Path, out: Path | None = None) -> str:
    """Collect every trial of the sweep in `root`, write the table, summary and plots (into `out`,
    by default `root`); the summary as text."""
    out = root if out is None else out
    spec = read_spec(root)
    results, weights = collect(root, spec)
    if results.empty:
        return f"sweep {spec.name}: no finished rounds yet in {root / 'trials'}"
    by = config_columns(spec)
    table = summarize(results, by)
    atomic_write(out / "results.parquet", parquet_bytes(results))
    atomic_write(out / "results.csv", results.to_csv(index=False).encode())
    atomic_write(out / "summary.csv", table.to_csv(index=False).encode())
    written = [out / "results.parquet", out / "results.csv", out / "summary.csv"]
    labelled = results.assign(strategy=_labels(results, by))
    for dataset, rows in labelled.groupby("dataset"):
        written.append(plots.curves(rows, out / f"curves_{_file_name(dataset)}.png", title=dataset))
    if "candidates_size" in spec.axes:
        written.append(candidates_size_plot(results, by, out / "candidates_size.png"))
    if not weights.empty:
        atomic_write(out / "strategy_weights.parquet", parquet_bytes(weights))
        written.append(out / "strategy_weights.parquet")
        heatmaps = out / "strategy_weights"
        heatmaps.mkdir(exist_ok=True)
        for (dataset, label), rows in weights.groupby(["dataset", _labels(weights, by)]):
            plots.strategy_weights(rows, heatmaps / f"{_file_name(f'{dataset}-{label}')}.png",
                                   title=f"{dataset}: {label}")
        written.append(heatmaps)
    return (f"sweep {spec.name}: {results['trial'].nunique()} trials, {len(results)} rounds\n\n"
            f"{format_summary(table, by)}\n\nwritten: {', '.join(p.name for p in written)} in {out}")


def collect(root: Path, spec: SweepSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All rounds of all trials (and their strategy-weight telemetry), with the axis values as columns
    and `complete` marking runs that reached their last round (not stopped early)."""
    frames, weights = [], []
    for params_path in sorted((root / "trials").glob("*/params.json")):
        trial = params_path.parent
        if not (trial / "results.parquet").exists():
            continue
        params = json.loads(params_path.read_text())
        columns = {"trial": trial.name, **{k: _column(v) for k, v in params.items() if k not in ROW_AXES}}
        rows = pd.read_parquet(trial / "results.parquet")
        last = rows.groupby(["strategy", "seed"])["round"].transform("max")
        frames.append(rows.assign(**columns, complete=last >= ExperimentDir(trial).saved_config().rounds))
        if (trial / "strategy_weights.parquet").exists():
            weights.append(pd.read_parquet(trial / "strategy_weights.parquet").assign(
                dataset=rows["dataset"].iloc[0], **columns))
    results = _concat(frames)
    if not results.empty:
        first = ["trial", *[c for c in results.columns if c in spec.axes and c not in ROW_AXES]]
        results = results[first + [c for c in results.columns if c not in first]]
    return results, _concat(weights)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _file_name(text) -> str:
    return NAME_CHARS.sub("_", str(text).replace(", ", ","))


def _column(value):
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def config_columns(spec: SweepSpec) -> list[str]:
    """What identifies a configuration: dataset, strategy and every other axis except seeds."""
    return ["dataset", "strategy", *[k for k in spec.axes if k not in (*ROW_AXES, "seeds", "strategies")]]


def summarize(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per configuration: mean/std AUBC and F-acc over seeds, runs not (yet) complete, and the AUBC
    difference to the best configuration of the same dataset paired by seed (mean, std)."""
    table = metrics.summary(results, by=tuple(by))
    runs = metrics.per_run(results, keys=(*by, "seed"))
    complete = results.groupby([*by, "seed"])["complete"].all().rename("complete").reset_index()
    runs = runs.merge(complete, on=[*by, "seed"])
    incomplete = runs.groupby(by)["complete"].apply(lambda c: int((~c).sum())).rename("incomplete")
    table = table.merge(incomplete.reset_index(), on=by)
    deltas = []
    for dataset, configs in table.groupby("dataset", sort=False):
        best = runs.merge(configs.iloc[[0]][by], on=by).set_index("seed")["aubc"]
        for row in configs[by].itertuples(index=False):
            mine = runs.merge(pd.DataFrame([row], columns=by), on=by).set_index("seed")["aubc"]
            diff = (mine - best).dropna()
            deltas.append({**dict(zip(by, row)), "aubc_vs_best": diff.mean() if len(diff) else float("nan"),
                           "aubc_vs_best_std": diff.std() if len(diff) > 1 else 0.0})
    table = table.merge(pd.DataFrame(deltas), on=by)
    return table.sort_values(["dataset", "aubc_mean"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _labels(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    """A configuration's name in plots: its strategy and other axis values."""
    other = [c for c in by if c not in ("dataset", "strategy")]
    return frame[["strategy", *other]].apply(
        lambda r: ", ".join([str(r["strategy"]), *(f"{c}={_show(r[c])}" for c in other)]), axis=1)


def format_summary(table: pd.DataFrame, by: list[str]) -> str:
    labels = _labels(table, by).tolist()
    width = max(24, *map(len, labels))
    lines = [f"{'dataset':<14} {'configuration':<{width}} {'AUBC':>16} {'F-acc':>16} {'vs best':>16} "
             f"{'seeds':>5} {'incomplete':>10}"]
    for label, row in zip(labels, table.itertuples()):
        lines.append(f"{str(row.dataset):<14} {label:<{width}} {row.aubc_mean:>8.4f} ± {row.aubc_std:<5.4f} "
                     f"{row.f_acc_mean:>8.4f} ± {row.f_acc_std:<5.4f} {row.aubc_vs_best:>+8.4f} ± "
                     f"{row.aubc_vs_best_std:<5.4f} {row.seeds:>5} {row.incomplete:>10}")
    return "\n".join(lines)


def candidates_size_plot(results: pd.DataFrame, by: list[str], path: Path) -> Path:
    """AUBC (mean ± std over seeds) vs candidate pool size, one line per dataset and other configuration."""
    table = metrics.summary(results, by=tuple(by))
    other = [c for c in by if c not in ("dataset", "candidates_size")]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, rows in table.groupby(["dataset", *other]):
        rows = rows.sort_values("candidates_size")
        ax.errorbar(rows["candidates_size"], rows["aubc_mean"], yerr=rows["aubc_std"], marker="o", capsize=3,
                    label=", ".join(map(_show, key)))
    ax.set_xlabel("candidate pool size")
    ax.set_ylabel("AUBC")
    ax.set_xticks(sorted(table["candidates_size"].unique()))
    ax.set_title("AUBC vs candidate pool size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)


