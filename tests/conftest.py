import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own data cache, so no test depends on another's leftovers."""
    monkeypatch.setenv("VAEHELPERS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)


TINY = ["--data", "builtin:150", "--epochs", "2", "--base-channels", "8", "--latent-dim", "4", "--batch-size", "50"]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A whole report on tiny runs (reports/ of a tmp folder): for the command line's tests and the browser's."""
    from vaehelpers.__main__ import main

    root = tmp_path_factory.mktemp("report")
    assert main(["report", *TINY, "--runs-dir", str(root / "runs"), "--out", str(root / "out")]) == 0
    return root / "out"
