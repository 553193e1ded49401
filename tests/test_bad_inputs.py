"""Every case of the bad-input battery (benchmarks/bad_inputs.py): its exact exit code, one
`autoal: error:` line naming the problem, no traceback, and every file it was given unchanged."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "benchmarks" / "bad_inputs.py")
battery = sys.modules["bad_inputs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(battery)


@pytest.fixture(scope="module")
def template_run(ray_local, tmp_path_factory):
    return battery.template(tmp_path_factory.mktemp("template"))


@pytest.mark.parametrize("case", battery.CASES, ids=lambda case: case.name)
def test_bad_input(case, ray_local, tmp_path, request):
    if case.gpu_free and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.needs_template:
        request.getfixturevalue("template_run")
    outcome = battery.check(case, tmp_path)
    assert outcome.exit == case.exit, outcome.stderr
    assert not outcome.traceback, outcome.stderr
    assert outcome.intact, "the case's files changed"
    assert outcome.clean, outcome.stderr
    assert len(battery.CASES) >= 50


def test_the_planted_pickle_is_live(tmp_path):
    """The battery's planted CIFAR batch and checkpoint would run their command (create PWNED) under a
    plain unpickler; their cases pass only because autoal refuses them before anything runs."""
    import pickle

    payload = battery.planted_pickle(tmp_path)
    pickle.loads(payload)  # the payload is live: a plain unpickler runs it
    assert (tmp_path / "PWNED").exists()
