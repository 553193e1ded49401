"""The bad-input battery: every way a hostile but fair user can feed autoal bad input, each of
which must end in one `autoal: error:` line and exit 2 (or a clean exit where that is right),
with no traceback, nothing given changed, nothing outside touched, nothing left running.

    .venv/bin/python -m tests.bad_inputs [--only SUBSTRING]    # prints the table

tests/test_bad_inputs.py runs every case. As root, read-only cases bind-mount a directory
read-only (a real EROFS); otherwise they remove write permission (EACCES).
"""
from .cases import CASES as ORIGINAL
from .harness import Case, Outcome, check, label_template, planted_pickle, template
from .hostile import HOSTILE

CASES = ORIGINAL + HOSTILE

__all__ = ["CASES", "Case", "Outcome", "check", "label_template", "planted_pickle", "template"]
