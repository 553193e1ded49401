"""Experiment configuration: a typed, frozen dataclass read from YAML and flags.

Flags win over the YAML file; unknown keys and ill-typed values are errors.
"""
from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from autoal.errors import AutoALError

AUTO = "auto"  # a value some fields take instead of a number: decided by the run (e.g. `actors`)


@dataclass(frozen=True)
class SearchConfig:
    """AutoAL's differentiable strategy search (DESIGN.md section 3)."""

    candidates: tuple[str, ...] = ("entropy", "margin", "least_confidence", "kmeans", "bald",
                                   "var_ratio", "mean_std")
    backbone: bool = True          # False: SearchNet is a head on the task model's frozen embeddings
    loss_module: bool = True       # the loss-prediction module and its ranking loss
    reward: str = "lookahead"      # "lookahead" (one unrolled step on held-out loss) or "loss" (FitNet's loss)
    rho: float = 0.25              # simulated query ratio: each candidate picks ceil(rho |L_val|) of L_val
    eta: float = 0.1               # lookahead step, in units of the held-out gradient's norm
    fitnet: str = "fresh"          # "fresh": one FitNet per cycle on half of L; "crossfit": one per half
    hard: bool = False             # select by the most trusted candidate's pick instead of the mixture mass
    cycles_first: int = 3          # search cycles in the first round
    cycles: int = 1                # search cycles in later rounds
    fit_epochs: int = 10           # FitNet epochs per cycle (fresh init)
    fit_steps: int = 50            # ... raised until FitNet takes at least this many optimiser steps
    search_epochs: int = 10        # SearchNet epochs over L_val per cycle
    lam: float = 1.0               # count regulariser weight (lambda)
    prior: float = 1.0             # weight of KL(pi || flat mixture): shrinks AutoAL toward vote
    gamma: float = 0.1             # ranking loss weight
    threshold: str = "gmm"         # "gmm" (paper) or "quantile" (exact)
    lr: float = 1e-3
    batch_size: int = 64


@dataclass(frozen=True)
class BaselineConfig:
    """Options of the strategy-selection baselines and single methods AutoAL is judged against."""

    albl_arms: tuple[str, ...] = SearchConfig.candidates   # ALBL's strategy arms; uniform sampling is always added
    albl_delta: float = 0.1                # EXP4.P's confidence parameter
    noise_samples: int = 10                # noise stability: K weight-perturbed copies
    noise_eps: float = 1e-3                # noise norm relative to each weight tensor's norm
    noise_scope: str = "head"              # "head" (backbone once, K heads) or "model" (K whole models)
    poal_informativeness: str = "entropy"  # POAL's AL objective (a per-sample strategy)
    poal_iterations: int = 2000            # Monte-Carlo Pareto search steps
    poal_pool_factor: int = 6              # POAL pre-selects pool_factor x batch Pareto-front candidates
    dpp_informativeness: str = "entropy"   # the DPP quality's informativeness (a per-sample strategy)
    adversarial_epochs: int = 10           # VAAL / SRAAL: VAE + discriminator epochs over the unlabeled pool
    adversarial_latent: int = 32           # VAE latent size
    adversarial_lr: float = 5e-4
    adversarial_batch_size: int = 64
    lpl_weight: float = 1.0                # LPL: weight (lambda) of the loss-prediction ranking loss
    lpl_joint_fraction: float = 0.6        # LPL: the ranking loss reaches the backbone for this fraction of the fit
    lpl_subset_factor: int = 10            # LPL ranks a random subset of factor x batch samples (0: the whole pool)
    bgadl_samples: int = 1                 # BGADL: synthetic samples generated per queried sample
    bgadl_epochs: int = 100                # BGADL: VAE-ACGAN epochs over the labeled set per round


@dataclass(frozen=True)
class ExperimentConfig:
    """One AL experiment: every strategy x every seed on one dataset."""

    dataset: str = "digits"
    data_root: str = "data"
    model: str = "auto"                     # auto | cnn | mlp | resnet18
    strategies: tuple[str, ...] = ("random", "entropy")
    initial: int = 20                       # size of the initial labeled pool
    initial_method: str = "random"          # random | kcenter
    batch: int = 20                         # queries per round
    rounds: int = 10                        # query rounds after the initial pool
    seeds: tuple[int, ...] = (0,)
    epochs: int = 30                        # task-model epochs per round (retrained from scratch)
    min_steps: int = 100                    # at least this many optimiser steps per round (more epochs on few labels)
    lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 64
    dropout: float = 0.3                    # dropout of the classifier head (MC dropout)
    mc_samples: int = 10                    # T, MC-dropout samples of the head
    workers: int = 0                        # Ray Train workers; 0 = local mode in the driver
    actors: int | str = AUTO                # Ray Data scoring actors; auto: in the driver for small pools
    gpus: float = 0.0                       # GPUs per training worker and per scoring actor
    search: SearchConfig = field(default_factory=SearchConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    ood_classes: tuple[int, ...] = ()       # these classes' train samples become out-of-distribution (label -1)

    def __post_init__(self) -> None:
        checks = [
            (self.initial > 0, "initial must be positive"),
            (self.batch > 0, "batch must be positive"),
            (self.rounds >= 0, "rounds must be >= 0"),
            (self.epochs > 0, "epochs must be positive"),
            (self.min_steps >= 0, "min_steps must be >= 0"),
            (self.mc_samples >= 2, "mc_samples must be >= 2"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.actors == AUTO or self.actors >= 0, "actors must be >= 0 or auto"),
            (self.gpus >= 0, "gpus must be >= 0"),
            (len(self.seeds) > 0, "seeds must not be empty"),
            (all(seed >= 0 for seed in self.seeds), "seeds must be >= 0"),
            (len(set(self.seeds)) == len(self.seeds), "a seed is listed twice"),
            (len(self.strategies) > 0, "strategies must not be empty"),
            (self.initial_method in ("random", "kcenter"), "initial_method must be random or kcenter"),
            (self.search.threshold in ("gmm", "quantile"), "search.threshold must be gmm or quantile"),
            (self.search.reward in ("lookahead", "loss"), "search.reward must be lookahead or loss"),
            (self.search.fitnet in ("fresh", "crossfit"), "search.fitnet must be fresh or crossfit"),
            (0.0 < self.search.rho < 1.0, "search.rho must be in (0, 1)"),
            (self.search.eta > 0, "search.eta must be positive"),
            (self.search.prior >= 0, "search.prior must be >= 0"),
            (self.search.fit_steps >= 0, "search.fit_steps must be >= 0"),
            (len(self.search.candidates) > 0, "search.candidates must not be empty"),
            (self.baselines.noise_scope in ("head", "model"), "baselines.noise_scope must be head or model"),
            (self.baselines.noise_samples >= 1, "baselines.noise_samples must be >= 1"),
            (self.baselines.noise_eps > 0, "baselines.noise_eps must be positive"),
            (self.baselines.poal_pool_factor >= 1, "baselines.poal_pool_factor must be >= 1"),
            (self.baselines.adversarial_epochs >= 1, "baselines.adversarial_epochs must be >= 1"),
            (0.0 <= self.baselines.lpl_joint_fraction <= 1.0, "baselines.lpl_joint_fraction must be in [0, 1]"),
            (self.baselines.lpl_weight >= 0, "baselines.lpl_weight must be >= 0"),
            (self.baselines.lpl_subset_factor >= 0, "baselines.lpl_subset_factor must be >= 0"),
            (self.baselines.bgadl_samples >= 1, "baselines.bgadl_samples must be >= 1"),
            (self.baselines.bgadl_epochs >= 1, "baselines.bgadl_epochs must be >= 1"),
            (len(set(self.ood_classes)) == len(self.ood_classes), "ood_classes lists a class twice"),
        ]
        for ok, message in checks:
            if not ok:
                raise AutoALError(f"bad config: {message}")
        if len(set(self.strategies)) != len(self.strategies):
            raise AutoALError("bad config: a strategy is listed twice")

    @property
    def budget(self) -> int:
        return self.initial + self.batch * self.rounds

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(cls, data: dict[str, Any], where: str):
    """Build dataclass `cls` from plain data, checking keys and types."""
    if not isinstance(data, dict):
        raise AutoALError(f"bad config: {where or 'the config'} must be a mapping")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AutoALError(f"bad config: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(where + k for k in unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _value(hints[key], value, where + key)
    return cls(**kwargs)


def _value(hint, value, name: str):
    if dataclasses.is_dataclass(hint):
        return _coerce(hint, value, name + ".")
    origin = get_origin(hint)
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_value(item, v, name) for v in values)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise AutoALError(f"bad config: {name} must be true or false, got {value!r}")
    if isinstance(hint, types.UnionType):  # a number or AUTO
        if value == AUTO:
            return AUTO
        if isinstance(value, bool) or not isinstance(value, int):
            raise AutoALError(f"bad config: {name} must be an integer or {AUTO}, got {value!r}")
        return _value(get_args(hint)[0], value, name)
    if hint in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            raise AutoALError(f"bad config: {name} must be finite, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and value != int(value)):
            raise AutoALError(f"bad config: {name} must be {'an integer' if hint is int else 'a number'}, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise AutoALError(f"bad config: {name} must be a string, got {value!r}")
        return str(value)
    return value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: its problem and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}".replace("\n", " ")


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    return _coerce(ExperimentConfig, data, "")


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config from a YAML file (optional) with `overrides` (flags) applied on top.

    Override keys may be dotted (`search.lam`) to reach nested sections.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AutoALError(f"cannot read config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise AutoALError(f"config {path} is not a UTF-8 text file") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise AutoALError(f"config {path} is not valid YAML: {yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise AutoALError(f"config {path} must be a YAML mapping of keys to values")
    for key, value in (overrides or {}).items():
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return from_dict(data)
