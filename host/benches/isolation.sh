#!/usr/bin/env bash
# Measured run: does a runaway rule slow a well-behaved one down?
#
# Runs the release `vigil` twice against a status server on loopback, each
# time for DURATION seconds at a 50 ms poll interval (20 samples/s):
#   alone:   the bundled `threshold` rule only;
#   runaway: the same, plus `fixture_spin`, which runs into its 50 ms deadline
#            on every sample (quarantine switched off so it never rests).
# Prints p50/p99/max of `threshold`'s per-call time and its sample count for
# both, from vigil's JSON output. Figures go to BENCHMARKS.md.
#
# Usage: host/benches/isolation.sh [DURATION_SECONDS]   (from the workspace root,
# after `cargo build --release`)
set -euo pipefail
duration=${1:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
vigil="$root/target/release/vigil"
spin="$root/target/wasm-rules/wasm32-wasip2/rule/fixture_spin.wasm"
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT

python3 "$root/host/benches/status_server.py" "$work/port" &
server=$!
while [ ! -s "$work/port" ]; do sleep 0.1; done
url="http://127.0.0.1:$(cat "$work/port")/status"

run() {
    local name=$1 extra=$2
    cat > "$work/$name.toml" <<TOML
[[targets]]
name = "web"
kind = "http-json"
url = "$url"
interval = "50ms"

[[rules]]
builtin = "threshold"
$extra
TOML
    timeout "$duration" "$vigil" run --config "$work/$name.toml" --format json --evaluations show \
        --data-dir "$work/data-$name" 2>/dev/null > "$work/$name.jsonl" || true
    python3 - "$name" "$work/$name.jsonl" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
calls = sorted(
    line["duration_us"]
    for line in map(json.loads, open(path))
    if line.get("type") == "evaluation" and line["rule"] == "threshold" and "error" not in line
)
pick = lambda q: calls[min(len(calls) - 1, int(q * len(calls)))]
print(f"{name:8} samples={len(calls):5} p50={pick(0.50):6}us p99={pick(0.99):6}us max={calls[-1]:6}us")
PY
}

run alone ""
run runaway "
[[rules]]
path = \"$spin\"
timeout = \"50ms\"
quarantine_after = 1000000"
