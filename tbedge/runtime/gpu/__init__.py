"""GPU preprocessing with cuda-python + NVRTC (Jetson Orin and discrete NVIDIA GPUs).

- ``plan``: pure host-side parts (OpenCV-exact resize tables, launch geometry, buffer layout,
  pinned-vs-mapped decision, version checks) - tested on any CPU.
- ``masked``: the lung-masked classifier input's host-side tables (mask warp rounded as this host's
  OpenCV rounds it, dilation disc, Gaussian taps) and a numpy reference of every kernel step.
- ``compile``: NVRTC compile of ``kernels.cu`` to PTX - runs without a GPU.
- ``device``: memory, streams, events, kernel launch over cuda-python.
- ``preprocess``: :class:`GpuPreprocessor`, the double-buffered pipeline front end.

cuda-python is imported inside functions only, so importing this package works on a CPU box.
The kernels are verified against tbedge's CPU path only where a GPU runs tests/test_cuda_kernels.py
or tools/gpu-check.sh; see docs/gpu.md.
"""

from .compile import KERNELS, NvrtcError, compile_ptx
from .plan import (
           AREA,
           LINEAR,
           MAPPED,
           PINNED,
           BufferPlan,
           ResizeTables,
           launch_1d,
           launch_2d,
           memory_mode,
           plan_buffers,
           resize_reference,
           resize_tables,
           value_map,
)
from .preprocess import GpuPreprocessor

__all__ = ["AREA", "KERNELS", "LINEAR", "MAPPED", "PINNED", "BufferPlan", "GpuPreprocessor", "NvrtcError",
           "ResizeTables", "compile_ptx", "launch_1d", "launch_2d", "memory_mode", "plan_buffers",
           "resize_reference", "resize_tables", "value_map"]
