"""Results written by screen and watch validate against tbedge.schema.JSON_SCHEMA; the validator used
(jsonschema when installed, else the small one in watch_support) rejects broken results."""

from __future__ import annotations

import json

import pytest
from watch_support import real_images, schema_errors, validate_result

from tbedge import schema


def _good() -> dict:
    r = schema.Result(input="a.png", sha256="0" * 64, status="ok", tb_probability=0.42, tb_score=42.0,
                      class_probabilities={"normal": 0.5, "tb": 0.42, "other": 0.08}, triage="refer",
                      threshold=0.3, timing_ms={"decode": 1.0, "total": 2.0})
    return json.loads(r.to_json())


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("sha256"),
    lambda d: d.update(sha256="XYZ"),
    lambda d: d.update(status="maybe"),
    lambda d: d.update(reason="bogus"),
    lambda d: d.update(tb_score=101),
    lambda d: d.update(tb_probability=-0.1),
    lambda d: d.update(qa_flags=["nope"]),
    lambda d: d.update(timing_ms={"nap": 1.0}),
    lambda d: d.update(schema_version="0.9"),
    lambda d: d["class_probabilities"].pop("tb"),
    lambda d: d.update(duplicate_of=3),
])
def test_validator_rejects_broken_results(mutate):
    d = _good()
    assert schema_errors(d, schema.JSON_SCHEMA) == []
    mutate(d)
    assert schema_errors(d, schema.JSON_SCHEMA)


def test_screen_and_watch_outputs_validate(data_root, tiny_bundle, tmp_path):
    from tbedge.services.screen import screen
    from tbedge.services.watch import watch

    inp = tmp_path / "in"
    inp.mkdir()
    for i, p in enumerate(real_images(data_root, 4, seed=30)):
        (inp / f"{i}.png").write_bytes(p.read_bytes())
    (inp / "empty.png").write_bytes(b"")
    (inp / "text.png").write_text("not an image")
    screen([inp], tmp_path / "s.jsonl", engine=tiny_bundle, backend="onnxruntime", batch=2, threads=1)
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        validate_result(json.loads(line))
    assert watch(inp, tmp_path / "out", tiny_bundle, backend="onnxruntime", batch=2, threads=1, once=True,
                 stable_seconds=0.05, min_free_mb=1) == 0
    files = list((tmp_path / "out" / "results").glob("*.json"))
    assert len(files) == 6
    statuses = set()
    for f in files:
        d = json.loads(f.read_text())
        validate_result(d)
        statuses.add(d["status"])
    assert statuses == {"ok", "rejected"}
