import json

import pytest

from tbedge import schema


def test_result_roundtrip_and_validation():
    r = schema.Result(input="a.png", sha256="0" * 64, status="ok", tb_probability=0.42,
                      tb_score=schema.tb_score(0.42), class_probabilities={"normal": 0.5, "tb": 0.42, "other": 0.08},
                      triage=schema.triage_for(0.42, 0.3, []), threshold=0.3,
                      models={"lungs": schema.ModelInfo("lungs", "1", "a" * 64, "fp32", "onnxruntime")},
                      lungs=schema.LungsInfo([1, 2, 3, 4], 0.3), timing_ms={"decode": 1.0})
    d = json.loads(r.to_json())
    assert d["schema_version"] == schema.SCHEMA_VERSION
    assert d["triage"] == "refer" and d["tb_score"] == 42.0
    assert schema.Result.from_dict(d) == r


@pytest.mark.parametrize("kw", [{"status": "maybe"}, {"status": "rejected", "reason": "nope"},
                                {"status": "ok", "qa_flags": ["bogus"]}, {"status": "ok", "timing_ms": {"x": 1}}])
def test_result_rejects_unknown_names(kw):
    with pytest.raises(ValueError):
        schema.Result(input="a", sha256=None, **kw)


def test_implausible_lungs_always_refer():
    assert schema.triage_for(0.0, 0.5, ["lungs_implausible"]) == "refer"
    assert schema.triage_for(0.0, 0.5, ["orientation_suspected"]) == "refer"
    assert schema.triage_for(0.0, 0.5, ["inverted_suspected", "low_bit_depth"]) == "clear"
    assert schema.triage_for(0.1, 0.5, []) == "clear"


def test_error_reasons_name_every_stage():
    assert set(schema.ERROR_REASONS) == {f"error_{s}" for s in schema.STAGES}
