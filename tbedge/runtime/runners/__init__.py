"""Inference backends behind one Runner protocol. TensorRT is imported lazily, never here."""

from .base import Runner, TensorSpec

__all__ = ["Runner", "TensorSpec"]
