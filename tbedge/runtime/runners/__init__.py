"""Inference backends behind one Runner protocol. TensorRT and tritonclient are imported lazily, never here."""

from .base import Runner, RunnerUnavailable, TensorSpec

__all__ = ["Runner", "RunnerUnavailable", "TensorSpec"]
