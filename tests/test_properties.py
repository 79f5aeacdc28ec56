"""Property tests (hypothesis, issue 21): crop geometry, the polarity check and output naming hold for any
input, not just the films we thought of. Marked `fuzz`; examples per test: 300 under CI=true, 60 otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tbedge.fsio import NAME_MAX_BYTES
from tbedge.outputs.files import output_stem
from tbedge.runtime import imaging, orientation
from tbedge.runtime import lungs as L

pytestmark = pytest.mark.fuzz
PROPS = settings(max_examples=300 if IN_CI else 60, deadline=None, derandomize=not IN_CI,
                 suppress_health_check=[HealthCheck.too_slow])
sides = st.integers(1, 6000)


@st.composite
def mask_boxes(draw):
    mh, mw = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    x0, y0 = draw(st.integers(0, mw - 1)), draw(st.integers(0, mh - 1))
    return (x0, y0, draw(st.integers(x0 + 1, mw)), draw(st.integers(y0 + 1, mh))), (mh, mw)


@PROPS
@given(mask_boxes(), sides, sides, st.floats(0, 0.5))
def test_native_box_is_inside_the_film_and_covers_the_mask_box(mb, nh, nw, margin):
    box, (mh, mw) = mb
    x0, y0, x1, y1 = L.bbox_to_native(box, (mh, mw), (nh, nw), margin)
    assert 0 <= x0 < x1 <= nw and 0 <= y0 < y1 <= nh
    # the mapped box contains the mask box scaled to native pixels (a margin only widens it)
    assert x0 <= box[0] * nw / mw + 1e-9 and x1 >= min(nw, box[2] * nw / mw) - 1e-9
    assert y0 <= box[1] * nh / mh + 1e-9 and y1 >= min(nh, box[3] * nh / mh) - 1e-9


@PROPS
@given(st.integers(imaging.MIN_SIDE, 6000), st.integers(imaging.MIN_SIDE, 6000), st.floats(0.05, 1.0))
def test_fallback_box_is_centred_and_non_empty(h, w, frac):
    """Over the sizes load_image lets through (a shorter side under MIN_SIDE is too_small)."""
    x0, y0, x1, y1 = L.fallback_box((h, w), frac)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert abs(x0 - (w - x1)) <= 1 and abs(y0 - (h - y1)) <= 1


@PROPS
@given(mask_boxes(), st.integers(8, 96))
def test_crop_and_its_lung_weights_have_the_classifier_size(mb, size):
    box, shape = mb
    img = np.linspace(0, 1, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    c = L.crop(img, box, size)
    assert c.shape == (size, size) and c.dtype == np.float32 and 0 <= c.min() and c.max() <= 1 + 1e-6
    mask = np.zeros(shape, np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 1
    w = L.mask_in_crop(mask, box, shape, size)
    assert w.shape == (size, size) and 0 <= w.min() and w.max() <= 1


films = arrays(np.uint8, st.tuples(st.integers(8, 200), st.integers(8, 200)))


@PROPS
@given(films)
def test_layout_rule_is_symmetric(img):
    """A film's negative and its upside-down copy get the film's probabilities with the hypotheses swapped,
    so the rule can never invert both a film and its negative, nor flag both it and its upright copy."""
    g, neg = orientation.layout(img, 1 / 255), orientation.layout(255 - img, 1 / 255)
    up = orientation.layout(np.ascontiguousarray(img[::-1]), 1 / 255)
    assume(g.any() and neg.any() and up.any())  # near-flat images sit on the flatness cut-off: rounding decides
    np.testing.assert_allclose(neg, -g, atol=2e-3)  # float32 rounding, amplified by normalising a near-flat grid
    if min(img.shape) >= orientation.THUMB:  # area averaging (shrinking) is flip-symmetric; upscaling is not
        np.testing.assert_allclose(up, g[::-1], atol=2e-3)
    p = orientation.classify_grid(g).probs
    np.testing.assert_allclose(orientation.classify_grid(-g).probs, [p[1], p[0], p[3], p[2]], atol=1e-5)
    np.testing.assert_allclose(orientation.classify_grid(g[::-1]).probs, [p[2], p[3], p[0], p[1]], atol=1e-5)
    assert abs(sum(p) - 1) < 1e-5
    invert = [orientation.decide(orientation.classify_grid(x))[0] for x in (g, -g)]
    assert not all(invert)


names = st.one_of(st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and "\0" not in s),
                  st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b)
                  .map(os.fsdecode))  # Linux names need not be UTF-8: they arrive surrogate-escaped
shas = st.text("0123456789abcdef", min_size=64, max_size=64)


@PROPS
@given(names, shas, shas)
def test_output_names_fit_and_differ_by_content(name, sha_a, sha_b):
    rel = Path(name + ".png")
    a, b = output_stem(rel, sha_a), output_stem(rel, sha_b)
    for suffix in ("_overlay.png", "_mask.png"):
        full = os.fsencode(a.name + suffix)
        assert len(full) + 1 + len(".tmp") <= NAME_MAX_BYTES  # room for the atomic write's temp name
    assert (a == b) == (sha_a[:12] == sha_b[:12])


def test_flat_image_has_no_layout():
    for v in (0, 4, 255):
        assert not orientation.layout(np.full((300, 200), v, np.uint8), 1 / 255).any()
    assert orientation.decide(orientation.classify_grid(np.zeros((16, 16), np.float32))) == (False, False)
