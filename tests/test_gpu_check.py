"""scripts/gpu-check.sh, exercised on the CPU with tiny settings so that its own code runs in CI."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the script's whole path: a pytest run, a report and a bench
def test_gpu_check_script_runs_end_to_end_on_the_cpu_with_tiny_settings(tmp_path):
    env = dict(os.environ, DEVICE="cpu", TINY="1", GPU_CHECK_DIR=str(tmp_path), PYTHON=sys.executable)
    result = subprocess.run(["bash", "scripts/gpu-check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert re.search(r"SKIPPED \[\d+\] .*no CUDA GPU visible to PyTorch", out)  # the cuda tests say why they skip
    assert (tmp_path / "reports" / "report.html").exists()
    per_run = re.findall(r"^(.+) \((bf16|fp32), cpu\): 2 epochs of [\d,]+ images in [\d.]+ s, [\d,]+ images/s, "
                         r"peak GPU memory 0 MiB, final validation -ELBO [\d,.]+ nats$", out, re.M)
    assert len(per_run) == 6 and "all 6 runs:" in out
    assert re.search(r"^bf16 - fp32: -ELBO [-+][\d.]+ %, PSNR [-+][\d.]+ dB", out, re.M)
