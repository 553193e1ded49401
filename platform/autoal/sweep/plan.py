"""The sweep plan: a validated frozen dataclass read from YAML, with no Ray Tune in it.

A plan names a base experiment config and axes over its fields (README
"Sweeps and ablations"). Validation builds the experiment config of every axis
value on the base, so a bad field, value, strategy or dataset fails before the
first trial starts. The runner alone turns a plan into Tune objects, so that
reading a sweep (`autoal report`) needs no Tune.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, get_origin, get_type_hints

import yaml

from autoal import config
from autoal.data import datasets
from autoal.data.sources import split_ref
from autoal.errors import AutoALError
from autoal.safe_io import CONFIG_BYTES, clip, load_yaml, one_line, read_text, shown
from autoal.strategies.autoal import CANDIDATES as PAPER_CANDIDATES  # nested pools: size n is the first n

PLAN_FILE = "sweep.yaml"
PLAN_KEYS = ("name", "base", "axes", "resources", "scheduler", "max_concurrent_trials", "num_samples")
# Keys that change how a sweep executes, not what it computes: they may differ on resume.
EXECUTION_KEYS = ("resources", "max_concurrent_trials")
# Nested Ray Train worker groups and Ray Data actor pools inside trials are slow on
# small machines and Ray Data aggregations hang in trial placement groups.
TRIAL_DEFAULTS = {"scoring_tasks": 0, "workers": 0}
NAME_CHARS = re.compile(r"[^\w.=+,-]")   # what a trial or file name may not hold


def nested_pool(size) -> list[str]:
    """`candidates_size: n`: the paper's nested pool of the first n candidates."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(PAPER_CANDIDATES):
        raise AutoALError(f"candidates_size must be an integer from 1 to {len(PAPER_CANDIDATES)}, got {shown(size)}")
    return list(PAPER_CANDIDATES[:size])


@dataclass(frozen=True)
class SpecialAxis:
    """An axis that sets config fields from a shorthand value."""

    fields: tuple[str, ...]
    value: Callable[[Any], Any]


SPECIAL_AXES = {
    "strategy": SpecialAxis(("strategies",), lambda v: [v]),            # one strategy per trial
    "seed": SpecialAxis(("seeds",), lambda v: [v]),                     # one seed per trial
    # AutoAL and its flat ablation vote over the same pool
    "candidates_size": SpecialAxis(("options.autoal.candidates", "options.vote.candidates"), nested_pool),
}


@dataclass(frozen=True)
class Space:
    """A search space an axis may use, `{tune: <name>, <args>}`: the runner calls Ray Tune's
    function of that name with the args in this order."""

    args: tuple[str, ...]
    probes: Callable[[dict], list]   # what validation tries: every choice, or a range's bounds


SPACES = {
    "choice": Space(("values",), lambda a: list(a["values"])),
    "uniform": Space(("low", "high"), lambda a: [a["low"], a["high"]]),
    "loguniform": Space(("low", "high"), lambda a: [a["low"], a["high"]]),
    "randint": Space(("low", "high"), lambda a: [a["low"], a["high"] - 1]),   # high is exclusive
}


@dataclass(frozen=True)
class Scheduler:
    """A trial scheduler a plan may name: `ray.tune.schedulers.create_scheduler`'s name for it, and the
    options a plan may set, with their defaults."""

    tune_name: str
    options: dict


SCHEDULERS = {"asha": Scheduler("async_hyperband", {"grace_period": 2, "reduction_factor": 2})}
# Metrics a scheduler may act on (every round reports both).
SCHEDULER_METRICS = {"aubc": "area under the accuracy curve of the rounds so far",
                     "accuracy": "test accuracy of the latest round"}


def axis_values(value) -> list:
    """The values an axis gives its trials; for a search space, every choice or its range's bounds."""
    return value if isinstance(value, list) else SPACES[value["tune"]].probes(value)


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep plan. `base` holds ExperimentConfig fields with the trial defaults applied;
    `scheduler` has its type, metric and every option filled in."""

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
                overrides.update(dict.fromkeys(SPECIAL_AXES[key].fields, SPECIAL_AXES[key].value(value)))
            else:
                overrides[key] = value
        return config.load(None, overrides)

    def task_resources(self) -> dict:
        """Ray resources of the task that runs a trial's experiment."""
        return {"CPU": self.resources["cpu"], **({"GPU": self.resources["gpu"]} if self.resources["gpu"] else {})}

    def max_reports(self) -> int:
        """Rounds a trial reports at most (a scheduled trial is one run, round 0 included): ASHA's max_t.
        A `rounds` axis decides it, also as a search space (its largest value); else the base."""
        if "rounds" in self.axes:
            return int(max(axis_values(self.axes["rounds"]))) + 1
        return int(self.base.get("rounds", config.ExperimentConfig.rounds)) + 1

    def to_dict(self) -> dict:
        return asdict(self)


def trial_count(plan: SweepPlan) -> int:
    """Trials the sweep runs: its grid points times num_samples (a search space adds no points)."""
    count = plan.num_samples
    for value in plan.axes.values():
        count *= len(value) if isinstance(value, list) else 1
    return count


def show(value) -> str:
    """An axis value as trial names and labels show it."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested config sections as dotted override keys (`search.lam`)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


# --- reading and validation --------------------------------------------------

def load_plan(path: str | Path) -> SweepPlan:
    """Read and validate a plan file; every problem is an AutoALError naming the file."""
    path = Path(path)
    text = read_text(path, CONFIG_BYTES, "sweep plan")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise AutoALError(f"sweep plan {path} is not valid YAML: {config.yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise AutoALError(f"sweep plan {path} must be a YAML mapping (name, base, axes, ...)")
    try:
        return from_dict({"name": path.stem, **data})
    except AutoALError as exc:
        raise AutoALError(f"sweep plan {path}: {exc}") from None


def read_plan(root: Path) -> SweepPlan:
    """The plan a sweep directory was started with."""
    try:
        return from_dict(load_yaml(read_text(root / PLAN_FILE, CONFIG_BYTES, "sweep plan", follow=False)))
    except (yaml.YAMLError, TypeError) as exc:
        raise AutoALError(f"{root / PLAN_FILE} is not a valid sweep plan: {one_line(exc)}") from None
    except AutoALError as exc:
        raise AutoALError(f"{root / PLAN_FILE} is not a valid sweep plan: {exc}") from None


def from_dict(data: dict) -> SweepPlan:
    """A SweepPlan from plain data, checked against the config and the registries."""
    unknown = sorted(map(str, set(data) - set(PLAN_KEYS)))
    if unknown:
        shown_keys = ", ".join(clip(str(k), 40) for k in unknown[:3])
        raise AutoALError(f"unknown key{'s' if len(unknown) > 1 else ''} {shown_keys}; "
                          f"known: {', '.join(PLAN_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,100}", name, re.ASCII):
        raise AutoALError(f"name must be 1 to 100 letters, digits, '.', '_' or '-', got {shown(name)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise AutoALError("base must be a mapping of experiment config fields")
    plan = SweepPlan(name=name, base={**TRIAL_DEFAULTS, **config.renamed(base)}, axes=_check_axes(data.get("axes")),
                     resources=_check_resources(data.get("resources") or {}),
                     scheduler=_check_scheduler(data.get("scheduler")),
                     max_concurrent_trials=_positive_int(data, "max_concurrent_trials", None),
                     num_samples=_positive_int(data, "num_samples", 1))
    _check_configs(plan)
    return plan


def _positive_int(data: dict, key: str, default):
    """`data[key]`, which must be a positive integer when given (absent or null: `default`)."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AutoALError(f"{key} must be a positive integer, got {shown(value)}")
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
                              f"{{tune: {'|'.join(SPACES)}, ...}}, got {shown(value)}")
    for special, target in SPECIAL_AXES.items():
        for field_ in target.fields:
            if special in axes and field_ in axes:
                raise AutoALError(f"axes {special} and {field_} both set {field_}; keep one")
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
            raise AutoALError(f"unknown axis {key}: {where} has no field {shown(part)} "
                              f"(fields: {', '.join(sorted(fields))}){special}")
        cls = get_type_hints(cls)[part]
        if get_origin(cls) is dict:
            return   # options.<strategy>.<option>: checked when the trial configs are built
        if i < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            raise AutoALError(f"unknown axis {key}: {'.'.join(parts[:i + 1])} has no fields")
    if dataclasses.is_dataclass(cls):
        raise AutoALError(f"axis {key} is a config section; sweep one of its fields ({key}.<field>)")


def _check_space(key: str, value: dict) -> None:
    kind = value.get("tune")
    if kind not in SPACES:
        raise AutoALError(f"axis {key}: unknown search space {shown(kind)}; known: {', '.join(SPACES)}")
    args = set(value) - {"tune"}
    if args != set(SPACES[kind].args):
        raise AutoALError(f"axis {key}: search space {kind} takes {', '.join(SPACES[kind].args)}, "
                          f"got {', '.join(sorted(args)) or 'nothing'}")
    if kind == "choice" and (not isinstance(value["values"], list) or not value["values"]):
        raise AutoALError(f"axis {key}: choice needs a non-empty list of values")


def _check_resources(resources) -> dict:
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise AutoALError(f"resources takes cpu and gpu (per trial), got {shown(resources)}")
    out = {"cpu": resources.get("cpu", 1.0), "gpu": resources.get("gpu", 0.0)}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise AutoALError(f"resources.{key} must be a number >= 0, got {shown(value)}")
    if out["cpu"] <= 0:
        raise AutoALError("resources.cpu must be > 0: the experiment task needs a CPU share")
    return {k: float(v) for k, v in out.items()}


def _check_scheduler(scheduler) -> dict | None:
    """The scheduler with its metric and every option's default filled in."""
    if scheduler is None:
        return None
    if not isinstance(scheduler, dict) or scheduler.get("type") not in SCHEDULERS:
        raise AutoALError(f"scheduler must be a mapping with type one of {', '.join(SCHEDULERS)}, "
                          f"got {shown(scheduler)}")
    defaults = SCHEDULERS[scheduler["type"]].options
    unknown = sorted(set(scheduler) - {"type", "metric", *defaults})
    if unknown:
        raise AutoALError(f"scheduler {scheduler['type']} has no option {', '.join(unknown)}; "
                          f"known: metric, {', '.join(defaults)}")
    metric = scheduler.get("metric", "aubc")
    if metric not in SCHEDULER_METRICS:
        raise AutoALError("scheduler metric must be " + " or ".join(f"{k} ({v})" for k, v in SCHEDULER_METRICS.items()))
    options = {key: _positive_int(scheduler, key, default) for key, default in defaults.items()}
    return {"type": scheduler["type"], "metric": metric, **options}


def _check_configs(plan: SweepPlan) -> None:
    """Build the config of every axis value (search spaces: every choice or their bounds) on the base,
    so that a bad field, value, strategy or dataset fails now and not in trial 57."""
    from autoal import hooks

    sources = {name for name, _ in datasets.sources()}
    configs = [plan.trial_config({})]
    for key, value in plan.axes.items():
        for v in axis_values(value):
            try:
                configs.append(plan.trial_config({key: v}))
            except AutoALError as exc:
                raise AutoALError(f"axis {key} value {shown(v)}: {exc}") from None
    for cfg in configs:
        for name in cfg.strategies:
            hooks.create(name, cfg)
        if split_ref(cfg.dataset)[0].lower() not in sources:
            raise AutoALError(f"unknown dataset {shown(cfg.dataset)}; sources: {', '.join(sorted(sources))}")
        if cfg.gpus > 0 and cfg.workers == 0 and plan.resources["gpu"] == 0:
            raise AutoALError("the experiment uses gpus in the trial process (workers: 0) but resources.gpu is 0")
    if plan.scheduler:
        for special, target in (("strategy", "strategies"), ("seed", "seeds")):
            if special not in plan.axes and any(len(getattr(c, target)) > 1 for c in configs):
                raise AutoALError(f"a scheduler compares trials round by round, so each trial must be one run: "
                                  f"make {special} an axis or give base one {special}")
