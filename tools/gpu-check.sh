#!/bin/sh
# One command for a GPU host (Jetson Orin, or any NVIDIA GPU):
#   tools/gpu-check.sh [IMAGE_FOLDER] [--n 8] [--bundle DIR] [--json out.json]
# Checks the CUDA kernels against tbedge's CPU (OpenCV) preprocessing on real images, times
# transfers and kernels, and - where TensorRT is installed - builds plans, compares them with
# ONNX Runtime and benchmarks them. Sections without their prerequisites are reported as skipped,
# with the reason. Exit status 1 when any check that ran failed.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-python3}"
if [ -x "$repo/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then py="$repo/.venv/bin/python"; fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
[ -f /etc/nv_tegra_release ] && head -n 1 /etc/nv_tegra_release || true
cd "$repo"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$here/gpu_check.py" "$@"
