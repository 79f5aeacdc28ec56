"""Train the polarity/orientation layout model (``tbedge/runtime/orientation.py``) and report it per site.

Every film is taken as upright with normal polarity (true of every set in ../shared/data), and mirrored
left-right as well. The model's symmetry makes that enough: an inverted or upside-down copy of a film
gets the same four scores, permuted. The fit is a softmax regression over those four scores (numpy,
full-batch Adam, L2; deterministic), small enough to run in seconds and be read whole.
``leave_one_site_out`` fits without each site and scores that site's films in all four forms: the
figures the flag threshold is chosen on (docs/reason-codes.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import datasets
from ..runtime import orientation as O
from ..runtime.imaging import load_image

L2 = 1e-3
STEPS = 400


def grids(samples: list[datasets.Sample], progress: bool = True) -> np.ndarray:
    """(n, GRID, GRID) layout grids of the films, as the runtime computes them."""
    out = np.zeros((len(samples), O.GRID, O.GRID), np.float32)
    for i, s in enumerate(samples):
        out[i] = O.layout(load_image(s.path, check_polarity=False).pixels)
        if progress and (i + 1) % 1000 == 0:
            print(f"  layouts {i + 1}/{len(samples)}", flush=True)
    return out


def fit(g: np.ndarray, l2: float = L2, steps: int = STEPS, lr: float = 0.05) -> np.ndarray:
    """Upright grids (and their mirrors) -> w, maximising P(upright)."""
    x = O.hypothesis_rows(np.concatenate([g, g[:, :, ::-1]]).astype(np.float64))  # (n, 4, F)
    w, m, v = (np.zeros(x.shape[2]) for _ in range(3))
    for t in range(1, steps + 1):
        d = O.softmax(x @ w)
        d[:, 0] -= 1.0
        grad = np.einsum("nk,nkf->f", d, x) / len(x) + l2 * w
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        w -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return w.astype(np.float32)


def rates(g: np.ndarray, w: np.ndarray) -> dict:
    """Rates of the runtime's decisions (``orientation.decide``) on upright grids ``g`` (and their mirrors)
    made into each of the four forms."""
    g = np.concatenate([g, g[:, :, ::-1]])
    # Each hypothesis's transform is its own inverse, so the grid a hypothesis would turn upright is also
    # the upright film made into that form.
    forms = O.hypothesis_rows(g).reshape(len(g), len(O.HYPOTHESES), O.GRID, O.GRID)
    out = {}
    for k, form in enumerate(O.HYPOTHESES):
        p = O.softmax(O.hypothesis_rows(forms[:, k]) @ w)
        d = np.array([O.decide(O.Layout(tuple(r))) for r in p])
        out[form] = {"inverted": round(float(d[:, 0].mean()), 4), "flagged": round(float(d[:, 1].mean()), 4)}
    return out


def leave_one_site_out(g: np.ndarray, sites: np.ndarray) -> dict:
    return {site: {"films": int((sites == site).sum()), **rates(g[sites == site], fit(g[sites != site]))}
            for site in sorted(set(sites))}


def train_orientation(data: Path, out: Path, sets: str = "all") -> dict:
    samples = datasets.discover(data, sets=sets)
    t0 = time.time()
    print(f"orientation: {len(samples)} films ({sets}); computing layouts", flush=True)
    g = grids(samples)
    sites = np.array([s.site for s in samples])
    loso = leave_one_site_out(g, sites)
    w = fit(g)
    meta = {"grid": O.GRID, "thumb": O.THUMB, "hypotheses": list(O.HYPOTHESES), "sets": sets,
            "films": {s: int((sites == s).sum()) for s in sorted(set(sites))}, "l2": L2, "steps": STEPS,
            "thresholds": {"inverted_p": O.INVERTED_P, "flipped_p": O.FLIPPED_P},
            "leave_one_site_out": loso, "training_fit": rates(g, w), "seconds": round(time.time() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, w=w, meta=np.array(json.dumps(meta)))
    tmp.replace(out)
    return meta
