#!/usr/bin/env bash
# The classifier study and the cross-site lung models, as run for the model cards (2-core CPU).
# Every step is resumable: rerunning the script continues where it stopped.
# Usage: research/study.sh lane1|lane2|lane3|seeds|lane4|lane5|lane6|lane7|lane8a|lane8b|lane8c|lane8d SEED|lane8e|lane9a|lane9b|lane9c|lane9d|lane10a|lane10b|lane10c|lane10d|lane11a|lane11b|lane11c SEED|lane11d|lane11e SEED|lane11f|lane12a|lane12b|lane12c|lane12d|lane13|lane14|lane14b   (lane1 and lane2 side by side; then lane3 … lane8)
# lane4's runs were trained on a GPU: KERAS_BACKEND=jax with jax[cuda] installed (the trainers are backend-neutral).
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
ev() {  # run crops part [fold]: evaluate RUN/best.keras on a part once (skipped when its predictions exist); runs in $EV
  local d=${EV:-$R/cls}/$1
  [ -f "$d/eval_$3/predictions.csv" ] || tbedge evaluate classifier "$d/best.keras" \
    --data "$R/crops/$2_224.npz" ${4:+--fold $4} --part "$3" --out "$d/eval_$3"
}
p2() {  # run: its power-2 copy (lung-core head, same weights) in $EV, made once
  [ -f "$EV/$1/best.keras" ] || python tools/lung_power.py "$R/cls/$1" "$EV/$1" 2
}
mcls() {  # crops out epochs fold(- = internal) seed [extra args]: the shipped recipe (lung-masked, NIH 0.3)
  tbedge train classifier --arch resnet_s --prep masked --nih-weight 0.3 --data "$R/crops/$1_${CROP_SIZE:-224}.npz" \
    --out "$R/cls/$2" --epochs "$3" $([ "$4" = - ] || echo --fold "$4") --seed "$5" "${@:6}"
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
  for s in 0 1; do mcls m_main "f_main_s$s" 40 - "$s"; done
  for s in 0 1 2; do mcls m_no_montgomery "f_mc_s$s" 16 montgomery "$s"; done  # s0 ran as m4_mc_mask_nih03_s0
  mcls m_no_shenzhen f_sz_s0 16 shenzhen 0
  LUNGS="$R/lungs_main/best.keras" CROPS="$R/crops/m_" tools/ship.sh "$R/cls/f_main_s0" "$R/cls/f_sz_s0" "$R/cls/f_mc_s0"
  ;;
seeds)  # the first study's two best at its 6-minute budget, seeds 1 and 2; IRv2 resumed to 55 minutes
  for s in 1 2; do cls resnet_s main "resnet_s6_s$s" 6 "" "$s"; cls edge_irn main "edge_irn_s$s" 6 "" "$s"; done
  cls inception_resnet_v2 main inception_resnet_v2_s0 55
  ;;
lane4)  # third round: more seeds of the recipe (GPU), NIH mixes, the other archs across sites, then ship
  # GPU runs: g_main_s{4,5,6}, h_main_s{1,2,3,7} (internal); g_mc_s{4,5}, h_mc_s{3,6} (folds)
  for s in 4 5 6; do mcls m_main "g_main_s$s" 40 - "$s"; done
  for s in 1 2 3 7; do mcls m_main "h_main_s$s" 40 - "$s"; done
  for s in 4 5; do mcls m_no_montgomery "g_mc_s$s" 16 montgomery "$s"; done
  for s in 3 6; do mcls m_no_montgomery "h_mc_s$s" 16 montgomery "$s"; done
  for s in 0 1 2 3; do mcls m_no_montgomery "h_mc_nonih_s$s" 16 montgomery "$s" --nih-weight 0; done
  for s in 0 1 2; do mcls m_no_montgomery "h_mc_e40a2_s$s" 40 montgomery "$s" --aug-strength 2; done
  for s in 0 1 2; do mcls m_no_montgomery "p_mc_s$s" 16 montgomery "$s" --nih-normal-weight 0; done  # CPU
  # CPU, compute-matched with resnet_s's 16 epochs (~6 min); the lung-pooled head needs a grid that
  # divides the input: AlexNet's 13 x 13 gets 221 px, IRv2's 5 x 5 gets 225 px
  xcls() { mcls m_no_montgomery "x_$1_s$2" 60 montgomery "$2" --arch "$3" --budget-minutes 6 --patience 60 "${@:4}"; }
  for s in 0 1 2; do xcls edge_irn "$s" edge_irn; done
  xcls googlenet 0 googlenet
  xcls alexnet 0 alexnet --size 221
  xcls irv2 0 inception_resnet_v2 --size 225
  # NIH scored given "not TB": better across sites, worse inside them (not shipped; classifier-study.md)
  for s in 0 1 2; do mcls m_no_montgomery "n_mc_s$s" 16 montgomery "$s" --nih-not-tb all; done
  mcls m_no_shenzhen n_sz_s0 16 shenzhen 0 --nih-not-tb all
  mcls m_main n_main_s0 40 - 0 --nih-not-tb all
  # only NIH no-finding given "not TB" (pneumonia keeps teaching "not TB"): measured, not shipped
  for s in 0 1 2; do mcls m_no_montgomery "q_mc_s$s" 16 montgomery "$s" --nih-not-tb no_finding; done
  LUNGS="$R/lungs_main/best.keras" CROPS="$R/crops/m_" tools/ship.sh "$R/cls/g_main_s5" "$R/cls/f_sz_s0" "$R/cls/f_mc_s0"
  ;;
lane5)  # fourth round (CPU): 320 px crops, NIH-only augmentation, more Montgomery -> Shenzhen seeds, then ship
  [ -f "$R/crops/m_main_320.npz" ] || tbedge train crops --data "$D" --lungs "$R/lungs_main/best.keras" \
    --output "$R/crops/m_main_320.npz" --size 320
  for s in 0 1; do CROP_SIZE=320 mcls m_main "r320_main_s$s" 40 - "$s"; done
  for s in 0 1 2; do mcls m_no_montgomery "na_mc_s$s" 16 montgomery "$s" --nih-aug-strength 2; done
  mcls m_main na_main_s0 40 - 0 --nih-aug-strength 2
  for s in 1 2; do mcls m_no_shenzhen "f_sz_s$s" 16 shenzhen "$s"; done
  tbedge evaluate lungs "$R/lungs_main/best.keras" --by-batch --output "$R/lungs_batches.json"
  # threshold from three fold seeds per direction (f_mc_s0 ran as m4_mc_mask_nih03_s0)
  LUNGS="$R/lungs_main/best.keras" CROPS="$R/crops/m_" tools/ship.sh "$R/cls/g_main_s5" "$R/cls/m4_mc_mask_nih03_s0" "$R/cls/f_mc_s1" \
    "$R/cls/f_mc_s2" "$R/cls/f_sz_s0" "$R/cls/f_sz_s1" "$R/cls/f_sz_s2"
  ;;
lane6)  # fifth round (CPU): a source adversary on normal films (NIH vs TB sites), rule in research/selection-rules.md
  for s in 0 1 2 3 4 5 6; do mcls m_no_montgomery "adv_mc_s$s" 16 montgomery "$s" --nih-adversary 0.5; done  # 3-6: record
  for s in 0 1 2; do mcls m_no_shenzhen "adv_sz_s$s" 16 shenzhen "$s" --nih-adversary 0.5; done  # record
  for s in 0 1 2; do mcls m_main "adv_main_s$s" 40 - "$s" --nih-adversary 0.5; done  # seeds 1, 2: for the record
  for s in 0 1 2; do mcls m_no_montgomery "adv25_mc_s$s" 16 montgomery "$s" --nih-adversary 0.25; done
  for s in 0 1; do mcls m_main "adv25_main_s$s" 40 - "$s" --nih-adversary 0.25; done
  ;;
lane7)  # sixth round: fresh seeds 50-55 (trained on an H100 with KERAS_BACKEND=jax), 2-model ensembles, AdaBN
  for s in 50 51 52 53 54 55; do
    mcls m_main "i_main_s$s" 40 - "$s"; ev "i_main_s$s" m_main val
    mcls m_no_montgomery "f_mc_s$s" 16 montgomery "$s"; ev "f_mc_s$s" m_no_montgomery site_val montgomery
    mcls m_no_shenzhen "f_sz_s$s" 16 shenzhen "$s"; ev "f_sz_s$s" m_no_shenzhen site_val shenzhen
  done
  for s in 50 52; do mcls m_no_montgomery "a_mc_s$s" 16 montgomery "$s" --nih-adversary 0.5; done  # record
  for s in 50 54; do mcls m_no_shenzhen "a_sz_s$s" 16 shenzhen "$s" --nih-adversary 0.5; done  # record
  for g in "i_main val" "f_mc site_val" "f_sz site_val"; do
    python research/pair_ensembles.py $(for p in "50 51" "52 53" "54 55"; do set -- $p; echo "$R/cls/${g% *}_s$1/eval_${g#* }/predictions.csv,$R/cls/${g% *}_s$2/eval_${g#* }/predictions.csv"; done)
  done
  python research/adabn_probe.py "$R/crops/m_no_montgomery_224.npz" montgomery site_val $R/cls/{m4_mc_mask_nih03_s0,f_mc_s1,f_mc_s2}/best.keras  # + the GPU seeds 3-6
  python research/adabn_probe.py "$R/crops/m_no_shenzhen_224.npz" shenzhen site_val $R/cls/f_sz_s{0,1,2}/best.keras
  (cd research && python split_noise.py "../$R/crops/m_no_montgomery_224.npz" montgomery \
    --recipe ../$R/cls/{m4_mc_mask_nih03_s0,f_mc_s1,f_mc_s2}/best.keras --lever ../$R/cls/adv_mc_s{0,1,2}/best.keras)  # + seeds 3-6
  # The lung-core head (adopted): seed 5's weights, cells pooled by (lung fraction)^2, then the shipped bundles.
  python tools/lung_power.py "$R/cls/g_main_s5" "$R/ship6/cls_p2" 2
  for r in m4_mc_mask_nih03_s0:f_mc_s0 f_mc_s1:f_mc_s1 f_mc_s2:f_mc_s2 f_sz_s0:f_sz_s0 f_sz_s1:f_sz_s1 f_sz_s2:f_sz_s2; do
    python tools/lung_power.py "$R/cls/${r%%:*}" "$R/ship6/${r##*:}_p2" 2
  done
  LUNGS="$R/lungs_main/best.keras" CROPS="$R/crops/m_" tools/ship.sh "$R/ship6/cls_p2" "$R"/ship6/f_{mc,sz}_s{0,1,2}_p2
  ;;
lane8a)  # seventh round: weight averaging (SWA) paired with the plain recipe in each run; lane8a and lane8b side by side
  for s in 80 81; do mcls m_main "w_main_s$s" 40 - "$s" --average-from 0.25; done
  mcls m_no_shenzhen w_sz_s80 16 shenzhen 80 --average-from 0.25
  ;;
lane8b)
  for s in 80 81 82; do mcls m_no_montgomery "w_mc_s$s" 16 montgomery "$s" --average-from 0.25; done
  for s in 81 82; do mcls m_no_shenzhen "w_sz_s$s" 16 shenzhen "$s" --average-from 0.25; done
  ;;
lane8d)  # record only: --nih-not-tb all, more seeds (internal 1, 2 and Montgomery -> Shenzhen 1, 2); run as lane8d 1 and lane8d 2
  mcls m_main "n_main_s$2" 40 - "$2" --nih-not-tb all
  mcls m_no_shenzhen "n_sz_s$2" 16 shenzhen "$2" --nih-not-tb all
  ;;
lane8e)  # record only: each variant at its own locked operating point on val (after lane8d 1 and lane8d 2)
  for s in 0 1 2; do ev "n_main_s$s" m_main val; ev "n_mc_s$s" m_no_montgomery site_val montgomery
    ev "n_sz_s$s" m_no_shenzhen site_val shenzhen; done
  for r in g_main_s5 f_main_s0 f_main_s1; do ev "$r" m_main val; done
  for r in m4_mc_mask_nih03_s0 f_mc_s1 f_mc_s2; do ev "$r" m_no_montgomery site_val montgomery; done
  for r in f_sz_s0 f_sz_s1 f_sz_s2; do ev "$r" m_no_shenzhen site_val shenzhen; done
  sv() { for f in "$@"; do echo "$R/cls/$f/eval_site_val/predictions.csv"; done; }
  for s in 0 1 2; do python research/operating_point_val.py "not-tb s$s" "$R/cls/n_main_s$s/eval_val/predictions.csv" \
    $(sv n_mc_s0 n_mc_s1 n_mc_s2 n_sz_s0 n_sz_s1 n_sz_s2); done
  for r in g_main_s5 f_main_s0 f_main_s1; do python research/operating_point_val.py "recipe $r" "$R/cls/$r/eval_val/predictions.csv" \
    $(sv m4_mc_mask_nih03_s0 f_mc_s1 f_mc_s2 f_sz_s0 f_sz_s1 f_sz_s2); done
  ;;
lane8c)  # the seventh-round rule: paired gains, then val pneumonia -> TB and val CAM of both arms with the power-2 head
  python research/swa_gains.py "$R"/cls/w_main_s8{0,1}
  python research/swa_gains.py "$R"/cls/w_mc_s8{0,1,2}
  python research/swa_gains.py "$R"/cls/w_sz_s8{0,1,2}
  for s in 80 81; do for arm in best avg_best; do
    o="$R/ship7/w_main_s${s}_${arm}_p2"
    python tools/lung_power.py "$R/cls/w_main_s$s" "$o" 2 "$arm.keras"
    tbedge evaluate classifier "$o/best.keras" --data "$R/crops/m_main_224.npz" --part val --out "$o/eval_val"
    python research/cam_hit_keras.py "$o/best.keras" "$R/crops/m_main_224.npz" val
  done; done
  # after the decision, reported for both arms: internal test (power-2 head), site_test of the fold runs (as trained)
  for s in 80 81; do for arm in best avg_best; do
    o="$R/ship7/w_main_s${s}_${arm}_p2"
    tbedge evaluate classifier "$o/best.keras" --data "$R/crops/m_main_224.npz" --part test --out "$o/eval_test"
    python research/cam_hit_keras.py "$o/best.keras" "$R/crops/m_main_224.npz" test
  done; done
  for f in mc:m_no_montgomery:montgomery sz:m_no_shenzhen:shenzhen; do IFS=: read -r d c fold <<< "$f"
    for s in 80 81 82; do for arm in best avg_best; do
      tbedge evaluate classifier "$R/cls/w_${d}_s$s/$arm.keras" --data "$R/crops/${c}_224.npz" --fold "$fold" \
        --part site_test --out "$R/cls/w_${d}_s$s/eval_site_test_$arm"
    done; done
  done
  ;;
lane9a)  # eighth round: decide --nih-not-tb all on fresh seeds 90-92 (rule in research/selection-rules.md); lane9a and lane9b side by side
  mcls m_main n_main_s90 40 - 90 --nih-not-tb all
  mcls m_no_montgomery n_mc_s90 16 montgomery 90 --nih-not-tb all
  mcls m_main n_main_s92 40 - 92 --nih-not-tb all
  mcls m_no_shenzhen n_sz_s92 16 shenzhen 92 --nih-not-tb all
  ;;
lane9b)
  mcls m_main n_main_s91 40 - 91 --nih-not-tb all
  for s in 91 92; do mcls m_no_montgomery "n_mc_s$s" 16 montgomery "$s" --nih-not-tb all; done
  for s in 90 91; do mcls m_no_shenzhen "n_sz_s$s" 16 shenzhen "$s" --nih-not-tb all; done
  ;;
lane9c)  # the eighth-round rule on power-2 copies (val and site_val only): research/nih_rule.py prints each part
  EV=$R/ship8
  for r in n_main_s90 n_main_s91 n_main_s92 f_main_s0 f_main_s1 g_main_s5 w_main_s80 w_main_s81; do
    p2 "$r"; ev "$r" m_main val; done
  for s in 90 91 92; do p2 "n_mc_s$s"; ev "n_mc_s$s" m_no_montgomery site_val montgomery
    p2 "n_sz_s$s"; ev "n_sz_s$s" m_no_shenzhen site_val shenzhen; done
  python research/nih_rule.py "$EV" "$R/crops/m_main_224.npz"
  ;;
lane9d)  # after the eighth-round decision, whatever it was: internal test and site_test of both arms
  EV=$R/ship8
  for r in n_main_s90 n_main_s91 n_main_s92 f_main_s0 f_main_s1 g_main_s5 w_main_s80 w_main_s81; do ev "$r" m_main test; done
  for s in 90 91 92; do ev "n_mc_s$s" m_no_montgomery site_test montgomery; ev "n_sz_s$s" m_no_shenzhen site_test shenzhen; done
  python research/nih_rule.py "$EV" "$R/crops/m_main_224.npz" --test
  EV=$R/cls  # the seventh round's record runs (power 1, as trained)
  for s in 0 1 2; do ev "n_main_s$s" m_main test; ev "n_mc_s$s" m_no_montgomery site_test montgomery
    ev "n_sz_s$s" m_no_shenzhen site_test shenzhen; done
  ;;
lane10a)  # ninth round: mixup (--mixup 0.4) on fresh seeds 93-95 (rule in research/selection-rules.md); lane10a and lane10b side by side
  mcls m_main x_main_s93 40 - 93 --mixup 0.4
  for s in 93 94; do mcls m_no_montgomery "x_mc_s$s" 16 montgomery "$s" --mixup 0.4; done
  mcls m_no_shenzhen x_sz_s95 16 shenzhen 95 --mixup 0.4
  ;;
lane10b)
  mcls m_main x_main_s94 40 - 94 --mixup 0.4
  for s in 93 94; do mcls m_no_shenzhen "x_sz_s$s" 16 shenzhen "$s" --mixup 0.4; done
  mcls m_no_montgomery x_mc_s95 16 montgomery 95 --mixup 0.4
  ;;
lane11a)  # learning curve (no decision rides on it): the recipe on 25 % / 50 % of the training films, the same
  # number of steps as a 40-epoch full run (160 / 80 epochs), seeds 0 and 1 (full-data comparators f_main_s0/s1)
  # patience scaled with the steps too (the recipe's 12 epochs at full data), or the runs stop before the rate anneals
  mcls m_main l_main_f25_s0 160 - 0 --train-fraction 0.25 --patience 48
  mcls m_main l_main_f50_s0 80 - 0 --train-fraction 0.5 --patience 24
  ;;
lane11b)
  mcls m_main l_main_f25_s1 160 - 1 --train-fraction 0.25 --patience 48
  mcls m_main l_main_f50_s1 80 - 1 --train-fraction 0.5 --patience 24
  ;;
lane11c)  # 75 % (53 epochs, patience 16); run as lane11c 0 and lane11c 1 side by side
  mcls m_main "l_main_f75_s$2" 53 - "$2" --train-fraction 0.75 --patience 16
  ;;
lane11e)  # the same curve across sites, Shenzhen (+ NIH) -> Montgomery: 25 % / 50 % of the fold's training films,
  # equal steps to the 16-epoch fold recipe, patience scaled (48 / 24); run as lane11e 0 and lane11e 1 side by side
  mcls m_no_montgomery "l_mc_f25_s$2" 64 montgomery "$2" --train-fraction 0.25 --patience 48
  mcls m_no_montgomery "l_mc_f50_s$2" 32 montgomery "$2" --train-fraction 0.5 --patience 24
  ;;
lane11f)  # after lane11e: site_test of the fold curve and of the recipe's CPU fold runs
  for r in l_mc_f25_s0 l_mc_f25_s1 l_mc_f50_s0 l_mc_f50_s1 m4_mc_mask_nih03_s0 f_mc_s1 f_mc_s2 w_mc_s80 w_mc_s81 w_mc_s82; do
    ev "$r" m_no_montgomery site_test montgomery
  done
  python research/learning_curve.py "$R/cls" montgomery
  ;;
lane11d)  # after lane11a-c: internal test of every learning-curve run and the CPU recipe runs, then the table
  for r in l_main_f25_s0 l_main_f25_s1 l_main_f50_s0 l_main_f50_s1 l_main_f75_s0 l_main_f75_s1 \
           lp12_main_f25_s0 lp12_main_f25_s1 lp12_main_f50_s0 lp12_main_f50_s1 f_main_s0 f_main_s1 w_main_s80 w_main_s81; do
    ev "$r" m_main test
  done
  python research/learning_curve.py "$R/cls"
  ;;
lane12a)  # eleventh round: the lung-core head trained from the start (--lung-power 2), rule in research/selection-rules.md;
  # lane12a and lane12b side by side (internal seeds 60, 61 ran in the sixth round as lp2_main_s60/s61)
  for s in 62 63; do mcls m_main "lp2_main_s$s" 40 - "$s" --lung-power 2; done
  mcls m_no_montgomery lp2_mc_s62 16 montgomery 62 --lung-power 2; mcls m_no_shenzhen lp2_sz_s62 16 shenzhen 62 --lung-power 2
  mcls m_no_montgomery lp2_mc_s64 16 montgomery 64 --lung-power 2
  ;;
lane12b)
  for s in 64 65; do mcls m_main "lp2_main_s$s" 40 - "$s" --lung-power 2; done
  mcls m_no_montgomery lp2_mc_s63 16 montgomery 63 --lung-power 2; mcls m_no_shenzhen lp2_sz_s63 16 shenzhen 63 --lung-power 2
  mcls m_no_shenzhen lp2_sz_s64 16 shenzhen 64 --lung-power 2
  ;;
lane12c)  # the eleventh-round rule (selection data only)
  EV=$R/ship10
  for r in m4_mc_mask_nih03_s0 f_mc_s1 f_mc_s2 w_mc_s80 w_mc_s81 w_mc_s82; do p2 "$r"; ev "$r" m_no_montgomery site_val montgomery; done
  for r in f_sz_s0 f_sz_s1 f_sz_s2 w_sz_s80 w_sz_s81 w_sz_s82; do p2 "$r"; ev "$r" m_no_shenzhen site_val shenzhen; done
  for s in 60 61 62 63 64 65; do EV=$R/cls ev "lp2_main_s$s" m_main val; done
  python research/lp2_rule.py "$R/cls" "$EV" "$R/crops/m_main_224.npz"
  ;;
lane12d)  # after the eleventh-round decision, whatever it was: internal test and the test heat-map check of the
  # six internal runs, site_test of the fold runs (all with the power-2 head they were trained with)
  for s in 60 61 62 63 64 65; do ev "lp2_main_s$s" m_main test
    python research/cam_hit_keras.py "$R/cls/lp2_main_s$s/best.keras" "$R/crops/m_main_224.npz" test; done
  for s in 62 63 64; do ev "lp2_mc_s$s" m_no_montgomery site_test montgomery; ev "lp2_sz_s$s" m_no_shenzhen site_test shenzhen; done
  ;;
lane10c)  # the ninth-round rule (selection data only)
  python research/mixup_rule.py "$R/cls" "$R/crops/m_main_224.npz"
  ;;
lane10d)  # after the ninth-round decision, whatever it was: internal test (power 2) and site_test (as trained)
  for s in 93 94; do EV=$R/ship9 ev "x_main_s$s" m_main test; done
  for s in 93 94 95; do ev "x_mc_s$s" m_no_montgomery site_test montgomery; ev "x_sz_s$s" m_no_shenzhen site_test shenzhen; done
  ;;
lane13)  # issue 19 (5): the stride-2 lung model; rule in selection-rules.md (15:25), shipped, reversed at 16:40
  tbedge train lungs --data "$D" --out "$R/lungs_s2" --epochs 16 --stem 2
  git show ce71b0c:tbedge/models/fp32/lungs.onnx > "$R/lungs_full_fp32.onnx"  # the shipped lung model
  python research/lung_light.py e2e "$R/lungs_full_fp32.onnx" "$R/lungs_s2/best.keras" "$R/lungs_s2/e2e" val
  # (shipped here as `LUNGS="$R/lungs_s2/best.keras" tools/ship.sh --keep-classifier`, then taken back)
  tbedge evaluate lungs "$R/lungs_s2/best.keras" --by-batch --output "$R/lungs_s2/report.json"
  python research/lung_light.py qa "$R/lungs_s2/qa.json" "$R/lungs_full_fp32.onnx" "$R/lungs_s2/e2e/lungs.onnx"
  python research/lung_light.py edges "$R/lungs_s2/edges.json" "$R/lungs_s2/e2e/lungs.onnx"
  # what reversed it: the shipped classifier on each lung model's crops, every set, with the audit
  tbedge train crops --data "$D" --sets all --lungs "$R/lungs_s2/best.keras" --output "$R/crops/all_s2_224.npz"
  for c in main s2; do for p in "--part val" "--fold tb_more --part site_val" "--fold tb_more --part site_test" \
      "--fold montgomery --part site_test" "--fold shenzhen --part site_test" "--part test"; do
    tbedge evaluate classifier tbedge/models/fp32/classifier.onnx --data "$R/crops/all_${c}_224.npz" --sets all $p \
      --audit --out "$R/cls/shipped_${c}_$(echo "$p" | tr -d ' -')"
  done; done
  for p in foldtb_morepartsite_val foldtb_morepartsite_test partval; do  # paired AUC drop, old crops - new
    python research/lung_light.py paired "$R/cls/shipped_main_$p" "$R/cls/shipped_s2_$p"; done
  ;;
lane14)  # issues 20 + 19 (5), fourteenth round: three-site site-balanced classifier on the stride-2 crops (not shipped)
  git show abe158d:tbedge/models/keras/lungs.keras > "$R/lungs_s2.keras"  # the stride-2 model gated on 2026-12-02
  C="$R/crops/all_s2_224.npz"
  [ -f "$C" ] || tbedge train crops --data "$D" --sets all --lungs "$R/lungs_s2.keras" --output "$C"
  REC="--arch resnet_s --prep masked --lung-power 2 --nih-weight 0.3 --sets all --site-balance --data $C"
  tbedge train classifier $REC --epochs 20 --seed 0 --select-without tb_more,covid --out "$R/cls/r14_main_s0"
  tbedge evaluate classifier "$R/cls/r14_main_s0/best.keras" --data "$C" --sets all --part val --out "$R/cls/r14_main_s0/eval_val"
  for r in tbm_s0:tb_more:0 tbm_s1:tb_more:1 tbm_s2:tb_more:2 mon_s0:montgomery:0 she_s0:shenzhen:0; do
    IFS=: read -r n f s <<< "$r"
    tbedge train classifier $REC --epochs 10 --seed "$s" --fold "$f" --out "$R/cls/r14_$n"
    tbedge evaluate classifier "$R/cls/r14_$n/best.keras" --data "$C" --sets all --fold "$f" --part site_val --audit \
      --out "$R/cls/r14_$n/eval_site_val"
  done
  python research/r14_rule.py  # reads runs/cls
  # after the decision only: test parts, the same evaluations with --part test / site_test, and
  # python research/cam_hit_keras.py "$R/cls/r14_main_s0/best.keras" "$C" test
  ;;
lane14b)  # issue 20 (3): the painted-opacity lung fine-tune of the shipped lung model (not adopted)
  O="$R/lungs_ft1"
  tbedge train lungs --data "$D" --init tbedge/models/keras/lungs.keras --opacity 0.5 --film-look 0.5 --epochs 6 \
    --lr 5e-4 --seed 0 --out "$O"
  tbedge evaluate lungs "$O/best.keras" --output "$O/report.json"
  tbedge evaluate lungs tbedge/models/keras/lungs.keras --output "$O/report_base.json"
  python -c "import sys; from tbedge.build.export import export_onnx; from tbedge.train.predict import load_keras
export_onnx(load_keras(sys.argv[1]), sys.argv[2])" "$O/best.keras" "$O/new.onnx"
  python research/lung_light.py qa "$O/qa.json" tbedge/models/fp32/lungs.onnx "$O/new.onnx"
  ;;
*) sed -n 4p "$0" >&2; exit 2 ;;
esac
