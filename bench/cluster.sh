#!/bin/sh
# A Vigil cluster of 1, 2 and 3 nodes (on this machine) sharing one synthetic
# fleet through one nats-server: polls per target per second, jitter, CPU and
# RSS per node and of the server, partitions per node.
#
#   bench/cluster.sh --targets 3000 --window 30
#   bench/cluster.sh --help                    # every knob
#
# Needs nats-server 2.11 or newer on PATH (`.ci/run` installs 2.15.1 from
# tests/cluster/requirements.txt). Everything runs on loopback; every process
# it starts is killed by PID when it ends.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet -p vigil -p vigil-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/cluster" --vigil "$target/release/vigil" "$@"
