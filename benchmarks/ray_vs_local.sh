#!/usr/bin/env bash
# The quick profile's grid twice, at the same placement (one thread per configuration):
# with the local process pool, then as Ray tasks on a one-node Ray cluster started here.
# Prints both wall times and whether both runs chose the same configuration with the same
# metrics. Ray runs inside a private network namespace (its addresses are 127.0.0.1), so this
# needs root: sudo bash benchmarks/ray_vs_local.sh   (or `make ray-vs-local`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
OUT="${OUT:-$(mktemp -d -t vqlib-ray-vs-local.XXXX)}"
CPUS="$(nproc)"
mkdir -p "$OUT"

time_grid() {  # $1: name, rest: extra options; the grid's own folders under $OUT/$1
  local name=$1; shift
  local start=$SECONDS
  VQLIB_ROOT="$OUT/$name" "$BIN/vqlib" grid --profile quick --threads-per-config 1 "$@" > "$OUT/$name.log" 2>&1
  echo "$name $((SECONDS - start))" >> "$OUT/times"
}

: > "$OUT/times"
time_grid local --executor local
export OUT BIN CPUS
unshare --net bash -c '
  set -euo pipefail
  ip link set lo up
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python3 -c "import secrets; print(secrets.token_hex(32))")
  # Fixed agent ports: a busy machine otherwise hits Ray 2.60'"'"'s 15 s agent timeout (ray-project/ray#65983).
  "$BIN/ray" start --head --port 6379 --num-cpus "$CPUS" --node-ip-address 127.0.0.1 --include-dashboard=false \
    --disable-usage-stats --dashboard-agent-grpc-port 6380 --dashboard-agent-listen-port 6381 \
    --metrics-export-port 6382 --runtime-env-agent-port 6383 > "$OUT/ray-start.log" 2>&1
  trap "\"$BIN/ray\" stop --force > /dev/null 2>&1" EXIT
  start=$SECONDS
  VQLIB_ROOT="$OUT/ray" "$BIN/vqlib" grid --profile quick --executor ray --ray-address 127.0.0.1:6379 \
    --cpus-per-config 1 > "$OUT/ray.log" 2>&1
  echo "ray $((SECONDS - start))" >> "$OUT/times"
'
"$BIN/python" - "$OUT" <<'PY'
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
times = dict(line.split() for line in (out / "times").read_text().splitlines())
local, ray = (pd.read_csv(out / n / "results" / "grid" / "summary.csv").set_index("name") for n in ("local", "ray"))
columns = ["val_mse", "val_perplexity", "val_usage", "best_epoch"]
same = local[columns].equals(ray[columns])
print(f"grid of the quick profile, one thread per configuration, {len(local)} configurations")
print(f"  local pool: {float(times['local']):.0f} s   Ray tasks: {float(times['ray']):.0f} s   "
      f"(Ray / local = {float(times['ray']) / float(times['local']):.3f})")
print(f"  best by validation MSE: local {local['val_mse'].idxmin()}, Ray {ray['val_mse'].idxmin()}")
print(f"  every configuration's validation metrics identical: {same}")
if not same:
    print((local[columns] - ray[columns]).abs().max().to_string())
print(f"  Ray ran on: {sorted(set(ray['threads'].astype(str)))} thread(s); outputs under {out}")
PY
