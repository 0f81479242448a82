#!/usr/bin/env bash
# Builds the threshold rule in every guest language from source, then runs
# the `languages` criterion bench on them (see host/benches/languages.rs).
#
#   python         plugins/python/threshold, componentize-py (pinned, requirements.txt)
#   js-qjs         plugins/js/threshold, componentize-qjs --sync (pinned, package.json)
#   js-qjs-small   the same with --opt-size
#   js-spidermonkey the same source with componentize-js 0.23.0 (-d http fetch-event),
#                  installed into a scratch directory: measured for comparison only
#
# Usage (from anywhere, after the README's test command installed the toolchains):
#   host/benches/languages.sh [criterion args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/bench-rules"
rm -rf "$out" && mkdir -p "$out"
wit="$root/wit"

scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
(cd "$root/plugins/python/threshold" &&
  "$scripts/componentize-py" -d "$wit" -w rule componentize -p . -p .. app -o "$out/python.wasm" &&
  rm -rf __pycache__ ../__pycache__)

qjs="$root/plugins/js/node_modules/.bin/componentize-qjs"
js="$root/plugins/js/threshold/rule.js"
"$qjs" --sync --wit "$wit" --world rule --js "$js" -o "$out/js-qjs.wasm"
"$qjs" --sync --opt-size --wit "$wit" --world rule --js "$js" -o "$out/js-qjs-small.wasm"

spidermonkey="$root/target/componentize-js"
if [ ! -x "$spidermonkey/node_modules/.bin/componentize-js" ]; then
  mkdir -p "$spidermonkey"
  npm install --prefix "$spidermonkey" --no-audit --no-fund --no-save \
    @bytecodealliance/componentize-js@0.23.0
fi
"$spidermonkey/node_modules/.bin/componentize-js" "$js" --wit "$wit" -n rule \
  -d http fetch-event -o "$out/js-spidermonkey.wasm"

ls -l "$out"
cd "$root" && cargo bench -p vigil --bench languages -- "$@"
