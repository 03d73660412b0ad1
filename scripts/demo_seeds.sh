#!/usr/bin/env bash
# The demo (configs/demo.yaml) over data seeds x run seeds, measured with `fastbci sweep seeds`:
# the README's table "The demo, over seeds". Rerun it as it is:
#
#   bash scripts/demo_seeds.sh [WORK]          # default WORK: demo-seeds
#   DATA_SEEDS="5 6" RUN_SEEDS=11,12,13 bash scripts/demo_seeds.sh /tmp/other-seeds
#
# For each data seed D: a release of the demo preset written with synth seed D (D = 0 is the
# demo's own data) in WORK/data-D, then `fastbci sweep seeds configs/demo.yaml --seed-list
# RUN_SEEDS` in WORK/sweep-D (each run: seed = dataset.seed = S, as `fastbci demo seed=S
# dataset.seed=S`). Extra arguments after WORK are key=value overrides for every run.
# WORK/seeds.md gathers every run: final and best validation PER, the first validation below
# the plateau threshold, and the training minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-demo-seeds}
shift || true
DATA_SEEDS=${DATA_SEEDS:-0 777 2024 31337}
RUN_SEEDS=${RUN_SEEDS:-1,2,3,4,5}
FASTBCI=${FASTBCI:-fastbci}
mkdir -p "$WORK"
for d in $DATA_SEEDS; do
  $FASTBCI synth --out "$WORK/data-$d" --demo --neural-dim 64 --seed "$d"
  $FASTBCI sweep seeds configs/demo.yaml --seed-list "$RUN_SEEDS" --out "$WORK/sweep-$d" \
    "dataset.dataset_dir=$WORK/data-$d" "$@"
done
python - "$WORK" $DATA_SEEDS <<'PY'
import csv, statistics, sys
from pathlib import Path
work, seeds = Path(sys.argv[1]), sys.argv[2:]
lines = ["| data seed | run seed | final PER | best PER | left the plateau | training minutes |",
         "| --- | --- | --- | --- | --- | --- |"]
finals, minutes = [], []
for d in seeds:
    for r in csv.DictReader(open(work / f"sweep-{d}" / "seeds.csv")):
        f, b = float(r["final_per"]), float(r["best_per"])
        m = float(r["seconds"]) / 60
        finals.append(f)
        minutes.append(m)
        left = f"batch {r['left_plateau_batch']}" if r["left_plateau_batch"] else "never"
        lines.append(f"| {d} | {r['seed']} | {100 * f:.1f}% | {100 * b:.1f}% | {left} | {m:.2f} |")
lines.append("")
lines.append(f"{len(finals)} runs: final PER min {100 * min(finals):.1f}%, median "
             f"{100 * statistics.median(finals):.1f}%, max {100 * max(finals):.1f}%; "
             f"{sum(f <= 0.05 for f in finals)} of {len(finals)} at or below 5%; training "
             f"{min(minutes):.2f} to {max(minutes):.2f} minutes")
(work / "seeds.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
