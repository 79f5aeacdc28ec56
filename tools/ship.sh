#!/usr/bin/env bash
# Turn the study's chosen runs into the shipped models and bundles (run after research/study.sh).
# Usage: tools/ship.sh CLASSIFIER_RUN FOLD_RUN...   e.g. tools/ship.sh runs/cls/resnet_s_s0 \
#          runs/cls/fold_shenzhen_s0 runs/cls/fold_montgomery_s0
#        tools/ship.sh --keep-classifier   (a new lung model only: the shipped classifier and threshold stay)
# LUNGS=run/best.keras replaces the shipped lung model; without it the shipped one stays.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
R=${RUNS:-runs}
K=tbedge/models/keras
cls_run=$1; shift
mkdir -p "$K"
strip() {  # weights + architecture only (no optimizer state), whole-image norm as ImageNorm
  python -c "import sys; from tbedge.build.export import load_keras; from tbedge.train.layers import upgrade_norm; \
upgrade_norm(load_keras(sys.argv[1])).save(sys.argv[2])" "$1" "$2"
}
[ -z "${LUNGS:-}" ] || strip "$LUNGS" "$K/lungs.keras"
if [ "$cls_run" != --keep-classifier ]; then
  strip "$cls_run/best.keras" "$K/classifier.keras"
  # How the classifier's crops were prepared travels beside it (and from there into every bundle).
  python -c "import json, sys; c = json.load(open(sys.argv[1])); json.dump({'crop_prep': c.get('prep', 'box'), \
  'run': sys.argv[2], 'arch': c['arch'], 'seed': c['seed']}, open(sys.argv[3], 'w'), indent=1)" \
    "$cls_run/config.json" "$cls_run" "$K/classifier.json"
  # The threshold: out-of-site predictions only (each fold model on the site it never saw, site_val part),
  # read from the crop cache and data sets that fold trained on (its config.json).
  preds=()
  for f in "$@"; do
    read -r fold crops sets < <(python -c "import json,sys; c = json.load(open(sys.argv[1])); s = c.get('sets', 'core'); \
  print(c['fold'], c['crops'], s if isinstance(s, str) else ','.join(s))" "$f/config.json")
    [ -f "$f/eval_site_val/predictions.csv" ] || tbedge evaluate classifier "$f/best.keras" --data "$crops" \
      --sets "$sets" --fold "$fold" --part site_val --out "$f/eval_site_val" >/dev/null
    preds+=("$f/eval_site_val/predictions.csv")
  done
  tbedge train threshold "${preds[@]}" --output "$K/threshold.json" >/dev/null
fi
tbedge build-engine "$K" --precision fp32 --target cpu --out tbedge/models/fp32 --data "$D"
tbedge calibration-set --engine tbedge/models/fp32 --out "$R/calib" --data "$D"
tbedge build-engine tbedge/models/fp32 --precision int8 --target cpu --calibration "$R/calib" \
  --out tbedge/models/default --data "$D"
