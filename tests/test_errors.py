"""The one-sentence errors: each shows in a notebook as ``Name: sentence`` through the one base class, and is still
caught as what it was before it had that base."""

import errno
import pickle
from pathlib import Path

import pytest

from vaehelpers.devices import GPUUnusable
from vaehelpers.errors import OneSentenceError
from vaehelpers.files import NotWritable
from vaehelpers.params import ParameterError
from vaehelpers.report import RunsMissing
from vaehelpers.slurm_record import RecordDamaged
from vaehelpers.store import RunDamaged
from vaehelpers.sweep import SweepFailed
from vaehelpers.train import TrainingDiverged
from vaehelpers.trust import Untrusted

SENTENCE = "Not enough space in /runs for the run: 3.0 GB needed, 1.0 GB free; free some or give another --runs-dir."

ERRORS = [  # (the error as the package raises it, the base its callers catch)
    (NotWritable(errno.ENOSPC, SENTENCE), OSError),
    (ParameterError(SENTENCE), ValueError),
    (RunsMissing(SENTENCE), RuntimeError),
    (RunDamaged(SENTENCE), ValueError),
    (RecordDamaged(SENTENCE), ValueError),
    (SweepFailed(SENTENCE), RuntimeError),
    (Untrusted(SENTENCE), RuntimeError),
    (TrainingDiverged(SENTENCE), RuntimeError),
    (GPUUnusable(SENTENCE), RuntimeError),
]


def test_only_the_base_renders_a_one_sentence_error():
    """Every ``_render_traceback_`` in the package is the base class's: one way a one-sentence error shows."""
    import re

    package = Path(__file__).resolve().parents[1] / "vaehelpers"
    written = {p.name for p in package.glob("*.py") if re.search(r"def _render_traceback_", p.read_text())}
    assert written == {"errors.py"}


@pytest.mark.parametrize("error, base", ERRORS, ids=[type(e).__name__ for e, _ in ERRORS])
def test_a_one_sentence_error_shows_as_its_name_and_sentence_and_keeps_its_base(error, base):
    name = type(error).__name__
    assert error._render_traceback_() == [f"{name}: {SENTENCE}"]  # what IPython shows in place of a traceback
    assert isinstance(error, base) and isinstance(error, OneSentenceError)
    assert "_render_traceback_" not in vars(type(error))  # written once, in the base
    copy = pickle.loads(pickle.dumps(error))  # as a worker process hands it back
    assert type(copy) is type(error) and copy._render_traceback_() == [f"{name}: {SENTENCE}"]


def test_not_writable_keeps_its_errno():
    assert NotWritable(errno.EROFS, SENTENCE).errno == errno.EROFS


def test_every_one_sentence_error_of_the_package_is_tested_above():
    """A new subclass of the base is added to ERRORS with the base its callers catch."""
    import importlib
    import pkgutil

    import vaehelpers

    for module in pkgutil.iter_modules(vaehelpers.__path__):
        if module.name != "__main__":
            importlib.import_module(f"vaehelpers.{module.name}")
    subclasses, todo = set(), [OneSentenceError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("vaehelpers.") and sub not in subclasses:
                subclasses.add(sub)
                todo.append(sub)
    assert subclasses == {type(e) for e, _ in ERRORS}
