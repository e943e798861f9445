import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own data cache, so no test depends on another's leftovers."""
    monkeypatch.setenv("VAEHELPERS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)
