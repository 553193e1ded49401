"""Sweeps on Ray Tune: plan validation, candidate-pool expansion, a real grid, report, resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from autoal.errors import AutoALError
from autoal.report import report
from autoal.sweep import runner
from autoal.runs.directory import ExperimentDir
from autoal.sweep.plan import PAPER_CANDIDATES, PLAN_FILE, from_dict, load_plan, trial_count

pytestmark = pytest.mark.slow(seconds=300)   # started first, the longest first (tests/conftest.py)
ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "initial": 20, "batch": 10, "rounds": 2, "epochs": 5}


def write_plan(tmp_path, **plan) -> Path:
    path = tmp_path / f"{plan.get('name', 'plan')}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.mark.parametrize("plan, message", [
    ({"base": TINY, "axes": {"seed": [0]}, "schedular": {}}, "unknown key schedular"),
    ({"base": TINY, "axes": {}}, "axes is empty"),
    ({"base": TINY}, "axes is empty"),
    ({"base": TINY, "axes": {"seed": []}}, "axis seed has no values"),
    ({"base": TINY, "axes": {"search.lamda": [1.0]}}, "unknown axis search.lamda: search has no field 'lamda'"),
    ({"base": TINY, "axes": {"epoch": [1]}}, "unknown axis epoch"),
    ({"base": TINY, "axes": {"search": [1]}}, "axis search is a config section"),
    ({"base": TINY, "axes": {"seed": 3}}, "axis seed must be a list of values or a search space"),
    ({"base": TINY, "axes": {"search.lam": {"tune": "normal", "mean": 1}}}, "unknown search space 'normal'"),
    ({"base": TINY, "axes": {"search.lam": {"tune": "uniform", "low": 0}}}, "uniform takes low, high"),
    ({"base": TINY, "axes": {"epochs": ["many"]}}, "axis epochs value 'many': bad config: epochs must be an integer"),
    ({"base": TINY, "axes": {"strategy": ["entropy", "oracle"]}}, "oracle"),
    ({"base": {**TINY, "dataset": "mnist"}, "axes": {"seed": [0]}}, "unknown dataset 'mnist'"),
    ({"base": {**TINY, "epoch": 3}, "axes": {"seed": [0]}}, "unknown key epoch"),
    ({"base": TINY, "axes": {"candidates_size": [0, 3]}}, "candidates_size must be an integer from 1 to 7"),
    ({"base": TINY, "axes": {"candidates_size": [1], "options.vote.candidates": [["bald"]]}}, "keep one"),
    ({"base": TINY, "axes": {"options.autoal.candidatez": [["bald"]]}}, "unknown option options.autoal.candidatez"),
    ({"base": TINY, "axes": {"strategy": ["random"], "strategies": [["random"]]}}, "keep one"),
    ({"base": TINY, "axes": {"seed": [0]}, "resources": {"cpus": 2}}, "resources takes cpu and gpu"),
    ({"base": TINY, "axes": {"seed": [0]}, "scheduler": {"type": "hyperband"}}, "type one of asha"),
    ({"base": TINY, "axes": {"seed": [0]}, "scheduler": {"type": "asha", "grace": 1}}, "has no option grace"),
    ({"base": {**TINY, "strategies": ["random", "entropy"]}, "axes": {"seed": [0]},
      "scheduler": {"type": "asha"}}, "make strategy an axis"),
    ({"base": TINY, "axes": {"seed": [0]}, "num_samples": 0}, "num_samples must be a positive integer"),
    ({"name": "a b", "base": TINY, "axes": {"seed": [0]}}, "name must be"),
])
def test_bad_specs_name_the_problem(tmp_path, plan, message):
    path = write_plan(tmp_path, **plan)
    with pytest.raises(AutoALError, match="sweep plan .*" + re.escape(message)):
        load_plan(path)


def test_candidates_size_expands_to_the_papers_nested_pools(tmp_path):
    plan = load_plan(write_plan(tmp_path, name="pools", base={**TINY, "strategies": ["autoal"]},
                                axes={"candidates_size": [1, 3, 5, 7], "seed": [0, 1]}))
    assert runner.param_space(plan)["candidates_size"] == {"grid_search": [1, 3, 5, 7]}
    pools = {n: plan.trial_config({"candidates_size": n, "seed": 0}).options["autoal"]["candidates"]
             for n in (1, 3, 5, 7)}
    assert all(plan.trial_config({"candidates_size": n}).options["vote"]["candidates"] == pools[n] for n in pools)
    assert pools == {
        1: ("entropy",),
        3: ("entropy", "margin", "least_confidence"),
        5: ("entropy", "margin", "least_confidence", "kmeans", "bald"),
        7: ("entropy", "margin", "least_confidence", "kmeans", "bald", "var_ratio", "mean_std"),
    }
    assert plan.trial_config({"candidates_size": 3, "seed": 1}).seeds == (1,)


def test_axes_reach_nested_fields_and_search_spaces(tmp_path):
    plan = load_plan(write_plan(tmp_path, name="spaces", base={**TINY, "search": {"gamma": 0.5}},
                                axes={"strategy": ["autoal"], "search.lam": {"tune": "loguniform",
                                                                             "low": 0.1, "high": 10.0}},
                                num_samples=3, resources={"cpu": 2}))
    cfg = plan.trial_config({"strategy": "autoal", "search.lam": 2.5})
    assert (cfg.strategies, cfg.search.lam, cfg.search.gamma, cfg.scoring_tasks, cfg.workers) == (("autoal",), 2.5, 0.5, 0, 0)
    assert plan.task_resources() == {"CPU": 2.0}
    assert runner.tune_config(plan).num_samples == 3


@pytest.mark.parametrize("name, trials", [("smoke", 8), ("benchmark", 216), ("ablation_candidates", 144),
                                          ("ablation_searchnet", 72), ("ablation_regularisation", 72)])
def test_job_specs_are_valid(name, trials):
    plan = load_plan(ROOT / "jobs" / f"{name}.yaml")
    assert trial_count(plan) == trials
    if name != "smoke":   # the paper's protocol
        cfg = plan.trial_config({})
        assert (cfg.initial, cfg.batch, cfg.model, plan.resources["gpu"]) == (2000, 1000, "resnet18", 1.0)


def test_benchmark_spec_covers_the_papers_grid():
    axes = load_plan(ROOT / "jobs" / "benchmark.yaml").axes
    assert axes["dataset"] == ["cifar10", "cifar100", "svhn", "medmnist:organcmnist", "medmnist:pathmnist",
                               "medmnist:tissuemnist"]
    assert set(axes["strategy"]) == {*PAPER_CANDIDATES, "badge", "lpl", "random", "autoal", "vote"}
    assert axes["seed"] == [0, 1, 2]


def test_asha_scheduler_from_spec(tmp_path):
    plan = load_plan(write_plan(tmp_path, name="asha", base=TINY, axes={"strategy": ["random", "entropy"]},
                                scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3}))
    tune_config = runner.tune_config(plan)
    assert (tune_config.metric, tune_config.mode) == ("aubc", "max")
    assert type(tune_config.scheduler).__name__ == "AsyncHyperBandScheduler"
    assert (tune_config.scheduler._max_t, tune_config.scheduler._reduction_factor) == (3, 3)


@pytest.mark.parametrize("rounds, max_t", [({"tune": "randint", "low": 1, "high": 6}, 6),
                                           ({"tune": "choice", "values": [3, 7, 2]}, 8), ([1, 4], 5)])
def test_asha_max_t_follows_the_largest_rounds_a_rounds_axis_gives(tmp_path, rounds, max_t):
    """A trial reports rounds 0..rounds; ASHA must not stop the longest trials early (base rounds is 2)."""
    plan = load_plan(write_plan(tmp_path, name="rounds", base={**TINY, "strategies": ["random"]},
                                axes={"rounds": rounds}, scheduler={"type": "asha"}))
    assert runner.tune_config(plan).scheduler._max_t == max_t


def test_explicit_defaults_and_nulls_read_like_absent_keys(tmp_path):
    """Counts given equal to their default (or null) are validated by value, not identity, and the plan
    saved in a sweep directory reads back as itself (what a resume compares)."""
    plan = load_plan(write_plan(tmp_path, name="counts", base=TINY, axes={"strategy": ["random"]}, num_samples=1,
                                max_concurrent_trials=None, scheduler={"type": "asha", "grace_period": None}))
    assert (plan.num_samples, plan.max_concurrent_trials) == (1, None)
    assert plan.scheduler == {"type": "asha", "metric": "aubc", "grace_period": 2, "reduction_factor": 2}
    assert from_dict(yaml.safe_load(yaml.safe_dump(plan.to_dict()))) == plan
    with pytest.raises(AutoALError, match="num_samples must be a positive integer, got 1.0"):
        from_dict({**plan.to_dict(), "num_samples": 1.0})


# Runs `autoal report DIR` in a process where importing ray.tune fails.
REPORT_WITHOUT_TUNE = """
import sys

class NoTune:
    def find_spec(self, name, path=None, target=None):
        if name == "ray.tune" or name.startswith("ray.tune."):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, NoTune())
from autoal.cli import main
main(["report", sys.argv[1]])
try:
    import ray.tune
except ImportError:
    print("ray.tune stayed blocked")
"""


def test_report_of_a_sweep_directory_needs_no_ray_tune(tmp_path):
    plan = load_plan(write_plan(tmp_path, name="lr", base={**TINY, "strategies": ["random"]},
                                axes={"lr": [0.001, 0.01], "seed": [0, 1]}))
    out = tmp_path / "out"
    out.mkdir()
    (out / PLAN_FILE).write_text(yaml.safe_dump(plan.to_dict()))
    for index, (lr, seed) in enumerate((lr, seed) for lr in (0.001, 0.01) for seed in (0, 1)):
        params = {"lr": lr, "seed": seed}
        trial = out / "trials" / f"{index:05d}-lr={lr},seed={seed}"
        store = ExperimentDir(trial).open(plan.trial_config(params))
        (trial / "params.json").write_text(json.dumps(params))
        for round_ in range(3):   # the larger learning rate gains twice as much per round
            store.append_result({"dataset": "digits", "strategy": "random", "seed": seed, "round": round_,
                                 "n_labeled": 20 + 10 * round_, "accuracy": 0.5 + round_ * lr * 5 + seed / 100})
    done = subprocess.run([sys.executable, "-c", REPORT_WITHOUT_TUNE, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("ray.tune stayed blocked")
    summary_text, pairs_text = done.stdout.split("paired AUBC differences")
    rows = [line.split()[:3] for line in summary_text.splitlines() if line.startswith("digits")]
    assert rows == [["digits", "random,", "lr=0.01"], ["digits", "random,", "lr=0.001"]]
    assert "random, lr=0.01" in pairs_text and (out / "penalty_matrix.png").is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["lr"]) == [0.01, 0.001] and list(summary["seeds"]) == [2, 2]
    assert summary["aubc_vs_best"].iloc[0] == 0 and summary["aubc_vs_best"].iloc[1] < 0
    assert (out / "curves_digits.png").stat().st_size > 0


def test_smoke_sweep_writes_table_summary_plots_and_report(ray_local, tmp_path):
    out = runner.run_sweep(str(ROOT / "jobs" / "smoke.yaml"), str(tmp_path / "smoke"), None, log=print)
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 8 * 3 and results["trial"].nunique() == 8
    assert set(results["initial_method"]) == {"random", "kcenter"}
    assert results.groupby(["strategy", "seed", "initial_method"]).size().eq(3).all()
    assert results["complete"].all()
    assert len(pd.read_csv(out / "results.csv")) == len(results)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary["seeds"] == 2).all()
    assert {"aubc_mean", "aubc_std", "f_acc_mean", "f_acc_std", "aubc_vs_best"} <= set(summary.columns)
    assert (out / "curves_digits.png").stat().st_size > 0

    text = report(out)
    assert "initial_method=kcenter" in text and "AUBC" in text
    trial = sorted((out / "trials").iterdir())[0]
    assert "random" in report(trial) and (trial / "curves.png").exists()

    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/results.parquet")}
    runner.run_sweep(str(ROOT / "jobs" / "smoke.yaml"), str(out), None)   # finished: nothing runs again
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/results.parquet")}

    other = write_plan(tmp_path, name="smoke", base=TINY, axes={"seed": [0]})
    with pytest.raises(AutoALError, match="holds a different sweep"):
        runner.run_sweep(str(other), str(out), None)
    with pytest.raises(AutoALError, match="not an autoal run or sweep directory"):
        report(tmp_path)


def test_failed_trials_are_named_and_the_others_still_written(ray_local, tmp_path):
    plan = write_plan(tmp_path, name="budget", base={**TINY, "strategies": ["random"]}, axes={"initial": [20, 5000]})
    with pytest.raises(AutoALError, match=r"1 of 2 trials failed; first 00001-initial=5000: .*budget 5020"):
        runner.run_sweep(str(plan), str(tmp_path / "out"), None)
    assert set(pd.read_parquet(tmp_path / "out" / "results.parquet")["initial"]) == {20}


def finished_trials(out: Path) -> list[Path]:
    """The results of the trials of the sweep in `out` that ran their 2 rounds (initial, 1)."""
    return [p for p in (out / "trials").glob("*/results.parquet") if len(pd.read_parquet(p)) == 2]


def kill_after_first_trial(plan: Path, out: Path, address: str) -> list[Path]:
    """Run the sweep in a driver of its own, kill -9 it once a trial has finished; the finished trials."""
    code = f"from autoal.sweep.runner import run_sweep; run_sweep({str(plan)!r}, {str(out)!r})"
    env = dict(os.environ, RAY_ADDRESS=address)   # no Ray start of its own
    driver = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        finished, deadline = [], time.time() + 240
        while not finished and time.time() < deadline and driver.poll() is None:
            time.sleep(0.05)
            finished = finished_trials(out)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert finished, "the first trial did not finish"
    return finished


def test_interrupted_candidates_size_sweep_resumes_without_redoing_finished_trials(ray_local, tmp_path):
    """Kill a sweep's driver after its first trial (its trials' actors in the session's Ray die with
    it), re-run it, compare; the trials ran AutoAL on the paper's nested candidate pools. A trial
    takes 2-3 s: on a loaded machine the kill can come after the last one, which interrupts
    nothing, so that case is run again in a new directory (three tries)."""
    plan = write_plan(tmp_path, name="pools", axes={"candidates_size": [1, 4, 7]}, max_concurrent_trials=1,
                      base={**TINY, "rounds": 1, "strategies": ["autoal"],
                            "search": {"cycles_first": 1, "fit_epochs": 1, "search_epochs": 1}})
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        finished = kill_after_first_trial(plan, out, ray_local.get_runtime_context().gcs_address)
        if len(finished_trials(out)) < 3:
            break
    else:
        pytest.fail("in three tries the kill came only after the sweep's last trial")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished}

    runner.run_sweep(str(plan), str(out), None)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished} == before
    results = pd.read_parquet(out / "results.parquet")
    assert sorted(results["candidates_size"]) == [1, 1, 4, 4, 7, 7] and results["complete"].all()
    weights = pd.read_parquet(out / "strategy_weights.parquet")
    pools = weights.groupby("candidates_size")["candidate"].apply(tuple).to_dict()
    assert pools == {n: PAPER_CANDIDATES[:n] for n in (1, 4, 7)}
    assert (out / "candidates_size.png").exists() and len(list((out / "strategy_weights").glob("*.png"))) == 3
