import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vaehelpers import speed


WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""The xdist worker this process is ("gw0", ...), or None: `make test` and `make check` run two (`-n 2`)."""
THREADS = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2
"""PyTorch's threads in each test: two workers share the two cores of the development machine, one thread each."""


def pytest_addoption(parser):
    parser.addoption("--native-bf16", choices=("host", "other", "yes", "no"), default=None,
                     help="how every test, and every process a test starts, views this CPU's bf16 (through "
                          "VAEHELPERS_NATIVE_BF16): as its flags say (host, the default), the other way round "
                          "(other: CI's second pass), or native (yes) or absent (no) whatever they say")


def pytest_configure(config):
    """Fix the CPU's bf16 view for the whole run, so that no test's verdict depends on which CPU it runs on: the
    suite passes under both views (CI runs its quick tier under each)."""
    host = speed.cpu_flags_native_bf16()
    choice = config.getoption("--native-bf16") or ("host" if speed.NATIVE_BF16_ENV not in os.environ else None)
    if choice is not None:
        native = {"host": host, "other": not host, "yes": True, "no": False}[choice]
        os.environ[speed.NATIVE_BF16_ENV] = "1" if native else "0"
    try:
        native = speed.cpu_has_native_bf16()  # also checks a value the caller set
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    # No test, session fixture or process a test starts writes the user's own data cache (~/.cache/vaehelpers):
    # each test gets a folder of its own (_isolated_cache), and what runs before or around the tests this one.
    os.environ["VAEHELPERS_CACHE"] = config.cache_dir_for_run = tempfile.mkdtemp(prefix="vaehelpers-tests-")
    config.cpu_view = (f"native bf16 {'present' if native else 'absent'} "
                       f"({'as this CPU has it' if native == host else 'simulated: this CPU ' + ('has' if host else 'lacks') + ' it'}; "
                       f"{speed.NATIVE_BF16_ENV}={os.environ[speed.NATIVE_BF16_ENV]})")


def pytest_collection_modifyitems(config, items):
    """The longest work first, so that two xdist workers (`make check`: ``--dist loadgroup --no-loadscope-reorder``)
    end together: the Slurm cluster's tests (about 8 minutes on one worker), its 4.5-minute time-limit test first
    (a worker takes more work only when two of its tests are left), then the group that builds `built`."""
    def rank(item) -> tuple:
        group = item.get_closest_marker("xdist_group")
        if group and group.args[0] == "slurm":
            return 0, "time_limit" not in item.name
        return (1 if group else 2), False

    items.sort(key=rank)


def pytest_unconfigure(config):
    if hasattr(config, "cache_dir_for_run"):
        shutil.rmtree(config.cache_dir_for_run, ignore_errors=True)


def pytest_report_header(config):
    return f"CPU view: {config.cpu_view}"


def missing_part(reason: str):
    """A real part a test needs (Chromium, LaTeX, a Slurm cluster) is missing: skipped with ``reason`` here, but a
    failure in CI (``CI=true``), where `.ci/run` installs every part, so that CI never passes without those tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _one_kernel_cache(tmp_path_factory):
    """One TorchInductor kernel cache for the whole test run (vaehelpers.step.use_kernel_cache keeps a folder the
    environment names): a compile test loads the kernels an earlier one compiled, in seconds, not again."""
    from vaehelpers.torch_private import inductor_default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # importing parts of PyTorch sets it to the default
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(inductor_default_cache_dir()):
        shared = tmp_path_factory.getbasetemp().parent if WORKER else tmp_path_factory.getbasetemp()
        (shared / "inductor").mkdir(exist_ok=True)  # under xdist, one folder for all workers (beside their own)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(shared / "inductor")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own data cache, so no test depends on another's leftovers (those that read the shared
    runs of `two_runs` set it to theirs)."""
    monkeypatch.setenv("VAEHELPERS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(THREADS)


FIXED_RATES = {"fp32": 1000.0, "bf16": 500.0, "fp32 compiled": 1100.0, "bf16 compiled": 550.0}
"""What the speed probe "measures" in this process in tests that are not about it: fp32 faster, so that
``precision="auto"`` resolves alike on every machine (a tiny model's measured rates are noise), and which
precisions are native is the run's CPU view (``pytest_configure``), not the CPU's flags. Tests marked
``real_probe`` (tests/test_speed.py) measure for real, and so do the processes a test starts itself where they
decide (notebook kernels given precision "auto", Slurm tasks): those see the same CPU view."""


def fixed_rates(rates: dict, compile_s: float = 2.0):
    """A stand-in for :func:`vaehelpers.speed.measure_rates` that "measures" ``rates``."""
    def measure_rates(device, shape, candidates, cache_dir, rounds=3, seconds=0.5):
        probe = speed.Probe(speed.probe_key(device, shape))
        probe.rates.update({c: rates[c] for c in candidates if c in rates})
        probe.compile_s.update({c.split()[0]: compile_s for c in candidates if "compiled" in c})
        return probe

    return measure_rates


@pytest.fixture(autouse=True)
def _fixed_speed_probe(request, monkeypatch):
    if request.node.get_closest_marker("real_probe"):
        return
    monkeypatch.setattr(speed, "measure_rates", fixed_rates(FIXED_RATES))


def without_time(history: dict) -> dict:
    """A run's history (or one row of its history.csv) without the columns of the clock: what two runs of the same
    settings, or a resumed run and an uninterrupted one, share exactly."""
    return {k: v for k, v in history.items() if k not in ("seconds", "peak_gpu_mib")}


def interrupt_at(epoch: int | None = None):
    """An ``on_epoch_end`` callback that stops ``fit`` as Ctrl-C would (KeyboardInterrupt) at the end of ``epoch``
    (None: of the first epoch it sees)."""
    def interrupt(ended: int, row: dict) -> None:
        if epoch is None or ended == epoch:
            raise KeyboardInterrupt

    return interrupt


TINY = ["--data", "builtin:150", "--epochs", "2", "--base-channels", "8", "--latent-dim", "4", "--batch-size", "50"]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A whole report on tiny runs (reports/ of a tmp folder): for the command line's tests and the browser's."""
    from vaehelpers.__main__ import main

    root = tmp_path_factory.mktemp("report")
    torch.set_num_threads(THREADS)
    with pytest.MonkeyPatch.context() as patch:  # set up before any test's own fixtures: the stand-in probe here too
        patch.setattr(speed, "measure_rates", fixed_rates(FIXED_RATES))
        assert main(["report", *TINY, "--runs-dir", str(root / "runs"), "--out", str(root / "out")]) == 0
    return root / "out"


TWO_RUNS = dict(data="builtin:600", image_size=64, base_channels=16, latent_dim=20, epochs=6, batch_size=50,
                snapshot_epochs=[3, 6], panel_size=4, prior_samples=8, precision="fp32")
"""The settings of :func:`two_runs`: small, but trained enough that moving a latent slider changes the decoded
8-bit image, with 20 latent dimensions as in the report (about 3 s a run on 2 cores)."""


@dataclass(frozen=True)
class TwoRuns:
    runs_dir: Path  # the two finished runs and an unfinished one
    cache_dir: Path  # their data cache: set VAEHELPERS_CACHE to it to read their images without converting again
    kl1: object  # the finished Run of KL weight 1
    kl0: object  # the finished Run of KL weight 0


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory) -> TwoRuns:
    """Two finished runs (KL weight 1 and 0, ``TWO_RUNS``) and one cut after its first epoch, trained once for the
    whole test run: what the figures, the explorer, the browser and the run store's tests read. Tests must not
    change them: a test that damages a run copies its folder first."""
    from vaehelpers.train import fit

    root = tmp_path_factory.mktemp("two-runs")
    runs, cache = root / "runs", root / "cache"
    torch.set_num_threads(THREADS)
    with pytest.MonkeyPatch.context() as patch:  # set up before any test's own fixtures: the stand-in probe here too
        patch.setattr(speed, "measure_rates", fixed_rates(FIXED_RATES))
        kl1, kl0 = (fit(kl_weight=w, runs_dir=runs, cache_dir=cache, progress=False, **TWO_RUNS) for w in (1.0, 0.0))
        with pytest.raises(KeyboardInterrupt):  # an unfinished run, which the explorer does not offer
            fit(seed=1, runs_dir=runs, cache_dir=cache, progress=False, on_epoch_end=interrupt_at(1),
                checkpoint_every=0, **TWO_RUNS)
    return TwoRuns(runs, cache, kl1, kl0)
