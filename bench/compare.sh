#!/bin/sh
# Vigil against Prometheus 2.42 + Alertmanager 0.25 on one synthetic fleet,
# both measured over the same window, printed side by side.
#
#   bench/compare.sh --targets 1000            # both systems, 60 s window, 12 flips
#   bench/compare.sh --targets 10000 --only vigil
#   bench/compare.sh --help                    # every knob
#
# Needs Debian's `prometheus` and `prometheus-alertmanager` (it installs
# nothing: a missing one stops it with the package's name). Everything runs
# on loopback; every process it starts is killed by PID when it ends.
set -eu
cd "$(dirname "$0")/.."
# Vigil as it would be shipped: the `production` profile (release with
# thin LTO, see Cargo.toml). The driver itself is an ordinary release build.
cargo build --profile production --quiet -p vigil
cargo build --release --quiet -p vigil-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/compare" --vigil "$target/production/vigil" "$@"
