"""The pipeline: one result per input in order, batch-independent scores, named failures."""

from pathlib import Path

import numpy as np
import pytest

from tbedge import schema
from tbedge.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def inputs(data_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    imgs = sorted((data_root / "shenzhen_montgomery_512" / "images").rglob("*.png"))[::97][:7]
    imgs.append(data_root / "shenzhen_fullres" / "images" / "normal" / "CHNCXR_0007_0.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    return [*imgs[:3], d / "empty.png", *imgs[3:], d / "text.png"]


def run(bundle, paths, batch):
    with Pipeline(bundle, backend="onnxruntime", batch=batch, threads=1) as p:
        return list(p.run(paths))


def test_one_result_per_input_in_order_with_reasons(tiny_bundle, inputs):
    out = run(tiny_bundle, inputs, 4)
    assert [s.result.input for s in out] == [str(p) for p in inputs]
    by_name = {Path(s.result.input).name: s.result for s in out}
    assert by_name["empty.png"].status == "rejected" and by_name["empty.png"].reason == "empty_file"
    assert by_name["text.png"].status == "rejected" and by_name["text.png"].reason == "not_an_image"
    ok = [s for s in out if s.result.status == "ok"]
    assert len(ok) == len(inputs) - 2
    for s in ok:
        r = s.result
        assert set(r.class_probabilities) == set(schema.CLASS_NAMES)
        assert abs(sum(r.class_probabilities.values()) - 1) < 1e-5
        assert r.tb_score == schema.tb_score(r.tb_probability)
        assert r.triage == schema.triage_for(r.tb_probability, r.threshold, r.qa_flags)
        assert set(r.timing_ms) == {*schema.STAGES, "total"}
        x0, y0, x1, y1 = r.lungs.bbox
        h, w = s.image.pixels.shape
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h  # native resolution box
        assert r.models["classifier"].backend == "onnxruntime"


def test_scores_do_not_depend_on_batching(tiny_bundle, inputs):
    a = run(tiny_bundle, inputs, 1)
    b = run(tiny_bundle, inputs, 5)
    for x, y in zip(a, b, strict=True):
        assert x.result.status == y.result.status
        if x.result.status == "ok":
            assert abs(x.result.tb_probability - y.result.tb_probability) < 1e-5
            np.testing.assert_allclose(x.cam, y.cam, atol=1e-5)
            assert x.result.lungs.bbox == y.result.lungs.bbox


def test_stage_failure_is_named_and_others_survive(tiny_bundle, inputs, monkeypatch):
    with Pipeline(tiny_bundle, backend="onnxruntime", batch=4, threads=1) as p:
        real = p.runners["classifier"].infer

        bad = {}

        def flaky(feed):  # the batch fails because of its second item; retried alone, only it fails
            x = feed["image"]
            if len(x) > 1 or np.array_equal(x[0], bad["x"]):
                raise RuntimeError("boom")
            return real(feed)

        items = [p._decode(Path(f)) for f in inputs[:3]]
        p._segment(items)
        bad["x"] = items[1].crop  # (S, S, C): the classifier input as made by lungs.classifier_input
        monkeypatch.setattr(p.runners["classifier"], "infer", flaky)
        out = list(p.process_items(items))
    assert [s.result.status for s in out] == ["ok", "error", "ok"]
    assert out[1].result.reason == "error_classify" and out[1].result.tb_score is None
    assert out[0].result.tb_score is not None


def test_lungs_only_pipeline_finds_the_same_lungs_without_a_classifier(tiny_bundle, inputs):
    """`tbedge segment` runs this mode: same lungs and reasons as the full pipeline, no classifier
    loaded or run, no score or triage made up."""
    full = run(tiny_bundle, inputs, 4)
    with Pipeline(tiny_bundle, backend="onnxruntime", batch=4, threads=1, roles=("lungs",)) as p:
        assert set(p.runners) == {"lungs"} and set(p.self_test_deviation) == {"lungs"}
        lungs = list(p.run(inputs))
    for a, b in zip(full, lungs, strict=True):
        assert (a.result.status, a.result.reason) == (b.result.status, b.result.reason)
        if b.result.status == "ok":
            assert b.result.lungs == a.result.lungs and np.array_equal(b.lungs.mask, a.lungs.mask)
            assert b.result.tb_probability is None and b.result.triage is None and b.cam is None
            assert ("lungs_implausible" in b.result.qa_flags) == b.lungs.fallback
    with pytest.raises(ValueError, match="roles"):
        Pipeline(tiny_bundle, roles=("classifier",))
