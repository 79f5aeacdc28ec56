"""Study: which int8 form is right on every CPU class (issue 19). Research, not product.

  python research/int8_forms.py build OUT_DIR            # quantize the candidate forms from the fp32 bundle
  [qemu-x86_64 -cpu MODEL] python research/int8_forms.py run OUT_DIR TAG [N]   # outputs on N val films
  python research/int8_forms.py report OUT_DIR           # compare every run with fp32 (native)

Every form is quantized from the ranges in the shipped default bundle's calibration.json (the same
ranges the shipped U8S8 form used), so forms differ only in encoding. ``run`` writes each form's raw
outputs (lung heat maps, TB probabilities) to OUT_DIR/runs/TAG.npz; ``report`` applies the gate's
limits (lungs Dice drop, classifier ΔAUC, TB threshold flips) against the native fp32 outputs.
"""
import json
import sys
from pathlib import Path

import numpy as np

from tbedge import datasets
from tbedge.build import gate as G
from tbedge.build import precision as P
from tbedge.calibration import ranges as R
from tbedge.runtime import lungs as L
from tbedge.runtime.bundle import ROLES, default_bundle_path, load_bundle
from tbedge.runtime.imaging import load_image
from tbedge.runtime.runners.onnxruntime import OnnxRuntimeRunner

MODELS = default_bundle_path().parent
PRECISE = {"session.x64quantprecision": "1"}
# form name -> precision.FORMS-style dict (the two shipped forms come from precision.FORMS)
STUDY_FORMS = {
    "u8s8": P.FORMS["cpu"],
    "u8s8_rr": {**P.FORMS["cpu"], "reduce_range": True},
    "u8s8_rr_pt": {**P.FORMS["cpu"], "reduce_range": True, "per_channel": False},
    "u8u8": {**P.FORMS["cpu"], "weight": "uint8"},
    "s8s8": P.FORMS["tensorrt"],
}
SKIP_EMULATED = {"fp32", "u8s8_rr_pt"}
# (label, form, session config): what each run evaluates
VARIANTS = [("fp32", None, {}), ("u8s8", "u8s8", {}), ("u8s8+precise", "u8s8", PRECISE),
            ("u8s8_rr", "u8s8_rr", {}), ("u8s8_rr_pt", "u8s8_rr_pt", {}), ("u8u8", "u8u8", {}),
            ("s8s8", "s8s8", {})]


def build(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = load_bundle(MODELS / "fp32")
    table = R.read_table(default_bundle_path() / "calibration.json")
    for role in ROLES:
        prep = P.prepare(fp32.model_path(role), out / f"{role}.prep.onnx")
        for name, form in STUDY_FORMS.items():
            P.FORMS[name] = form
            P.quantize(prep, table["ranges"][role], name, out / f"{role}.{name}.onnx")
            print("built", role, name, flush=True)


def samples(n):
    s = G.gate_samples(datasets.find_data_root())
    return sorted(s, key=lambda x: datasets.unit_hash(x.patient, 11))[:n]


def run(out, tag, n=40):
    out = Path(out)
    fp32 = load_bundle(MODELS / "fp32")
    chosen = samples(int(n))
    imgs = [load_image(s.path).pixels for s in chosen]
    lung_in = np.stack([L.preprocess(p, 256) for p in imgs])
    res = {}
    for label, form, cfg in VARIANTS:
        if tag != "native" and label in SKIP_EMULATED:
            continue  # fp32 has no int8 kernels to differ; emulated FMA costs 9 s a film
        paths = {r: (fp32.model_path(r) if form is None else out / f"{r}.{form}.onnx") for r in ROLES}
        with OnnxRuntimeRunner(paths["lungs"], session_config=cfg) as lr, \
                OnnxRuntimeRunner(paths["classifier"], session_config=cfg) as cr:
            heat = np.concatenate([lr.infer({"image": lung_in[i:i + 8]})["mask"][..., 0]
                                   for i in range(0, len(imgs), 8)])
            lr_res = [L.analyse(h, p.shape) for h, p in zip(heat, imgs, strict=True)]
            crops = np.stack([L.classifier_input(p, r, fp32.input_size("classifier"), fp32.crop_prep)
                              for p, r in zip(imgs, lr_res, strict=True)])
            tb = np.concatenate([cr.infer({"image": crops[i:i + 8]})["probabilities"][:, 1]
                                 for i in range(0, len(imgs), 8)])
        res[f"{label}/heat"], res[f"{label}/tb"] = heat.astype(np.float16), tb
        res[f"{label}/masks"] = np.stack([r.mask for r in lr_res])
        print(tag, label, "done", flush=True)
    (out / "runs").mkdir(exist_ok=True)
    np.savez_compressed(out / "runs" / f"{tag}.npz", **res)


def report(out):
    """Gate limits against native fp32 on each run's films (a prefix of the same hash order), and how far
    each emulated run is from the same form run natively (0 = the form is exact on that CPU class)."""
    out = Path(out)
    native = np.load(out / "runs" / "native.npz")
    thr = load_bundle(MODELS / "fp32").threshold
    chosen_all = samples(len(native["fp32/tb"]))
    shapes, gt = {}, {}
    for i, s in enumerate(chosen_all):
        if s.mask is not None:
            gt[i] = datasets.read_mask(s.mask)
            shapes[i] = load_image(s.path).pixels.shape
    rows = []
    for p in sorted((out / "runs").glob("*.npz")):
        r = np.load(p)
        n = len(next(r[k] for k in r.files if k.endswith("/tb")))
        y = np.array([s.label == "tb" for s in chosen_all[:n]])
        ref_tb, ref_heat = native["fp32/tb"][:n], native["fp32/heat"][:n].astype(np.float32)

        def dice(masks, n=n):
            return float(np.mean([L.dice(L.mask_to_native(masks[i], shapes[i]), gt[i]) for i in gt if i < n]))

        d0 = dice(native["fp32/masks"][:n])
        for label, _f, _c in VARIANTS:
            if f"{label}/tb" not in r.files:
                continue
            heat, tb = r[f"{label}/heat"].astype(np.float32), r[f"{label}/tb"]
            row = {"cpu": p.stem, "variant": label, "n": n, "n_tb": int(y.sum()),
                   "heat_max_abs": float(np.abs(heat - ref_heat).max()),
                   "dice_drop": d0 - dice(r[f"{label}/masks"]),
                   "delta_auc": G.auc(y, ref_tb) - G.auc(y, tb),
                   "tb_flips": G.threshold_flips(y, ref_tb, tb, thr),
                   "tb_max_abs": float(np.abs(tb - ref_tb).max()),
                   "tb_vs_native_same_form": float(np.abs(tb - native[f"{label}/tb"][:n]).max()),
                   "heat_vs_native_same_form":
                       float(np.abs(heat - native[f"{label}/heat"][:n].astype(np.float32)).max())}
            row["gate"] = (row["dice_drop"] <= G.MAX_DICE_DROP and row["delta_auc"] <= G.MAX_DELTA_AUC
                           and row["tb_flips"] <= G.MAX_TB_FLIPS)
            rows.append(row)
            print(f"{row['cpu']:>8} n={n:<3} {label:>12}  heat|d| {row['heat_max_abs']:.3f}  dice_drop "
                  f"{row['dice_drop']:+.4f}  dAUC {row['delta_auc']:+.4f}  flips {row['tb_flips']}  "
                  f"tb|d| {row['tb_max_abs']:.4f}  vs native same form: tb {row['tb_vs_native_same_form']:.2g} "
                  f"heat {row['heat_vs_native_same_form']:.2g}  gate {'pass' if row['gate'] else 'FAIL'}")
    (out / "report.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"build": build, "run": run, "report": report}[cmd](*args)
