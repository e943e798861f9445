import os

import pytest
import torch


def missing_part(reason: str, module: bool = False):
    """A real part a test needs (Chromium, LaTeX, a Slurm cluster) is missing: skipped with ``reason`` here, but a
    failure in CI (``CI=true``), where `.ci/run` installs every part, so that CI never passes without those tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own data cache, so no test depends on another's leftovers."""
    monkeypatch.setenv("VAEHELPERS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)


FIXED_RATES = {"fp32": 1000.0, "bf16": 500.0, "fp32 compiled": 1100.0, "bf16 compiled": 550.0}
"""What the speed probe "measures" in this process in tests that are not about it: fp32 faster, as on a CPU
without native bf16, so that ``precision="auto"`` resolves alike on every machine (a tiny model's measured
rates are noise). Tests marked ``real_probe`` (tests/test_speed.py) measure for real, and so do the processes a
test starts itself where they decide (notebook kernels given precision "auto", Slurm tasks)."""


def fixed_rates(rates: dict, compile_s: float = 2.0):
    """A stand-in for :func:`vaehelpers.speed.measure` that "measures" ``rates``."""
    from vaehelpers import speed

    def measure(device, shape, candidates, cache_dir, rounds=3, seconds=0.5):
        probe = speed.Probe(speed.probe_key(device, shape))
        probe.rates.update({c: rates[c] for c in candidates if c in rates})
        probe.compile_s.update({c.split()[0]: compile_s for c in candidates if "compiled" in c})
        return probe

    return measure


@pytest.fixture(autouse=True)
def _fixed_speed_probe(request, monkeypatch):
    if request.node.get_closest_marker("real_probe"):
        return
    from vaehelpers import speed

    monkeypatch.setattr(speed, "measure", fixed_rates(FIXED_RATES))


TINY = ["--data", "builtin:150", "--epochs", "2", "--base-channels", "8", "--latent-dim", "4", "--batch-size", "50"]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A whole report on tiny runs (reports/ of a tmp folder): for the command line's tests and the browser's."""
    from vaehelpers.__main__ import main

    root = tmp_path_factory.mktemp("report")
    assert main(["report", *TINY, "--runs-dir", str(root / "runs"), "--out", str(root / "out")]) == 0
    return root / "out"
