#!/usr/bin/env bash
# Download, on a machine with network, the notebook stack that scripts/gpu-check.sh needs on a GPU machine
# that has Python, PyTorch, NumPy, Matplotlib and Pillow but no network: wheels for the target's Python and
# platform go into .whl/ (ignored by git), and gpu-check.sh installs them there with pip --no-index.
# Usage: bash scripts/gpu-wheels.sh [PYTHON_VERSION]   (default 3.12, the GPU machines' Python)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
	platforms+=(--platform "${tag}_x86_64")
done
rm -rf .whl
python3 -m pip download -q --only-binary=:all: --python-version "$version" --implementation cp "${platforms[@]}" \
	-d .whl papermill nbconvert ipykernel latex2mathml
# Already on the GPU machines (their image's package list, tensorboard included): left out to keep the set small.
for name in attrs certifi charset_normalizer click idna jinja2 markupsafe packaging psutil pygments python_dateutil \
	pyyaml requests tqdm typing_extensions urllib3; do
	rm -f .whl/"$name"-*.whl
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ for Python $version"
