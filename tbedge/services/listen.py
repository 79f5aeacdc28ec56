"""``tbedge listen --ae-title TBEDGE --port 11112 --out RESULTS``: a DICOM Storage SCP that scores films.

Received films are written atomically to ``RESULTS/received/<SOP Instance UID>.dcm`` and journaled
before the store is acknowledged (listen_scp.py); the loop of ``tbedge watch`` (watch_runner.Watcher, in
this process) scores them from that journal, so ``RESULTS`` looks exactly like a watch folder's results,
and a film arriving twice is scored once (by content hash). With ``send_to``, each film's Secondary
Capture and SR go to that node through a durable outbox (dicom_outbox.py). docs/dicom.md has the details.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TbedgeError
from .dicom_outbox import Destination, Outbox, Sender
from .listen_scp import Receiver, build_ae, handlers, log, recover_received
from .watch_runner import WatchConfig, Watcher, serve


@dataclass
class ListenConfig:
    ae_title: str = "TBEDGE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_aes: list[str] | None = None  # calling AE titles allowed (None or empty: any)
    max_associations: int = 4
    max_pdu: int = 262144  # bytes; 0 = unlimited
    max_dataset_mb: float = 64.0
    timeout_s: float = 30.0  # ACSE, DIMSE and network timeouts
    send_to: Destination | None = None
    calling_ae: str = "TBEDGE"
    retry_base_s: float = 2.0  # outbox backoff: base * 2**attempts ...
    retry_max_s: float = 300.0  # ... at most this

    def __post_init__(self):
        for title in [self.ae_title, self.calling_ae, *(self.allowed_aes or [])]:
            if not title or len(title) > 16 or not all(" " <= c <= "~" and c != "\\" for c in title):
                raise TbedgeError(f"not a valid AE title (1-16 printable characters): {title!r}")
        if isinstance(self.send_to, str):
            self.send_to = Destination.parse(self.send_to)


class Listener(Watcher):
    """A :class:`Watcher` whose INCOMING is RESULTS/received, filled by a Storage SCP in this process."""

    def __init__(self, cfg: WatchConfig, lcfg: ListenConfig, pipeline=None):
        super().__init__(cfg, pipeline)
        self.lcfg = lcfg
        self.server = None
        self.outbox: Outbox | None = None
        self.sender: Sender | None = None

    def _open(self) -> None:
        self.cfg.incoming.mkdir(parents=True, exist_ok=True)
        super()._open()
        n = recover_received(self.cfg.incoming, self.journal)
        if n:
            log.info("%d received film(s) journaled at start (written before a crash)", n)
        if self.lcfg.send_to is not None:
            self.outbox = Outbox(self.cfg.out / "outbox.sqlite")
            self.sender = Sender(self.cfg.out, self.outbox, self.lcfg.send_to, self.lcfg.calling_ae,
                                 self.lcfg.retry_base_s, self.lcfg.retry_max_s, self.lcfg.timeout_s)
            self.sender.start()
            if pending := self.outbox.pending():
                log.info("outbox: %d object(s) from before wait to be sent", pending)
        lc = self.lcfg
        receiver = Receiver(self.cfg.out, self.cfg.incoming, int(lc.max_dataset_mb * 2**20), self.wake.set)
        ae = build_ae(lc.ae_title, receiver, allowed_aes=lc.allowed_aes, max_associations=lc.max_associations,
                      max_pdu=lc.max_pdu, timeout_s=lc.timeout_s)
        self.server = ae.start_server((lc.host, lc.port), block=False,
                                      evt_handlers=handlers(receiver))
        log.info("listening as %s on %s:%d", lc.ae_title, lc.host, lc.port)

    def _close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.sender is not None:
            self.sender.stop.set()
            self.sender.poke()
            self.sender.join(timeout=self.lcfg.timeout_s + 5)
        if self.outbox is not None:
            self.outbox.close()
        super()._close()

    # The SCP journals every film itself; nothing else arrives in RESULTS/received.
    def _start_observer(self):
        return None

    def _rescan_due(self, now: float) -> bool:
        return False

    def _dicom_written(self, row, paths: list[Path]) -> None:
        if self.outbox is None:
            return
        for p in paths:
            self.outbox.add(p.relative_to(self.cfg.out).as_posix())
        self.sender.poke()


def listen(out: str | Path, lcfg: ListenConfig, engine: str | Path | None = None, backend: str = "auto",
           batch: int = 0, threads: int = 0, retention_days: int | None = 30, min_free_mb: float = 500.0,
           max_attempts: int = 3, strict_engine: bool = False, install_signal_handlers: bool = True) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
    out = Path(out)
    cfg = WatchConfig(incoming=out / "received", out=out, engine=Path(engine) if engine else None,
                      backend=backend, batch=batch, threads=threads, retention_days=retention_days,
                      min_free_mb=min_free_mb, max_attempts=max_attempts, dicom_out=True, use_events=False,
                      strict_engine=strict_engine)
    return serve(Listener(cfg, lcfg), "listen.log", install_signal_handlers)
