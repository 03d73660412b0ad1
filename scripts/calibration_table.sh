#!/usr/bin/env bash
# docs/calibration.md's measured tables, rerun as they are:
#
#   bash scripts/calibration_table.sh [WORK]                 # the demo width (64 features)
#   WIDE=1 bash scripts/calibration_table.sh WORK-wide      # 512 features, 2 x 256 GRU
#
# A held-out release (the demo preset; the 5th session, t15.2023.08.27, never trained on), two
# models (seed = dataset.seed = 1 and 2, configs/demo.yaml), each evaluated on the training days'
# validation trials, then calibrations of the held-out day, each a line of WORK/table.txt:
# 0 sentences (the borrowed layer), 20 labelled, --unlabelled on the session's 200 train trials,
# 20 labelled + the other 180 unlabelled (--unlabelled-rest), and evaluate --adapt-day on the
# 0-sentence checkpoint. MODELS="3 4" picks the model seeds (default "1 2"), DATA_SEED the
# release's synth seed (default 0); BATCHES sets the training length with WIDE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-calibration-table}
FASTBCI=${FASTBCI:-fastbci}
NEW=t15.2023.08.27
SESSIONS=t15.2023.08.13,t15.2023.08.18,t15.2023.08.20,t15.2023.08.25,$NEW
MODELS=${MODELS:-1 2}
if [ "${WIDE:-0}" = 1 ]; then
  DIM=512
  BATCHES=${BATCHES:-2000}
  EXTRA=(model.n_input_features=512 'model.input_network.input_layer_sizes=[512]'
         model.n_units=256 model.n_layers=2 num_training_batches=$BATCHES
         lr_decay_steps=$BATCHES lr_decay_steps_day=$BATCHES batches_per_val_step=500)
else
  DIM=64
  EXTRA=()
fi
mkdir -p "$WORK"
$FASTBCI synth --out "$WORK/data" --demo --neural-dim $DIM --sessions $SESSIONS --holdout 1 \
  --seed "${DATA_SEED:-0}"
S="$WORK/data/$NEW"
for m in $MODELS; do
  R="$WORK/model$m"
  [ -f "$R/checkpoint/best_checkpoint" ] || $FASTBCI train configs/demo.yaml \
    "dataset.dataset_dir=$WORK/data" dataset.neural_dim=$DIM "output_dir=$R" \
    "checkpoint_dir=$R/checkpoint" seed=$m dataset.seed=$m fastbci.progress=false "${EXTRA[@]}"
  C="$R/checkpoint/best_checkpoint"
  $FASTBCI evaluate --checkpoint "$C" --split val --out "$R/eval" --overwrite --quiet --json \
    > "$R/eval.json"
  cal() {  # NAME [calibrate options...]
    local name=$1; shift
    $FASTBCI calibrate --checkpoint "$C" --session "$S/data_train.hdf5" --val "$S/data_val.hdf5" \
      --out "$R/$name" --overwrite --quiet "$@" | sed "s/^/model $m, $name: /" | tee -a "$WORK/table.txt"
  }
  cal zero --sentences 0
  cal labelled20 --sentences 20
  cal unlabelled --unlabelled
  cal semi20 --sentences 20 --unlabelled-rest
  $FASTBCI evaluate --checkpoint "$R/zero/calibrated_checkpoint" --split val --adapt-day \
    --out "$R/adapt" --overwrite --quiet --json > "$R/adapt.json"
  python - "$R" "$m" <<'PY' | tee -a "$WORK/table.txt"
import json, sys
r, m = sys.argv[1], sys.argv[2]
ev = json.load(open(f"{r}/eval.json"))
days = ev["per_by_day"]
mean = sum(days.values()) / len(days)
print(f"model {m}: training days' validation PER " + ", ".join(f"{v:.2%}" for v in days.values())
      + f"; mean {mean:.2%}; target for the new day (1.25x + 1 point): {1.25 * mean + 0.01:.2%}")
ad = json.load(open(f"{r}/adapt.json"))
a = ad["adaptation"]
new = [k for k in ad["per_by_day"] if k not in days][0]
print(f"model {m}, evaluate --adapt-day on the 0-sentence checkpoint: new day {a['per_by_day_without'][new]:.2%}"
      f" -> {ad['per_by_day'][new]:.2%}; all days {a['per_without']:.2%} -> {ad['per']:.2%}")
PY
done
