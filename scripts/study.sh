#!/usr/bin/env bash
# The classifier study and the cross-site lung models, as run for the model cards (2-core CPU).
# Every step is resumable: rerunning the script continues where it stopped.
# Usage: scripts/study.sh lane1|lane2|lane3|seeds   (lane1 and lane2 ran side by side; lane3 after)
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
lane3)  # second round: the lung-masked classifier (lung models from lane1/lane2), then ship it
  crops "$R/lungs_main/best.keras" m_main
  crops "$R/lungs_no_shenzhen/best.keras" m_no_shenzhen
  crops "$R/lungs_no_montgomery/best.keras" m_no_montgomery
  mcls() {  # crops out epochs fold(- = internal) seed
    tbedge train classifier --arch resnet_s --prep masked --nih-weight 0.3 --data "$R/crops/$1_224.npz" \
      --out "$R/cls/$2" --epochs "$3" $([ "$4" = - ] || echo --fold "$4") --seed "$5"
  }
  for s in 0 1; do mcls m_main "f_main_s$s" 40 - "$s"; done
  for s in 0 1 2; do mcls m_no_montgomery "f_mc_s$s" 16 montgomery "$s"; done  # s0 ran as m4_mc_mask_nih03_s0
  mcls m_no_shenzhen f_sz_s0 16 shenzhen 0
  CROPS="$R/crops/m_" scripts/ship.sh "$R/cls/f_main_s0" "$R/cls/f_sz_s0" "$R/cls/f_mc_s0"
  ;;
seeds)  # the first study's two best at its 6-minute budget, seeds 1 and 2; IRv2 resumed to 55 minutes
  for s in 1 2; do cls resnet_s main "resnet_s6_s$s" 6 "" "$s"; cls edge_irn main "edge_irn_s$s" 6 "" "$s"; done
  cls inception_resnet_v2 main inception_resnet_v2_s0 55
  ;;
*) echo "usage: $0 lane1|lane2|lane3|seeds" >&2; exit 2 ;;
esac
