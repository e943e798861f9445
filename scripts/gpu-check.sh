#!/usr/bin/env bash
# The GPU check: the cuda tests, then the whole assignment end to end on the GPU (six runs of 100 epochs on
# 21,551 built-in faces, measurements, HTML), then per run: images/s, seconds, peak GPU memory, validation -ELBO;
# then bf16 against fp32 on the quick budget's weight-1 run.
# On a GPU machine without network, first bring the notebook stack: bash scripts/gpu-wheels.sh (here), then
# copy the project with .whl/ there and run: bash scripts/gpu-check.sh
# Without a GPU, exercise the script itself: DEVICE=cpu TINY=1 bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT_DIR=${GPU_CHECK_DIR:-gpu-check}
if [ -d .whl ]; then
	$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vaehelpers-site .whl/*.whl
	export PYTHONPATH=/tmp/vaehelpers-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${TINY:-0}" = 1 ]; then
	settings=(--data builtin:150 --epochs 2 --base-channels 8 --latent-dim 4 --batch-size 50 --no-pdf)
	compare=(--data builtin:150 --epochs 2)
else
	settings=(--data builtin:21551 --epochs 100)
	compare=()
fi
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA GPU')"
echo "== cuda tests"
$PY -m pytest -m cuda -q -rs -p no:cacheprovider tests/test_cuda.py
echo "== the assignment end to end: report ${settings[*]} --device $DEVICE"
$PY -m vaehelpers report "${settings[@]}" --device "$DEVICE" --runs-dir "$OUT_DIR/runs" --out "$OUT_DIR/reports"
echo "== per run"
$PY -m vaehelpers summary --runs-dir "$OUT_DIR/runs"
echo "== bf16 against fp32"
$PY -m vaehelpers bench --compare-precision "${compare[@]}" --device "$DEVICE" --runs-dir "$OUT_DIR/precision-runs"
