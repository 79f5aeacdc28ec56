"""tbedge: offline tuberculosis screening of chest X-rays at the edge."""

__version__ = "0.1.0"
