"""Every bad input ends with one clear message, exit code 2, and an untouched output directory."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoal import cli
from autoal.errors import AutoALError

SMALL = ["--dataset", "digits", "--initial", "10", "--batch", "5", "--rounds", "1", "--epochs", "2",
         "--scoring-tasks", "0", "--seeds", "0", "--min-steps", "0"]


def fingerprint(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fails(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    return err


def write_raw_pool(path: Path, x: np.ndarray, y: np.ndarray):
    path.mkdir()
    n = len(y)
    table = pa.table({"id": np.arange(n, dtype=np.int64), "x": pa.array(list(x.astype(np.float32))),
                      "y": y.astype(np.int64), "split": ["train"] * (n - 10) + ["test"] * 10})
    pq.write_table(table, path / "part-00000.parquet")


@pytest.fixture(scope="module")
def good_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "good"
    assert cli.main(["run", *SMALL, "--strategy", "entropy", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "imagenet"], "unknown data source 'imagenet'"),
    (["--strategy", "psychic"], "unknown strategy 'psychic'"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--rounds", "400"], "exceeds the pool"),
    (["--batch", "0"], "batch must be positive"),
    (["--dataset", "medmnist:pathmnist", "--data-root", "/nonexistent"], "/nonexistent"),
])
def test_bad_arguments_get_one_clear_message(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    fails(capsys, ["run", *SMALL, *argv, "--out", str(out)], message)
    assert not out.exists(), "a failed start leaves no output directory behind"


def test_corrupt_data_file(capsys, tmp_path):
    (tmp_path / "pathmnist.npz").write_bytes(b"this is not a zip archive")
    fails(capsys, ["run", *SMALL, "--dataset", "medmnist:pathmnist", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out")], "pathmnist.npz")


def test_nan_features_and_labels_out_of_range(capsys, tmp_path):
    x = np.random.default_rng(0).random((60, 4))
    x[3, 1] = np.nan
    write_raw_pool(tmp_path / "nan", x, np.arange(60) % 3)
    fails(capsys, ["run", *SMALL, "--dataset", f"parquet:{tmp_path / 'nan'}", "--out", str(tmp_path / "o1")],
          "NaN")
    y = np.arange(60) % 3
    y[5] = -4
    write_raw_pool(tmp_path / "labels", np.ones((60, 4)), y)
    fails(capsys, ["run", *SMALL, "--dataset", f"parquet:{tmp_path / 'labels'}", "--out", str(tmp_path / "o2")],
          "labels outside")


@pytest.mark.parametrize("text,message", [
    ("dataset: [digits\n", "not valid YAML"),
    ("dataset: digits\nbatchsize: 5\n", "unknown key batchsize"),
    ("batch: ten\n", "batch must be an integer"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("search:\n  lam: high\n", "search.lam must be a number"),
    ("initial: .nan\n", "initial must be finite, got nan"),
    ("search:\n  cycles: .inf\n", "search.cycles must be finite"),
    ("options:\n  poal: {iterations: many}\n", "options.poal.iterations must be an integer"),
])
def test_bad_config_files(capsys, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    fails(capsys, ["run", str(path), "--out", str(tmp_path / "out")], message)


def test_missing_config_file(capsys, tmp_path):
    fails(capsys, ["run", str(tmp_path / "absent.yaml")], "cannot read config")


def test_an_existing_experiment_is_never_damaged(capsys, good_run):
    before = fingerprint(good_run)
    fails(capsys, ["run", *SMALL, "--strategy", "entropy", "--batch", "7", "--out", str(good_run)],
          "holds a different experiment (differs in batch)")
    fails(capsys, ["run", *SMALL, "--strategy", "nope", "--out", str(good_run)], "unknown strategy")
    assert fingerprint(good_run) == before


def test_a_foreign_directory_is_not_used(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    fails(capsys, ["run", *SMALL, "--out", str(tmp_path)], "holds no autoal experiment")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_console_script_exits_2_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("autoal")
    proc = subprocess.run([str(script), "run", "--dataset", "nosuch", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["autoal: error: unknown data source 'nosuch' in 'nosuch'; "
                                                "known sources: digits, cifar10, cifar100, svhn, medmnist, "
                                                "parquet, images, synthetic"]


def test_listing_commands(capsys):
    assert cli.main(["strategies"]) == 0
    listing = capsys.readouterr().out
    assert "bald" in listing and "needs: mc_probs" in listing
    assert cli.main(["datasets"]) == 0
    assert "medmnist" in capsys.readouterr().out


def test_every_config_key_is_a_flag():
    """The flags are generated from the config's fields: each sets its key, and --set any dotted key."""
    import dataclasses

    from autoal import config

    sections = {"search", "options"}
    keys = {f.name for f in dataclasses.fields(config.ExperimentConfig)} - sections
    keys |= {f"search.{f.name}" for f in dataclasses.fields(config.SearchConfig)}
    run = cli.parser().parse_args(["run"])
    assert set(run.config_keys) == keys
    args = cli.parser().parse_args(["run", "--weight-decay", "0.01", "--strategy", "margin", "bald",
                                    "--search.loss-module", "false", "--scoring-tasks", "auto", "--search.lam", "2",
                                    "--set", "options.poal.iterations=50", "--set", "search.rho=0.5"])
    assert cli._overrides(args) == {"weight_decay": 0.01, "strategies": ["margin", "bald"],
                                    "search.loss_module": False, "scoring_tasks": "auto", "search.lam": 2.0,
                                    "options.poal.iterations": 50, "search.rho": 0.5}
    cfg = config.load(None, cli._overrides(args))
    assert (cfg.weight_decay, cfg.search.loss_module, cfg.options, cfg.search.rho) == \
        (0.01, False, {"poal": {"iterations": 50}}, 0.5)


@pytest.mark.parametrize("argv,message", [
    (["--set", "search=3", "--set", "search.lam=1"], "cannot set search.lam: search is 3, not a section"),
    (["--set", "lam"], "--set takes KEY=VALUE"),
    (["--torch-threads", "0"], "torch_threads must be >= 1"),
    (["--set", "options.lpl.weight=-1"], "options.lpl: lpl needs"),
])
def test_bad_overrides(capsys, tmp_path, argv, message):
    fails(capsys, ["run", *argv, "--out", str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


def test_the_old_name_actors_still_runs_with_a_warning(tmp_path, capsys):
    """`actors` (scoring workers that are Ray Data tasks) is now `scoring_tasks`; configs and flags
    written with the old name keep working, and say so."""
    from autoal import config

    (tmp_path / "old.yaml").write_text("actors: 3\n")
    with pytest.warns(FutureWarning, match="'actors' is now 'scoring_tasks'"):
        assert config.load(tmp_path / "old.yaml").scoring_tasks == 3
    assert cli._overrides(cli.parser().parse_args(["run", "--actors", "auto"]))["scoring_tasks"] == "auto"
    (tmp_path / "both.yaml").write_text("actors: 3\nscoring_tasks: 1\n")
    assert cli.main(["run", str(tmp_path / "both.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "actors and scoring_tasks are both given" in capsys.readouterr().err


def test_the_two_batch_sizes_have_names_that_say_which_and_the_old_key_still_runs(tmp_path):
    """`batch_size` named the task model's mini-batch and, in `search:`, SearchNet's: now
    `task_minibatch` and `search.search_minibatch`; the old keys and flags are read with a warning."""
    from autoal import config

    (tmp_path / "old.yaml").write_text("batch_size: 32\nsearch: {batch_size: 16, lam: 2.0}\n")
    with pytest.warns(FutureWarning) as warned:
        cfg = config.load(tmp_path / "old.yaml")
    assert (cfg.task_minibatch, cfg.search.search_minibatch, cfg.search.lam) == (32, 16, 2.0)
    assert sorted(str(w.message) for w in warned) == [
        "autoal: config key 'batch_size' is now 'task_minibatch'; the old name will go",
        "autoal: config key 'search.batch_size' is now 'search.search_minibatch'; the old name will go"]
    args = cli.parser().parse_args(["run", "--batch-size", "8", "--search.batch-size", "4"])
    assert cli._overrides(args) == {"task_minibatch": 8, "search.search_minibatch": 4}
    with pytest.raises(AutoALError, match="search.batch_size and search.search_minibatch are both given"):
        config.from_dict({"search": {"batch_size": 16, "search_minibatch": 16}})
