#!/usr/bin/env python3
"""Measured run: time from a rule file's change to the first sample
evaluated by the new version.

Starts the release `vigil` against a status server on loopback polled every
5 ms, with one rule read from a file. N times: writes a new version of the
rule (the same component with a different custom section, so a new hash),
and measures how long until vigil prints an evaluation by that version.
Prints p50/p99/max and the debounce in force.

Usage (from the workspace root, after `cargo build --release`):
    python3 host/benches/reload.py [RULE.wasm] [N] [DEBOUNCE]
RULE defaults to the bundled threshold rule, N to 50, DEBOUNCE to vigil's
default (written as e.g. 50ms).
"""
import json, os, queue, subprocess, sys, tempfile, threading, time

import status_server  # beside this file

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rules_dir = os.path.join(root, "target/wasm-rules/wasm32-wasip2/rule")
rule_wasm = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else os.path.join(rules_dir, "vigil_threshold.wasm")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 50
debounce = sys.argv[3] if len(sys.argv) > 3 else None
base = open(rule_wasm, "rb").read()


def variant(tag):
    name = b"vigil-bench-version"
    payload = bytes([len(name)]) + name + tag.to_bytes(4, "little")
    return base + bytes([0, len(payload)]) + payload


server = status_server.start()

work = tempfile.mkdtemp()
rule_path = os.path.join(work, "rule.wasm")
open(rule_path, "wb").write(variant(0))
config = os.path.join(work, "vigil.toml")
with open(config, "w") as f:
    if debounce:
        f.write(f'reload_debounce = "{debounce}"\n')
    f.write(f'[[targets]]\nname = "web"\nkind = "http-json"\n'
            f'url = "http://127.0.0.1:{server.server_port}/status"\ninterval = "5ms"\n\n'
            f'[[rules]]\nname = "bench"\npath = "{rule_path}"\n')

vigil = subprocess.Popen(
    [os.path.join(root, "target/release/vigil"), "run", "--config", config, "--format", "json",
     "--evaluations", "show",
     "--data-dir", os.path.join(work, "data")],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
versions = queue.Queue()


def read():
    for line in vigil.stdout:
        event = json.loads(line)
        if event.get("type") == "evaluation":
            versions.put((time.monotonic(), event["rule_version"]))


threading.Thread(target=read, daemon=True).start()


def wait_for(version):
    while True:
        at, seen = versions.get(timeout=30)
        if seen == version:
            return at


wait_for(1)
latencies = []
for i in range(1, count + 1):
    time.sleep(0.2)  # let the previous version settle
    with open(rule_path + ".tmp", "wb") as f:
        f.write(variant(i))
    os.rename(rule_path + ".tmp", rule_path)
    changed = time.monotonic()
    latencies.append((wait_for(i + 1) - changed) * 1000)
vigil.terminate()
vigil.wait()

latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
print(f"rule={os.path.basename(rule_wasm)} size={len(base)}B reloads={count} "
      f"debounce={debounce or 'default'}: p50={pick(0.5):.0f}ms p99={pick(0.99):.0f}ms max={latencies[-1]:.0f}ms")
