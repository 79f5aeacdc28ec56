"""``tbedge listen`` against real software: Debian's Orthanc (a PACS that sends films and receives the
results), dcmtk's echoscu/storescu (an independent sender) and pynetdicom as a scripted SCU for the
refusals and the kill -9 burst. Everything stays on 127.0.0.1 and every wait is bounded.

The kill test runs the issue's 100 films x 10 kills (TBEDGE_LISTEN_FILMS, TBEDGE_LISTEN_KILLS; about 50 s
on 2 cores)."""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from dicom_factory import make_dicom, real_image
from listen_support import HOST, LISTEN_AE, ORTHANC_AE, TEST_AE, Listener, Orthanc, echo, storescu, wait_for

SC_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33"
PATIENT_MARKERS = ("Testperson", "Alice", "PID-TEST")
N_FILMS = int(os.environ.get("TBEDGE_LISTEN_FILMS", "100"))
N_KILLS = int(os.environ.get("TBEDGE_LISTEN_KILLS", "10"))
NAMES = ["CHNCXR_0001_0.png", "CHNCXR_0327_1.png", "CHNCXR_0002_0.png", "CHNCXR_0328_1.png"]


def films(data_root: Path, folder: Path, n: int, **kw) -> list[Path]:
    """``n`` real films as DICOM, alternating CR/DX and transfer syntaxes, each in its own study."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        px = real_image(data_root, NAMES[i % len(NAMES)])
        args = {"modality": ("CR", "DX")[i % 2], "encoding": ("explicit", "implicit", "jpeg_lossless_sv1")[i % 3]}
        args.update(kw)
        out.append(make_dicom(folder / f"film{i:03d}.dcm", px, **args))
    return out


def _uids(path: Path) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def _logs_clean(out: Path) -> None:
    text = "".join(p.read_text(errors="replace") for p in (out / "logs").glob("*.log*"))
    assert "C-STORE from" in text
    for m in PATIENT_MARKERS:
        assert m not in text, f"a patient attribute ({m}) reached the log"


def _results_in_orthanc(orthanc: Orthanc, study_uid: str, source_uid: str) -> bool:
    inst = orthanc.study_instances(study_uid)
    classes = {i["sop_class"] for i in inst}
    return {SC_CLASS, SR_CLASS} <= classes and source_uid in {i["uid"] for i in inst}


@pytest.fixture
def listener_factory(tiny_bundle, tmp_path):
    made: list[Listener] = []

    def make(send_to: str | None = None, *extra: str) -> Listener:
        lis = Listener(tmp_path / "results", tiny_bundle, send_to, *extra)
        made.append(lis)
        return lis

    yield make
    for lis in made:
        if lis.proc is not None and lis.proc.poll() is None:
            lis.close()


@pytest.fixture
def orthanc_factory(tmp_path):
    made: list[Orthanc] = []

    def make(listener_port: int) -> Orthanc:
        o = Orthanc(tmp_path / "orthanc", listener_port)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


def _scu_store(port: int, path: Path, calling: str = TEST_AE):
    """Status of one C-STORE of a file by pynetdicom, which sends the file's dataset bytes as they are
    (None: no association, or no answer)."""
    from pydicom import dcmread
    from pynetdicom import AE

    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title=calling)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 20
    assoc = ae.associate(HOST, port, ae_title=LISTEN_AE)
    if not assoc.is_established:
        return None
    try:
        st = assoc.send_c_store(path)
        return getattr(st, "Status", None)
    finally:
        assoc.release()


def _scu_find(port: int):
    """Status of a Patient Root C-FIND (None: the association or its context was refused)."""
    from pydicom import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=TEST_AE)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 20
    assoc = ae.associate(HOST, port, ae_title=LISTEN_AE)
    if not assoc.is_established:
        return None
    try:
        q = Dataset()
        q.QueryRetrieveLevel, q.PatientID = "PATIENT", "*"
        try:
            statuses = [st for st, _ in assoc.send_c_find(q, PatientRootQueryRetrieveInformationModelFind)]
        except ValueError:  # pynetdicom: no accepted presentation context for the class
            return None
        return getattr(statuses[-1], "Status", None) if statuses else None
    finally:
        assoc.release()


@pytest.mark.timeout(240)
def test_echo_refusals_and_keeps_serving(data_root, listener_factory, tmp_path):
    """C-ECHO; ten kinds refused with their status (wrong AE title, non-image SOP class, lateral by View Position
    and by View Code Sequence, multi-frame, oversized, no Pixel Data, a malformed dataset, a garbage
    association, a C-FIND), and the listener still answers C-ECHO."""
    lis = listener_factory().start()
    port = lis.port
    assert echo(port) == 0
    assert echo(port, calling="INTRUDER") != 0  # not on the allowlist: association rejected
    src = tmp_path / "src"
    good = films(data_root, src / "good", 1)[0]
    lateral = make_dicom(src / "lat.dcm", real_image(data_root), modality="DX", view_position="LL")
    multi = make_dicom(src / "multi.dcm", real_image(data_root), modality="DX", frames=2)
    ct = make_dicom(src / "ct.dcm", real_image(data_root), modality="CT")
    big = make_dicom(src / "big.dcm", (real_image(data_root).astype("uint16") * 16).repeat(3, 0).repeat(3, 1),
                     modality="DX", bits_stored=12)
    assert big.stat().st_size > 4 * 2**20  # over the listener's --max-dataset-mb 4
    raw = good.read_bytes()  # a good film's header up to its SOP Instance UID, then bytes that are no dataset
    at = raw.index(b"\x08\x00\x18\x00UI", 132)
    cut = at + 8 + int.from_bytes(raw[at + 6:at + 8], "little")
    junk = src / "junk.dcm"
    junk.write_bytes(raw[:cut] + b"\x10\x00\x10\x00PN\xff\x7f" + os.urandom(300))
    assert _scu_store(port, good, calling="INTRUDER") is None
    assert _scu_store(port, ct) == 0x0122
    assert _scu_store(port, lateral) == 0xC001
    assert _scu_store(port, multi) == 0xC002
    assert _scu_store(port, big) == 0xA700
    assert _scu_store(port, junk) in (0xC000, None)  # refused, or the association is aborted
    no_pixels = make_dicom(src / "nopix.dcm", real_image(data_root), modality="DX", with_pixel_data=False)
    assert _scu_store(port, no_pixels) == 0xC000  # an image SOP class without Pixel Data
    from pydicom import Dataset, dcmread

    ds = dcmread(make_dicom(src / "lat2.dcm", real_image(data_root), modality="DX", view_position=None))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10236", "SRT", "left lateral"
    ds.ViewCodeSequence = [code]
    ds.save_as(src / "lat2.dcm")
    assert _scu_store(port, src / "lat2.dcm") == 0xC001  # lateral by its View Code Sequence, no ViewPosition
    assert _scu_find(port) is None  # a query (C-FIND) is not a service tbedge offers: no context accepted
    with socket.create_connection((HOST, port), timeout=5) as s:  # a malformed association: garbage PDU
        s.sendall(b"\x01\x00\x00\x00\x00\xff" + os.urandom(64))
        s.settimeout(5)
        try:
            s.recv(100)
        except OSError:
            pass
    assert echo(port) == 0, "the listener stopped serving after the refusals"
    assert storescu(port, [good]).returncode == 0  # dcmtk sends a good film: accepted
    wait_for(lambda: len(lis.results()) == 1, 60, "the good film's result")
    names = {p.name for p in (lis.out / "processed").rglob("*.dcm")}
    assert names == {f"{_uids(good)[1]}.dcm"}  # refused objects were never written
    assert lis.close() == 0
    _logs_clean(lis.out)


@pytest.mark.timeout(300)
def test_orthanc_sends_films_and_gets_sr_and_sc_in_the_study(data_root, listener_factory, orthanc_factory, tmp_path):
    """Orthanc sends CR/DX films (C-STORE); dcmtk's storescu sends one more and one twice; tbedge scores each
    once and stores SR + SC back into Orthanc, in the source film's study."""
    lis = listener_factory()
    orthanc = orthanc_factory(lis.port)
    lis.send_to = f"{HOST}:{orthanc.dicom}:{ORTHANC_AE}"
    orthanc.start()
    lis.start()
    fs = films(data_root, tmp_path / "src", 4)
    ids = [orthanc.upload(p) for p in fs[:3]]
    orthanc.send_to_tbedge(ids)
    orthanc.upload(fs[3])  # in the PACS too, but it reaches tbedge from dcmtk's storescu
    assert storescu(lis.port, [fs[3]]).returncode == 0
    assert storescu(lis.port, [fs[0]]).returncode == 0  # the same instance again: scored once
    for p in fs:
        study, uid = _uids(p)
        wait_for(lambda s=study, u=uid: _results_in_orthanc(orthanc, s, u), 120, f"SR + SC of {uid} in Orthanc")
    wait_for(lambda: len(lis.results()) >= 4, 60, "results")
    res = lis.results()
    firsts = [r for r in res if r["status"] == "ok" and not r.get("duplicate_of")]
    assert sorted(r["sop_instance_uid"] for r in firsts) == sorted(_uids(p)[1] for p in fs)
    assert len(res) - len(firsts) <= 1  # the second copy: a duplicate result or none at all (still queued)
    for p in fs:  # exactly one SC and one SR per film in its study
        inst = orthanc.study_instances(_uids(p)[0])
        assert sorted(i["sop_class"] for i in inst if i["sop_class"] in (SC_CLASS, SR_CLASS)) == [SC_CLASS, SR_CLASS]
    assert lis.close() == 0
    _logs_clean(lis.out)


@pytest.mark.timeout(300)
def test_results_wait_in_the_outbox_while_orthanc_is_down(data_root, listener_factory, orthanc_factory, tmp_path):
    lis = listener_factory()
    orthanc = orthanc_factory(lis.port)
    lis.send_to = f"{HOST}:{orthanc.dicom}:{ORTHANC_AE}"
    lis.start()  # Orthanc is not running
    fs = films(data_root, tmp_path / "src", 2)
    assert storescu(lis.port, fs).returncode == 0
    wait_for(lambda: len(lis.results()) == 2, 90, "both films scored")
    db = lis.out / "outbox.sqlite"

    def outbox_tried() -> bool:
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT attempts, sent FROM outbox").fetchall()
        return len(rows) == 4 and all(a >= 2 and s is None for a, s in rows)

    wait_for(outbox_tried, 60, "the outbox to retry while Orthanc is down")
    orthanc.start()
    for p in fs:
        study, uid = _uids(p)
        wait_for(lambda s=study, u=uid: {SC_CLASS, SR_CLASS} <= {i["sop_class"] for i in orthanc.study_instances(s)},
                 60, f"SR + SC of {uid} after Orthanc came back")

    def outbox_empty() -> bool:  # Orthanc shows a film a moment before the SCU has its answer and records it
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM outbox WHERE sent IS NULL").fetchone()[0] == 0

    wait_for(outbox_empty, 60, "the outbox to record every film as sent")
    assert lis.close() == 0


@pytest.mark.timeout(600)
def test_kill9_during_a_burst_loses_no_acknowledged_film(data_root, listener_factory, tmp_path):
    """A sender (pynetdicom) sends a burst, retrying what was not acknowledged as a modality does; the
    listener is SIGKILLed N_KILLS times at random acknowledgement counts and restarted. Afterwards every
    acknowledged film has exactly one first result, and a copy that came again is marked a duplicate."""
    rng = random.Random(23)
    # Every kill counts as a try of the film being scored then; the poison-film rule (quarantine after
    # --max-attempts) must not fire on a test that kills on purpose.
    lis = listener_factory(None, "--max-attempts", str(N_KILLS + 2)).start()
    fs = films(data_root, tmp_path / "src", N_FILMS)
    kill_at = sorted(rng.sample(range(1, N_FILMS), min(N_KILLS, N_FILMS - 1)))
    acked: set[str] = set()
    pending = list(fs)
    sends = 0
    while pending:
        p = pending[0]
        st = _scu_store(lis.port, p)
        sends += 1
        if st == 0:
            acked.add(_uids(p)[1])
            pending.pop(0)
        if kill_at and len(acked) >= kill_at[0]:
            kill_at.pop(0)
            time.sleep(rng.uniform(0, 0.5))  # land anywhere: writing, journaling, scoring, finishing
            lis.kill()
            lis.start()
        assert sends < N_FILMS * 5, "the sender made no progress"
    want = {_uids(p)[1] for p in fs}
    assert acked == want

    def done() -> bool:
        return {r["sop_instance_uid"] for r in lis.results() if not r.get("duplicate_of")} >= want

    wait_for(done, 180, "a result for every acknowledged film")
    assert lis.close() == 0
    res = lis.results()
    firsts = [r["sop_instance_uid"] for r in res if not r.get("duplicate_of")]
    assert sorted(firsts) == sorted(want), "a film was scored twice or lost"
    assert all(r["status"] == "ok" for r in res)
    index = [json.loads(line) for line in (lis.out / "index.jsonl").read_text().splitlines()]
    assert len(index) == len(res)
    print(f"\nlisten kill test: {N_FILMS} films, {N_KILLS} kills, {sends} sends, {len(res)} results "
          f"({len(res) - len(firsts)} duplicates)")


@pytest.mark.timeout(120)
def test_association_limit(listener_factory):
    """--max-associations: one more association than the limit is refused while the others are open, and
    accepted again once one is released."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    lis = listener_factory(None, "--max-associations", "1").start()

    def associate():
        ae = AE(ae_title=TEST_AE)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
        return ae.associate(HOST, lis.port, ae_title=LISTEN_AE)

    first = associate()
    assert first.is_established
    try:
        second = associate()
        assert not second.is_established, "a second association beyond --max-associations 1 was accepted"
    finally:
        first.release()
    wait_for(lambda: echo(lis.port) == 0, 30, "C-ECHO once the first association is released")
    assert lis.close() == 0
