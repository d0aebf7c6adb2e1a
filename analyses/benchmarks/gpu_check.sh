#!/usr/bin/env bash
# The GPU path, proven in one go (about 15 minutes on one CUDA device):
#   1. the tests marked `gpu` (pytest -m gpu),
#   2. the attribution benchmark on CUDA,
#   3. the DAC benchmark on CUDA (channels_last; bf16 autocast where scores stay within 1e-3),
#   4. the generator on CUDA (full profile, stopping rule, with and without channel sparsity),
#   5. IG steps at equal completeness error, and the end-to-end workload (generator + 4 methods
#      + single-channel DAC + Shapley, today's defaults vs the new ones),
# then the speedups against the published loop and the QuAC-style loop.
#
#   bash analyses/benchmarks/gpu_check.sh            # from the repository root
#   OUT=/some/dir PYTHON=python bash analyses/benchmarks/gpu_check.sh
#
# Every step has its own time limit, so a hung step cannot eat the others' time; logs and JSON
# go to $OUT (default: ./gpu_check). The script exits non-zero when a step failed.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
status=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  [ $rc -eq 0 ] || status=1
}

"$PYTHON" - 2>/dev/null <<'EOF' || { echo "no CUDA device: nothing to prove here"; exit 2; }
import torch
assert torch.cuda.is_available()
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
EOF

step pytest_gpu 150 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -rs tests/test_dac.py tests/test_metrics.py tests/test_compute.py
step attribution 90 "$PYTHON" analyses/benchmarks/attribution_speed.py --device cuda --json "$OUT/attribution.json"
step dac 240 "$PYTHON" analyses/benchmarks/dac_speed.py --device cuda --pairs 64 --reference-pairs 2 --json "$OUT/dac.json"
step generator 240 "$PYTHON" analyses/benchmarks/generator_quality.py --device cuda --phenotype mito_fragmentation \
  --size 64 --n 256 --time-budget 90 --json "$OUT/generator.json"
step integration 90 "$PYTHON" analyses/benchmarks/integration_steps.py --device cuda --images 128 --size 64 \
  --json "$OUT/integration.json"
step end_to_end 240 "$PYTHON" analyses/benchmarks/end_to_end.py --device cuda --tiles 258 --size 64 --old-steps 400 \
  --time-budget 60 --json "$OUT/end_to_end.json"

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
path = out / "dac.json"
if not path.exists():
    sys.exit("no DAC numbers (the dac step failed)")
run = json.loads(path.read_text())
print(f"DAC on {run['device']}, {run['pairs']} pairs, {run['steps']} steps, autocast={run.get('autocast')} "
      f"(bf16 max |score diff| {run.get('bf16_max_score_difference', float('nan')):.1e})")
print(f"{'pairing':8s} {'strategy':15s} {'passes/curve':>12s} {'max|diff|':>9s} {'x published':>11s} {'x QuAC':>7s}")
for r in run["rows"]:
    print(f"{r['pairing']:8s} {r['strategy']:15s} {r['passes_per_curve']:12.1f} {r['max_abs_dac_difference']:9.4f} "
          f"{r.get('speedup_vs_published', float('nan')):11.1f} {r.get('speedup_vs_quac', float('nan')):7.1f}")
worst = min(r.get("speedup_vs_published", 0) for r in run["rows"])
print(f"smallest speedup over the published loop: {worst:.1f}x (target >= 30x)")
EOF
exit $status
