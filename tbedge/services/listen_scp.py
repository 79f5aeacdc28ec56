"""``tbedge listen``'s Storage SCP: which objects it accepts, and the C-STORE handler that makes each one
durable (written atomically under RESULTS/received and journaled) before it answers Success.

Nothing from the network chooses a path: a file is named by its SOP Instance UID only when that is a valid
UID (digits and dots, at most 64 characters), else by the content's sha256. Logs name the calling AE
title, its address and the SOP Instance UID, never a patient attribute.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ..fsio import atomic_write_bytes, fsync_dir, sha256_file
from .journal import Journal
from .watch_store import _UID_RE

log = logging.getLogger("tbedge.listen")

# Chest films: CR, DX (DR) for presentation and for processing, and single-frame Secondary Capture.
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
VERIFICATION = "1.2.840.10008.1.1"

# C-STORE statuses (PS3.4 Annex B.2.3; the C000-CFFF "cannot understand" range is the SCP's own).
SUCCESS = 0x0000
REFUSED_SOP_CLASS = 0x0122  # SOP Class not supported: not a chest-film image
OUT_OF_RESOURCES = 0xA700  # the dataset is larger than --max-dataset-mb, or RESULTS cannot take it
DOES_NOT_MATCH = 0xA900  # the dataset's SOP class is not the one the request announced
CANNOT_UNDERSTAND = 0xC000  # the dataset cannot be parsed, or it lacks its UIDs
LATERAL_VIEW = 0xC001  # a lateral view: only frontal (PA/AP) films are scored
MULTI_FRAME = 0xC002  # more than one frame
LATERAL_POSITIONS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LLO", "RLO"}


@dataclass
class Refusal(Exception):
    status: int
    why: str  # short, no patient data: it travels back as the Error Comment (64 characters at most)


def safe_name(uid: str, sha256: str) -> str:
    """The file name for a received instance: the UID when it is one, else the content hash."""
    return uid if _UID_RE.match(uid) and len(uid) <= 64 else sha256


def check_dataset(ds, announced_class: str) -> str:
    """Raise :class:`Refusal` unless ``ds`` is a single-frame frontal chest film; returns its SOP Instance UID."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid or not sop_class:
        raise Refusal(CANNOT_UNDERSTAND, "no SOP Class or SOP Instance UID")
    if sop_class != announced_class:
        raise Refusal(DOES_NOT_MATCH, "SOP Class differs from the request")
    if "PixelData" not in ds:
        raise Refusal(CANNOT_UNDERSTAND, "no Pixel Data")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise Refusal(CANNOT_UNDERSTAND, "malformed Number of Frames") from None
    if frames > 1:
        raise Refusal(MULTI_FRAME, f"multi-frame ({frames}): one frontal film per instance")
    if _is_lateral(ds):
        raise Refusal(LATERAL_VIEW, "lateral view: only PA/AP chest films are scored")
    return uid


def _is_lateral(ds) -> bool:
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_POSITIONS:
        return True
    for item in ds.get("ViewCodeSequence", None) or []:
        if "lateral" in str(item.get("CodeMeaning", "")).lower():
            return True
    return False


class Receiver:
    """The C-STORE and C-ECHO handlers. ``on_stored`` is called after each new instance is journaled."""

    def __init__(self, out: Path, received: Path, max_dataset_bytes: int, on_stored=lambda: None):
        self.out = out
        self.received = received
        self.max_dataset_bytes = max_dataset_bytes
        self.on_stored = on_stored
        self._lock = threading.Lock()  # one write + journal entry at a time: the same UID may come twice

    def handle_echo(self, event) -> int:
        a = event.assoc.requestor
        log.info("C-ECHO from %s", peer(a))
        return SUCCESS

    def handle_store(self, event):
        from pydicom.dataset import Dataset

        a = event.assoc.requestor
        req = event.request
        uid = str(req.AffectedSOPInstanceUID or "")
        who = peer(a)
        try:
            status = self._store(event, str(req.AffectedSOPClassUID or ""))
        except Refusal as r:
            log.warning("C-STORE from %s uid=%s refused 0x%04X: %s", who, _log_uid(uid), r.status, r.why)
            ds = Dataset()
            ds.Status = r.status
            ds.ErrorComment = r.why[:64]
            return ds
        except Exception as e:  # noqa: BLE001 - any failure is a refusal; the listener goes on
            log.error("C-STORE from %s uid=%s failed (%s errno=%s)", who, _log_uid(uid), type(e).__name__,
                      getattr(e, "errno", None))
            return OUT_OF_RESOURCES
        log.info("C-STORE from %s uid=%s %s", who, _log_uid(uid), status)
        return SUCCESS

    def _store(self, event, announced_class: str) -> str:
        if announced_class not in IMAGE_SOP_CLASSES:
            raise Refusal(REFUSED_SOP_CLASS, "not a chest film SOP Class (CR, DX, SC)")
        size = len(event.request.DataSet.getbuffer())
        if size > self.max_dataset_bytes:
            raise Refusal(OUT_OF_RESOURCES, f"dataset of {size} bytes over the limit")
        try:
            uid = check_dataset(event.dataset, announced_class)
            data = event.encoded_dataset(include_meta=True)
        except Refusal:
            raise
        except Exception:  # noqa: BLE001 - a dataset pydicom cannot read
            raise Refusal(CANNOT_UNDERSTAND, "the dataset cannot be parsed") from None
        return self._write(uid, data)

    def _write(self, uid: str, data: bytes) -> str:
        """Write atomically and journal; an identical instance already here is acknowledged as it is."""
        sha = hashlib.sha256(data).hexdigest()
        name = safe_name(uid, sha)
        with self._lock:
            path = self.received / f"{name}.dcm"
            if path.exists():
                if sha256_file(path) == sha:
                    return "accepted (already received, not yet scored)"
                path = self.received / f"{name}_{sha[:12]}.dcm"  # same UID, other content: keep both
                if path.exists():
                    return "accepted (already received, not yet scored)"
            atomic_write_bytes(path, data)
            fsync_dir(self.received)
            st = path.stat()
            with Journal(self.out / "journal.sqlite") as j:
                j.add(sha, str(path), path.relative_to(self.received).as_posix(), st.st_size, st.st_mtime_ns)
        self.on_stored()
        return "accepted"


def peer(a) -> str:
    """``AE_TITLE address:port`` with anything but printable ASCII replaced (AE titles come from the network)."""
    title = "".join(c if " " <= c <= "~" else "?" for c in str(a.ae_title))[:16]
    return f"{title.strip() or '(none)'} {a.address}:{a.port}"


def _log_uid(uid: str) -> str:
    return uid if _UID_RE.match(uid) and len(uid) <= 64 else "(invalid)"


def recover_received(received: Path, journal: Journal) -> int:
    """At start: journal the instances a crash left written but not journaled, and drop temp files."""
    open_srcs = journal.open_srcs()
    n = 0
    for p in sorted(received.iterdir()):
        if p.name.startswith("."):
            p.unlink(missing_ok=True)  # an atomic write cut short: never acknowledged
            continue
        if p.is_file() and str(p) not in open_srcs:
            st = p.stat()
            journal.add(sha256_file(p), str(p), p.name, st.st_size, st.st_mtime_ns)
            n += 1
    return n


def build_ae(ae_title: str, receiver: Receiver, *, allowed_aes: list[str] | None, max_associations: int,
             max_pdu: int, timeout_s: float):
    """A pynetdicom AE with Verification and Storage SCP contexts and the refusal limits set."""
    from pynetdicom import AE, AllStoragePresentationContexts

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(VERIFICATION)
    for cx in AllStoragePresentationContexts:  # every storage class: others get a clear 0x0122, not a reject
        ts = list(TRANSFER_SYNTAXES) if cx.abstract_syntax in IMAGE_SOP_CLASSES else list(TRANSFER_SYNTAXES)[:2]
        ae.add_supported_context(cx.abstract_syntax, ts)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = max_pdu
    ae.require_calling_aet = list(allowed_aes or [])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines can dump headers
    return ae


def handlers(receiver: Receiver) -> list:
    from pynetdicom import evt

    def on_rejected(event) -> None:
        log.warning("association from %s rejected (AE title not allowed, or too many associations)",
                    peer(event.assoc.requestor))

    def on_aborted(event) -> None:
        log.warning("association with %s aborted", peer(event.assoc.requestor))

    return [(evt.EVT_C_ECHO, receiver.handle_echo), (evt.EVT_C_STORE, receiver.handle_store),
            (evt.EVT_REJECTED, on_rejected), (evt.EVT_ABORTED, on_aborted)]
