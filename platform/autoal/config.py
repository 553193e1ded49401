"""Experiment configuration: a typed, frozen dataclass read from YAML and flags.

Flags win over the YAML file; unknown keys and ill-typed values are errors.
"""
from __future__ import annotations

import dataclasses
import math
import types
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from autoal.errors import AutoALError
from autoal.safe_io import CONFIG_BYTES, clip, load_yaml, read_text, shown

AUTO = "auto"  # a value some fields take instead of a number: decided by the run (e.g. `actors`)


def key(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, execution: bool = False,
        flag: str | None = None, old: str | None = None):
    """A config field: `help` is its flag's help; `execution` marks a field that changes how a run
    executes, not what it computes (it may differ on resume); `flag` renames its flag; `old` is the
    key's former name, still read (with a warning) so that configs written before still run."""
    return field(default=default, default_factory=factory,
                 metadata=dict(help=help, execution=execution, flag=flag, old=old))


@dataclass(frozen=True)
class SearchConfig:
    """AutoAL's differentiable strategy search (../shared/DESIGN.md, section 3 "AutoAL, as this
    project implements it"): the settings of its round hook. The candidates are the `autoal`
    strategy's option (`options.autoal.candidates`)."""

    backbone: bool = key(True, "false: SearchNet is a head on the task model's frozen embeddings")
    loss_module: bool = key(True, "SearchNet's loss-prediction module and its ranking loss")
    reward: str = key("lookahead", "lookahead (one unrolled step on held-out loss) or loss (FitNet's loss)")
    rho: float = key(0.25, "simulated query ratio: each candidate picks ceil(rho |L_val|) of L_val")
    eta: float = key(0.1, "lookahead step, in units of the held-out gradient's norm")
    fitnet: str = key("fresh", "fresh: one FitNet per cycle on half of L; crossfit: one per half")
    cycles_first: int = key(3, "search cycles in the first round")
    cycles: int = key(1, "search cycles in later rounds")
    fit_epochs: int = key(10, "FitNet epochs per cycle (fresh init)")
    fit_steps: int = key(50, "FitNet epochs are raised until it takes at least this many optimiser steps")
    search_epochs: int = key(10, "SearchNet epochs over L_val per cycle")
    lam: float = key(1.0, "count regulariser weight (lambda)")
    prior: float = key(1.0, "weight of KL(pi || flat mixture) before any evidence: shrinks AutoAL toward vote")
    prior_rows: int = key(50, "the prior's strength in search rows, n0: its weight is prior n0 / (n0 + rows replayed)")
    replay: bool = key(True, "SearchNet trains on the rows of every past cycle, not only this round's")
    evidence: bool = key(True, "weight each candidate by the probability that its own picks earn the best "
                               "reward over every search cycle so far (false: SearchNet's mixture alone)")
    evidence_decay: float = key(0.5, "a search cycle's evidence weighs decay^age, age in cycles before the "
                                     "newest: old rounds fade, so the weights follow a change of the best "
                                     "candidate; 1: every cycle alike")
    gamma: float = key(0.1, "ranking loss weight")
    threshold: str = key("gmm", "gmm (paper) or quantile (exact)")
    lr: float = key(1e-3, "SearchNet's and FitNet's Adam learning rate")
    search_minibatch: int = key(64, "SearchNet's and FitNet's mini-batch", old="batch_size")


@dataclass(frozen=True)
class ExperimentConfig:
    """One AL experiment: every strategy x every seed on one dataset."""

    dataset: str = key("digits", "digits, cifar10, cifar100, svhn, medmnist:<flag>, parquet:<dir or URI>, "
                                 "images:<dir>, synthetic[:n]")
    data_root: str = key("data", "where dataset files live", execution=True)
    model: str = key("auto", "auto, cnn, mlp or resnet18")
    strategies: tuple[str, ...] = key(("random", "entropy"), "strategies to compare (see `autoal strategies`)",
                                      execution=True, flag="strategy")
    initial: int = key(20, "size of the initial labeled pool")
    initial_method: str = key("random", "random or kcenter: how the initial pool is drawn")
    batch: int = key(20, "queries per round")
    rounds: int = key(10, "query rounds after the initial pool")
    seeds: tuple[int, ...] = key((0,), "paired seeds", execution=True)
    epochs: int = key(30, "task-model epochs per round (retrained from scratch)")
    min_steps: int = key(100, "at least this many optimiser steps per round (more epochs on few labels)")
    lr: float = key(1e-3, "the task model's Adam learning rate")
    weight_decay: float = key(5e-4, "the task model's weight decay")
    task_minibatch: int = key(64, "the task model's mini-batch", old="batch_size")
    dropout: float = key(0.3, "dropout of the classifier head (MC dropout)")
    mc_samples: int = key(10, "T, MC-dropout samples of the head")
    workers: int = key(0, "training workers; 0 = train in the driver", execution=True)
    torch_threads: int = key(1, "torch CPU threads of every fit, in the driver and on each training worker (which "
                                "then reserves as many CPUs); part of the results: the count changes the weights")
    warm_workers: bool = key(True, "start the training workers once per run and keep them for every fit; "
                                   "false: a new Ray Train worker group per fit (~20 s each)", execution=True)
    scoring_tasks: int | str = key(AUTO, "Ray Data tasks scoring the pool at once; 0 = in the driver; auto: in "
                                         "the driver for small pools (old name: actors)", execution=True,
                                     old="actors")
    gpus: float = key(0.0, "GPUs per training worker and per scoring worker", execution=True)
    prefilter: int = key(0, "batch strategies select among the top prefilter x batch samples by margin "
                            "(0: the whole pool); bounds a big pool's selection cost")
    search: SearchConfig = key(help="AutoAL's search", factory=SearchConfig)
    options: dict[str, dict[str, Any]] = key(help="each strategy's options, its constructor's parameters: "
                                                  "{<strategy>: {<option>: value}}", factory=dict)
    ood_classes: tuple[int, ...] = key((), "these classes' train samples become out-of-distribution (label -1)")

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
            (self.torch_threads >= 1, "torch_threads must be >= 1"),
            (self.scoring_tasks == AUTO or self.scoring_tasks >= 0, "scoring_tasks must be >= 0 or auto"),
            (self.gpus >= 0, "gpus must be >= 0"),
            (self.prefilter >= 0, "prefilter must be >= 0"),
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
            (self.search.prior_rows >= 0, "search.prior_rows must be >= 0"),
            (0.0 < self.search.evidence_decay <= 1.0, "search.evidence_decay must be in (0, 1]"),
            (self.search.fit_steps >= 0, "search.fit_steps must be >= 0"),
            (len(set(self.ood_classes)) == len(self.ood_classes), "ood_classes lists a class twice"),
        ]
        for ok, message in checks:
            if not ok:
                raise AutoALError(f"bad config: {message}")
        if len(set(self.strategies)) != len(self.strategies):
            raise AutoALError("bad config: a strategy is listed twice")
        from autoal.strategies import names
        unknown = [name for name in self.strategies if name not in names()]
        if unknown:
            raise AutoALError(f"bad config: unknown strategy {shown(unknown[0], 40)}; known: {', '.join(names())}")

    @property
    def budget(self) -> int:
        return self.initial + self.batch * self.rounds

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def strategy_options(self, name: str) -> dict[str, Any]:
        """The options of strategy `name`: its constructor's keyword arguments."""
        return dict(self.options.get(name, {}))


EXECUTION_FIELDS = tuple(f.name for f in fields(ExperimentConfig) if f.metadata["execution"])


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
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise AutoALError(f"bad config: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(clip(where + k, 40) for k in unknown[:3])}{', ...' if len(unknown) > 3 else ''}"
                          f"; known: {', '.join(sorted(known))}")
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
        raise AutoALError(f"bad config: {name} must be true or false, got {shown(value)}")
    if origin is dict:   # `options`: strategy name -> its constructor's keyword arguments
        return _options(value, name)
    if isinstance(hint, types.UnionType):  # a number, or AUTO (`actors`) or None (an unset option)
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        if value == AUTO and str in args:
            return AUTO
        if isinstance(value, bool) or not isinstance(value, int):
            other = AUTO if str in args else "null"
            raise AutoALError(f"bad config: {name} must be an integer or {other}, got {shown(value)}")
        return _value(args[0], value, name)
    if hint in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            raise AutoALError(f"bad config: {name} must be finite, got {shown(value)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and value != int(value)):
            raise AutoALError(f"bad config: {name} must be {'an integer' if hint is int else 'a number'}, "
                              f"got {shown(value)}")
        if hint is int and not -2**63 <= value < 2**63:
            raise AutoALError(f"bad config: {name} must fit in 64 bits (|value| < 2**63), got {shown(value)}")
        return hint(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise AutoALError(f"bad config: {name} must be a string, got {shown(value)}")
        return str(value)
    return value


def _options(data, where: str) -> dict[str, dict[str, Any]]:
    """Each strategy's options, checked against its constructor's signature and types, then by
    building the strategy (which checks their values)."""
    from autoal.strategies import get, names, parameters

    if not isinstance(data, dict):
        raise AutoALError(f"bad config: {where} must map strategy names to their options")
    out = {}
    for strategy, options in data.items():
        if strategy not in names():
            raise AutoALError(f"bad config: {where}.{clip(str(strategy), 40)}: unknown strategy {shown(strategy, 40)}; known: "
                              f"{', '.join(names())}")
        params = parameters(strategy)
        if not isinstance(options, dict):
            raise AutoALError(f"bad config: {where}.{strategy} must be a mapping of options")
        unknown = sorted(map(str, set(options) - set(params)))
        if unknown:
            raise AutoALError(f"bad config: unknown option {where}.{strategy}.{clip(unknown[0], 40)}; {strategy} takes "
                              f"{', '.join(params) or 'no options'}")
        out[strategy] = {k: _value(params[k], v, f"{where}.{strategy}.{k}") for k, v in options.items()}
        try:
            get(strategy, **out[strategy])
        except (KeyError, ValueError) as exc:
            raise AutoALError(f"bad config: {where}.{strategy}: {exc.args[0]}") from None
    return out


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: its problem and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}".replace("\n", " ")


def renamed(data: dict[str, Any], cls=ExperimentConfig, where: str = "") -> dict[str, Any]:
    """`data` with each key a field names as its `old` one under its name now, in the sections too,
    and a warning that says so."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    hints = get_type_hints(cls)
    for f in fields(cls):
        old, new = f.metadata["old"], f.name
        if old is not None and old in data:
            if new in data:
                raise AutoALError(f"bad config: {where}{old} and {where}{new} are both given; "
                                  f"{where}{old} is the old name of {where}{new}")
            warnings.warn(f"autoal: config key {where + old!r} is now {where + new!r}; the old name will go",
                          FutureWarning, stacklevel=2)
            data[new] = data.pop(old)
        if dataclasses.is_dataclass(hints[new]) and new in data:
            data[new] = renamed(data[new], hints[new], f"{where}{new}.")
    return data


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    return _coerce(ExperimentConfig, renamed(data), "")


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config from a YAML file (optional) with `overrides` (flags) applied on top.

    Override keys may be dotted (`search.lam`) to reach nested sections.
    """
    data: dict[str, Any] = {}
    if path is not None:
        text = read_text(path, CONFIG_BYTES, "config")
        try:
            data = load_yaml(text) or {}
        except yaml.YAMLError as exc:
            raise AutoALError(f"config {path} is not valid YAML: {yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise AutoALError(f"config {path} must be a YAML mapping of keys to values")
    for key, value in (overrides or {}).items():
        target = data
        if not all(key.split(".")):
            raise AutoALError(f"bad config: {shown(key, 40)} is not a config key (dotted names like search.lam)")
        *parents, leaf = key.split(".")
        for i, parent in enumerate(parents):
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise AutoALError(f"bad config: cannot set {key}: {'.'.join(parents[:i + 1])} is "
                                  f"{shown(target)}, not a section")
        target[leaf] = value
    return from_dict(data)
