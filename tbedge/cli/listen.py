"""``tbedge listen``: the DICOM Storage SCP that scores films (services/listen.py, docs/dicom.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import BACKEND, BATCH, ENGINE, SERVER, STRICT, THREADS, app, backend_arg


@app.command()
def listen(
    out: Path = typer.Option(..., "--out", help="Results folder (as `tbedge watch`'s, plus received/ and outbox)."),
    ae_title: str = typer.Option("TBEDGE", "--ae-title", help="This node's AE title."),
    port: int = typer.Option(11112, "--port", min=1, max=65535, help="TCP port to listen on."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on (127.0.0.1: this host only)."),
    allow_ae: list[str] = typer.Option(None, "--allow-ae", help="Calling AE title allowed (repeat; default any)."),
    max_associations: int = typer.Option(4, "--max-associations", min=1, help="Concurrent associations."),
    max_pdu: int = typer.Option(262144, "--max-pdu", min=0, help="Largest PDU received, bytes (0 = unlimited)."),
    max_dataset_mb: float = typer.Option(64.0, "--max-dataset-mb", help="Larger datasets are refused (0xA700)."),
    send_to: str = typer.Option(None, "--send-to", help="HOST:PORT:AE: C-STORE each film's SR and overlay SC "
                                "there (durable outbox, retried with backoff)."),
    calling_ae: str = typer.Option("TBEDGE", "--calling-ae", help="Our AE title when sending results."),
    retry_max_s: float = typer.Option(300.0, "--retry-max-seconds", help="Longest wait between send retries."),
    engine: Path = ENGINE,
    backend: str = BACKEND,
    server: str = SERVER,
    batch: int = BATCH,
    threads: int = THREADS,
    retention_days: int = typer.Option(30, "--retention-days", help="Keep processed films N days (0 = forever)."),
    min_free_mb: float = typer.Option(500.0, "--min-free-mb", help="Pause scoring below this free space."),
    max_attempts: int = typer.Option(3, "--max-attempts", min=1, help="Tries (process deaths included) before "
                                     "a film that never finishes is quarantined as an error."),
    strict_engine: bool = STRICT,
):
    """Receive chest films by DICOM C-STORE and score each once (the journal of `tbedge watch`).

    Example: tbedge listen --ae-title TBEDGE --port 11112 --out /results --send-to pacs:104:PACS
    """
    from ..services.listen import ListenConfig
    from ..services.listen import listen as run_listen

    lcfg = ListenConfig(ae_title=ae_title, host=host, port=port, allowed_aes=allow_ae or None,
                        max_associations=max_associations, max_pdu=max_pdu, max_dataset_mb=max_dataset_mb,
                        send_to=send_to, calling_ae=calling_ae, retry_max_s=retry_max_s)
    raise typer.Exit(run_listen(out, lcfg, engine, backend_arg(backend, server), batch, threads,
                                retention_days or None, min_free_mb, max_attempts=max_attempts,
                                strict_engine=strict_engine))
