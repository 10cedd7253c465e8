#!/usr/bin/env bash
# Side-by-side step time and peak memory: kdc vs PyTorch eager on the same machine, runs
# alternating (kdc, torch, kdc, torch, ...) so that drifts in machine speed hit both alike.
#
#   bench/compare.sh IMAGE ROUNDS STEPS [PYTHON]
#   bench/compare.sh 64 3 3            # recipes/bench/vit_t_64.kd vs torch_step.py --image 64
#
# Needs a release build (cargo build --release) and a Python with torch and transformers
# (PYTHON, default python3). Prints every run's JSON line, then the median step time of each
# side over the rounds and the ratios kdc/torch.
set -euo pipefail
image=${1:-64}
rounds=${2:-3}
steps=${3:-3}
python=${4:-python3}
cd "$(dirname "$0")/.."
recipe=recipes/bench/vit_t_${image}.kd
kdc=target/release/kdc
out=$(mktemp)
for r in $(seq "$rounds"); do
  "$kdc" bench "$recipe" --steps "$steps" --warmup 1 2>/dev/null | tail -1 | tee -a "$out"
  "$python" bench/torch_step.py --config vit-t --image "$image" --batch 64 \
    --steps "$steps" --warmup 1 2>/dev/null | tail -1 | tee -a "$out"
done
"$python" - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
side = lambda name: [r for r in runs if r["impl"] == name]
k, t = side("kdc"), side("pytorch-eager")
pairs = [a["median_step_s"] / b["median_step_s"] for a, b in zip(k, t)]
km = statistics.median(r["median_step_s"] for r in k)
tm = statistics.median(r["median_step_s"] for r in t)
kr = max(r["peak_rss_mib"] for r in k)
tr = max(r["peak_rss_mib"] for r in t)
print(f"kdc   median step {km:.3f} s, peak RSS {kr:.0f} MiB")
print(f"torch median step {tm:.3f} s, peak RSS {tr:.0f} MiB")
print(f"time kdc/torch {km / tm:.3f} (per round: {', '.join(f'{p:.3f}' for p in pairs)}), "
      f"memory kdc/torch {kr / tr:.3f}")
PY
rm -f "$out"
