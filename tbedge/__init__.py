"""tbedge: offline tuberculosis screening of chest X-rays at the edge."""

import os

# ONNX Runtime's telemetry resolves a Microsoft host every few seconds and writes a device id under
# ~/.cache; a screening box must stay offline. ORT reads this when it is imported, so it is set here,
# before any entry point (tbedge, python -m tbedge, python -m tbedge.services.watch) can import it; forced,
# not defaulted: no setting turns telemetry on for a tool that holds patient films.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
