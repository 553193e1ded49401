"""Every case of the bad-input battery (tests/bad_inputs, `python -m tests.bad_inputs` prints it):
its exact exit code, one `autoal: error:` line of at most 300 characters naming the problem, no
traceback, every file it was given unchanged, nothing outside touched, nothing left running,
under 60 s."""
import pytest
import torch

import bad_inputs as battery


@pytest.fixture(scope="module")
def template_run(ray_local, tmp_path_factory):
    return battery.template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def label_project(ray_local, tmp_path_factory):
    return battery.label_template(tmp_path_factory.mktemp("label-template"))


@pytest.mark.parametrize("case", battery.CASES, ids=lambda case: case.name)
def test_bad_input(case, ray_local, tmp_path, request):
    if case.gpu_free and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.needs_template:
        request.getfixturevalue("template_run")
    if case.needs_label:
        request.getfixturevalue("label_project")
    outcome = battery.check(case, tmp_path)
    assert outcome.exit == case.exit, outcome.stderr
    assert not outcome.traceback, outcome.stderr
    assert outcome.intact, "the case's files changed, or a file outside them"
    assert not outcome.leftovers, f"processes left running: {outcome.leftovers}"
    assert outcome.seconds < 60
    assert outcome.clean, outcome.stderr + outcome.stdout


def test_the_battery_covers_every_class_several_times():
    assert len(battery.CASES) >= 150


def test_the_planted_pickle_is_live(tmp_path):
    """The battery's planted CIFAR batch and checkpoint would run their command (create PWNED) under a
    plain unpickler; their cases pass only because autoal refuses them before anything runs."""
    import pickle

    payload = battery.planted_pickle(tmp_path)
    pickle.loads(payload)  # the payload is live: a plain unpickler runs it
    assert (tmp_path / "PWNED").exists()
