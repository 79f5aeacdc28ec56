"""Study: a lung U-Net of at most 1 GFLOP a film (issue 19, deliverable 5). Research, not product.

  python research/lung_light.py speed OUT_DIR      # random-weight candidates: GFLOPs, fp32/int8 ms a film
                                                   # (ONNX Runtime, 2 threads, batch 1)
  python research/lung_light.py e2e REF_LUNGS.onnx MODEL.keras OUT_DIR [PART]   # rule (2): the shipped classifier
                                                   # on each lung model's crops, the gate's comparison
  python research/lung_light.py qa OUT.json LUNGS.onnx...  # lung QA failures per site on every film
  python research/lung_light.py edges OUT.json LUNGS.onnx  # how far lung masks run along the side borders
  python research/lung_light.py paired OLD_EVAL_DIR NEW_EVAL_DIR  # paired AUC drop between two evaluations

Rules: research/selection-rules.md (15:25 UTC, issue 19 deliverable 5).

Timing needs no trained weights, so the architecture is chosen on cost before anything trains.
Rounds interleave the variants (noisy machine); medians are reported.
"""
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

CANDIDATES = {  # name -> build_unet kwargs
    "b12": {"base": 12},
    "b6": {"base": 6},
    "b12_s2": {"base": 12, "stem": 2},
    "b16_s2": {"base": 16, "stem": 2},
    "b8_s2": {"base": 8, "stem": 2},
}


def films(n=16):
    from tbedge import datasets
    from tbedge.runtime import lungs as L
    from tbedge.runtime.imaging import load_image
    ss = [s for s in datasets.discover(datasets.find_data_root()) if s.site == "shenzhen"][:n]
    return np.stack([L.preprocess(load_image(s.path).pixels, 256) for s in ss]).astype(np.float32)


def speed(out, rounds=7, reps=15):
    from tbedge.build import precision as P
    from tbedge.build.export import export_onnx
    from tbedge.calibration import ranges as R
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner
    from tbedge.train.classifier_models import count_macs
    from tbedge.train.unet import build_unet
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = films()
    rep, runners, stack = {}, {}, contextlib.ExitStack()
    for name, kw in CANDIDATES.items():
        m = build_unet(256, **kw)
        export_onnx(m, out / f"{name}.onnx")
        prep = P.prepare(out / f"{name}.onnx", out / f"{name}.prep.onnx")
        rng = R.compute_ranges(prep, [x[i:i + 8] for i in range(0, len(x), 8)])
        P.quantize(prep, rng, "cpu", out / f"{name}.int8.onnx")
        rep[name] = {"params": int(m.count_params()), "gflops": round(2 * count_macs(m) / 1e9, 3)}
        for prec in ("fp32", "int8"):
            path = out / (f"{name}.onnx" if prec == "fp32" else f"{name}.int8.onnx")
            runners[(name, prec)] = stack.enter_context(OnnxRuntimeRunner(path, threads=2))
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            r.infer({"image": x[:1]})
            t0 = time.perf_counter()
            for i in range(reps):
                r.infer({"image": x[i % len(x)][None]})
            times[k].append((time.perf_counter() - t0) / reps * 1e3)
    stack.close()
    for (name, prec), t in times.items():
        rep[name][f"{prec}_ms"] = round(float(np.median(t)), 2)
    print(json.dumps(rep, indent=1))
    (out / "speed.json").write_text(json.dumps(rep, indent=1))


def e2e(ref_lungs, model, out, part="val"):
    """Rule (2): the shipped fp32 classifier fed by crops of REF_LUNGS (.onnx) and of MODEL (.keras or .onnx),
    on the gate's films of PART (val for the decision, test only after it), with the gate's comparison."""
    from tbedge import datasets
    from tbedge.build import gate as G
    from tbedge.build.export import export_onnx
    from tbedge.runtime.bundle import default_bundle_path, load_bundle
    from tbedge.train.predict import load_keras
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    new = Path(model) if model.endswith(".onnx") else export_onnx(load_keras(model), out / "lungs.onnx")
    fp32 = load_bundle(default_bundle_path().parent / "fp32")
    thr = json.loads((default_bundle_path().parent / "keras" / "threshold.json").read_text())["value"]
    samples = datasets.split(datasets.discover(datasets.find_data_root()))[part]
    y = np.array([s.label == "tb" for s in samples])
    runs = [G._run(lungs, fp32.model_path("classifier"), samples, 2, fp32.input_size("classifier"), 1,
                   prep=fp32.crop_prep) for lungs in (Path(ref_lungs), new)]
    f, fails = G._compare(y, *runs, thr, G.N_BOOT, "")
    f.update(part=part, n=len(samples), n_tb=int(y.sum()), n_masks=len(runs[0].dice), failures=fails)
    for tag, r in (("ref", runs[0]), ("new", runs[1])):
        tb = np.array(r.tb)
        f[f"sens_{tag}"], f[f"spec_{tag}"] = float(np.mean(tb[y] >= thr)), float(np.mean(tb[~y] < thr))
    ranks = [np.argsort(np.argsort(r.tb)) for r in runs]  # how far the new crops reorder the classifier's scores
    f["spearman"] = float(np.corrcoef(*ranks)[0, 1])
    f["median_tb_ratio"] = float(np.median(np.array(runs[1].tb) / np.maximum(runs[0].tb, 1e-9)))
    print(json.dumps(f, indent=1))
    (out / f"e2e_{part}.json").write_text(json.dumps(f, indent=1))


def analysed(lungs):
    """(sample, LungResult) for every film in the data folder (all sets) through one lung ONNX, with progress."""
    from tbedge import datasets
    from tbedge.runtime import lungs as L
    from tbedge.runtime.imaging import load_image
    from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner
    samples = datasets.discover(datasets.find_data_root(), sets="all")
    with OnnxRuntimeRunner(lungs, threads=2) as r:
        for k, s in enumerate(samples):
            img = load_image(s.path).pixels
            yield s, L.analyse(r.infer({"image": L.preprocess(img)[None]})["mask"][0, ..., 0], img.shape)
            if k % 500 == 0:
                print(lungs, k, "/", len(samples), flush=True)


def qa(out, *lungs):
    """Lung QA failure rate (implausible mask: fallback crop, triage "refer") per site, every film in the data
    folder, for each lung ONNX given, with the failing rules counted."""
    from collections import Counter
    rep = {}
    for path in lungs:
        fails, reasons, n = Counter(), Counter(), Counter()
        for s, res in analysed(path):
            key = f"{s.site}/{'tb' if s.label == 'tb' else 'not_tb'}"
            n[key] += 1
            if res.fallback:
                fails[key] += 1
                reasons.update(res.qa.failures)
        sites = sorted({k.split("/")[0] for k in n})
        rep[str(path)] = {
            "per_site": {st: {"n": sum(v for k, v in n.items() if k.startswith(st + "/")),
                              "failed": sum(v for k, v in fails.items() if k.startswith(st + "/"))} for st in sites},
            "per_site_label": {k: {"n": n[k], "failed": fails[k]} for k in sorted(n)}, "reasons": dict(reasons)}
    print(json.dumps(rep, indent=1))
    Path(out).write_text(json.dumps(rep, indent=1))


def edges(out, lungs):
    """How far cleaned lung masks run along the film's side borders (`lungs.edge_run`): every ground-truth mask
    (at 256 px) and the model's cleaned mask on every film that passes QA, per site (the `cut_off` rule's basis)."""
    import cv2

    from tbedge import datasets
    from tbedge.runtime import lungs as L
    gt = [L.edge_run(cv2.resize(datasets.read_mask(s.mask).astype(np.uint8), (256, 256),
                                interpolation=cv2.INTER_AREA) > 0)
          for s in datasets.discover(datasets.find_data_root()) if s.mask is not None]
    per_site: dict[str, list[float]] = {}
    for s, res in analysed(lungs):
        if not res.fallback:
            per_site.setdefault(s.site, []).append(L.edge_run(res.mask))
    q = (0.5, 0.9, 0.99, 1.0)
    rep = {"gt": {"n": len(gt), "quantiles": np.quantile(gt, q).round(4).tolist()},
           "model": {st: {"n": len(v), "quantiles": np.quantile(v, q).round(4).tolist(),
                          "over": {t: int((np.array(v) > t).sum()) for t in (0.05, 0.1, 0.15, 0.2, 0.3)}}
                     for st, v in sorted(per_site.items())}}
    print(json.dumps(rep, indent=1))
    Path(out).write_text(json.dumps(rep, indent=1))


def paired(old_dir, new_dir):
    """TB-vs-rest AUC drop (old - new) with the gate's paired bootstrap CI, from two `tbedge evaluate classifier`
    outputs on the same films (what reversed the lung swap: old crops against the stride-2 model's)."""
    import csv

    from tbedge.build.gate import auc, paired_bootstrap_delta_auc
    a, b = ({r["path"]: r for r in csv.DictReader(open(Path(d) / "predictions.csv"))} for d in (old_dir, new_dir))
    keys = sorted(set(a) & set(b))
    y = np.array([a[k]["label"] == "tb" for k in keys])
    s_old, s_new = (np.array([float(x[k]["p_tb"]) for k in keys]) for x in (a, b))
    drop, ci = paired_bootstrap_delta_auc(y, s_old, s_new)
    print(json.dumps({"n": len(keys), "auc_old": auc(y, s_old), "auc_new": auc(y, s_new), "drop": drop,
                      "drop_ci95": ci}, indent=1))


if __name__ == "__main__":
    commands = {"speed": speed, "e2e": e2e, "qa": qa, "edges": edges, "paired": paired}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
