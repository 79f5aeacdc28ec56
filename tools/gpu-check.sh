#!/bin/sh
# One command for a GPU host (Jetson Orin, or any NVIDIA GPU):
#   tools/gpu-check.sh [IMAGE_FOLDER] [--n 8] [--only SECTION,...] [--json out.json]
# Checks the CUDA kernels against tbedge's CPU (OpenCV) preprocessing on real images, the lung-masked
# classifier input against lungs.classifier_input, and the device pipeline (Pipeline with the
# TensorRT backend's memory path) against the CPU pipeline; times transfers and kernels; and - where
# TensorRT is installed - builds fp32 plans with `tbedge build-engine`, compares them with ONNX
# Runtime, benchmarks them and runs the whole TensorRT device pipeline against the CPU pipeline
# (decisions equal, tb_probability within 1e-3). Sections without their prerequisites are reported
# as skipped, with the reason. Exit status 1 when any check that ran failed. docs/gpu.md.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-python3}"
if [ -x "$repo/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then py="$repo/.venv/bin/python"; fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
[ -f /etc/nv_tegra_release ] && head -n 1 /etc/nv_tegra_release || true
cd "$repo"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$here/gpu_check.py" "$@"
