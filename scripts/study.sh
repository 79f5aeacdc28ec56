#!/usr/bin/env bash
# The classifier study and the cross-site lung models, as run for the model cards (2-core CPU).
# Every step is resumable: rerunning the script continues where it stopped.
# Usage: scripts/study.sh lane1|lane2   (the two lanes ran side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
R=${RUNS:-runs}
mkdir -p "$R/crops" "$R/cls"
crops() { [ -f "$R/crops/$2_224.npz" ] || tbedge train crops --data "$D" --lungs "$1" --output "$R/crops/$2_224.npz"; }
cls() {  # arch crops out budget [fold] [seed]
  tbedge train classifier --arch "$1" --data "$R/crops/$2_224.npz" --out "$R/cls/$3" --budget-minutes "$4" \
    --epochs 60 ${5:+--fold $5} --seed "${6:-0}"
}
case "${1:-}" in
lane1)  # shipped lung model -> crops -> default classifier + compute-matched architecture study
  tbedge train lungs --data "$D" --out "$R/lungs_main" --epochs 16
  crops "$R/lungs_main/best.keras" main
  cls resnet_s main resnet_s_s0 14
  for a in alexnet edge_irn googlenet inception_resnet_v2; do cls "$a" main "${a}_s0" 6; done
  ;;
lane2)  # cross-site: lung models without a site -> their crops -> classifier folds
  tbedge train lungs --data "$D" --out "$R/lungs_no_shenzhen" --epochs 30 --exclude-site shenzhen
  crops "$R/lungs_no_shenzhen/best.keras" no_shenzhen
  cls resnet_s no_shenzhen fold_shenzhen_s0 6 shenzhen 0
  tbedge train lungs --data "$D" --out "$R/lungs_no_montgomery" --epochs 10 --exclude-site montgomery
  crops "$R/lungs_no_montgomery/best.keras" no_montgomery
  for s in 0 1 2; do cls resnet_s no_montgomery "fold_montgomery_s$s" 7 montgomery "$s"; done
  ;;
*) echo "usage: $0 lane1|lane2" >&2; exit 2 ;;
esac
