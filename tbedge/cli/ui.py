"""``tbedge ui``: the read-only results viewer (services/ui.py, docs/ui.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import app


@app.command()
def ui(
    results: Path = typer.Argument(..., help="A tbedge watch/listen RESULTS folder, or a tbedge screen results "
                                   "file (with its --overlays / --masks)."),
    port: int = typer.Option(8600, "--port", min=1, max=65535, help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs "
                             "--token."),
    token: str = typer.Option(None, "--token", help="Shared secret (16+ characters) a browser must present: "
                              "open the printed address once, a cookie keeps it."),
    show_patient: bool = typer.Option(False, "--show-patient", help="Show PatientName and PatientID from DICOM "
                                      "films (never from file names; off by default)."),
    threshold_report: Path = typer.Option(None, "--threshold-report", help="tbedge set-threshold's --report "
                                          "folder (default: RESULTS/set-threshold when it exists)."),
):
    """Worklist, film view, site panel and printouts in a browser, offline, read-only.

    Example: tbedge ui /srv/tbedge/results   (then open http://127.0.0.1:8600/)
    """
    from ..services.ui import serve

    serve(results, host, port, token, show_patient, threshold_report)
