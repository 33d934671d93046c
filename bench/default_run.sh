#!/usr/bin/env bash
# The README's command 1 on a fresh clone of this repository's HEAD, timed as a user would see it: the default
# search (32 trials; without a GPU, planned to 20 minutes) and its confirm stage, output to a file (off a terminal).
#
#   bash bench/default_run.sh LABEL [VAR=VALUE ...]
#   bash bench/default_run.sh bf16
#   bash bench/default_run.sh fp32 S5_CPU_BF16=0                              # AVX512 without bf16, emulated
#   bash bench/default_run.sh avx2 ONEDNN_MAX_CPU_ISA=AVX2 S5_CPU_BF16=0      # AVX2 only, emulated
#
# Leaves results/default-runs/<UTC date>-<LABEL>/: command.log (the command, the machine, its whole output),
# time.txt (/usr/bin/time -v), wall.txt (seconds against the budget) and the search's summary folder (no weights,
# no Ray storage). The install is not timed; nothing else should run beside it.
set -euo pipefail
LABEL=${1:?usage: bench/default_run.sh LABEL [VAR=VALUE ...]}
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/s5-default-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
OUT="$ROOT/results/default-runs/$(date -u +%Y%m%d)-$LABEL"
mkdir -p "$OUT"

git clone -q "$ROOT" "$WORK/clone"
cd "$WORK/clone"
python3 -m venv .venv
.venv/bin/pip install -q -e . > "$WORK/pip.log" 2>&1

{
  echo "# ${*:-(no variables)} python -m tuner.search --num-samples 32"
  echo "# fresh clone of $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC'), output to a file"
  echo "# CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)"
} > "$OUT/command.log"
start=$(date +%s.%N)
env "$@" /usr/bin/time -v -o "$OUT/time.txt" .venv/bin/python -m tuner.search --num-samples 32 >> "$OUT/command.log" 2>&1
end=$(date +%s.%N)
python3 - "$start" "$end" > "$OUT/wall.txt" <<'PY'
import sys
wall = float(sys.argv[2]) - float(sys.argv[1])
print(f"wall {wall:.1f} s = {wall / 60:.2f} min against the 20-minute budget: {100 * (wall / 1200 - 1):+.1f} %")
PY
cat "$OUT/wall.txt"
name=$(sed -n 's/^experiment \([^:]*\): Ray storage.*/\1/p' "$OUT/command.log" | head -1)
cp -r "results/$name" "$OUT/"
find "$OUT" -name '*.pt' -delete
