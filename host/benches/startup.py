#!/usr/bin/env python3
"""Measured run: how long the release `vigil` takes to start with N rules
from one component, from the process's start to its first evaluation.

Lays out N rules of one component (default: the Python threshold rule the
`instances` bench uses) in one of two shapes:
  dir    a rules directory of N copies of the file (`[[rules]] dir = ...`):
         every file is read and hashed, the component compiled (or mapped
         from the cache) once and shared;
  file   N `[[rules]]` entries naming the same file, each with its own name;
  distinct  a rules directory of N variants of the file (a custom section
         with the index appended: N components, the same code), as N
         different rules would be: each compiled (or mapped from the
         cache) on its own. The warm-up compiles all N: slow for Python.
Starts vigil once to fill the compile cache in its data directory, then
RUNS times: starts it with a fresh state (the cache kept), a status server
on loopback as its one target (polled every 100 ms, the first poll at
once), and measures until every rule has printed an evaluation (`all`) and
until the first did (`first`), and the CPU time (user + system, all
threads) vigil had used by then. Prints min/median/max of each.

Usage (from the workspace root, after `cargo build --release --workspace --bin vigil`):
    python3 host/benches/startup.py [RULE.wasm] [N] [dir|file] [RUNS]
RULE defaults to $CARGO_TARGET_DIR/bench-rules/python.wasm (built as the
"Many rules from one component" section of BENCHMARKS.md says), N to 100,
the shape to dir, RUNS to 5.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, threading, time

import status_server  # beside this file

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
rule_wasm = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else os.path.join(target, "bench-rules/python.wasm")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
shape = sys.argv[3] if len(sys.argv) > 3 else "dir"
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
if shape not in ("dir", "file", "distinct"):
    sys.exit(f"the shape is `dir`, `file` or `distinct`, not `{shape}`")
if not os.path.exists(rule_wasm):
    sys.exit(f"{rule_wasm} is missing\nhint: build it as BENCHMARKS.md, \"Many rules from one component\", says")
vigil_bin = os.environ.get("VIGIL_BIN") or os.path.join(target, "release/vigil")

def variant(base, tag):
    """`base` with a custom section holding `tag`: another component (another
    hash, another cache entry), the same code."""
    name = b"vigil-bench-startup"
    payload = bytes([len(name)]) + name + tag.to_bytes(4, "little")
    return base + bytes([0, len(payload)]) + payload


server = status_server.start()
work = tempfile.mkdtemp()
rules = os.path.join(work, "rules")
os.mkdir(rules)
config_line = 'config = { thresholds = { cpu_usage = 80, memory_usage = 80 } }\n'
with open(os.path.join(work, "vigil.toml"), "w") as f:
    f.write(f'[[targets]]\nname = "web"\nkind = "http-json"\n'
            f'url = "http://127.0.0.1:{server.server_port}/status"\ninterval = "100ms"\n\n'
            '[api]\nlisten = "off"\n\n')
    if shape in ("dir", "distinct"):
        base = open(rule_wasm, "rb").read()
        for i in range(count):
            with open(os.path.join(rules, f"rule-{i:03}.wasm"), "wb") as rule:
                rule.write(base if shape == "dir" else variant(base, i))
        f.write(f'[[rules]]\ndir = "{rules}"\n{config_line}')
    else:
        shutil.copyfile(rule_wasm, os.path.join(rules, "rule.wasm"))
        for i in range(count):
            f.write(f'[[rules]]\nname = "rule-{i:03}"\npath = "{rules}/rule.wasm"\n{config_line}\n')
data = os.path.join(work, "data")


def cpu_seconds(pid):
    """User + system CPU seconds process `pid` has used (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(timeout=120):
    """Starts vigil and returns (seconds to the first evaluation, to the
    first of every rule, CPU seconds vigil had used by then)."""
    # A fresh state each run; the compile cache (data/cache) is kept.
    if os.path.exists(os.path.join(data, "state.redb")):
        os.remove(os.path.join(data, "state.redb"))
    started = time.monotonic()
    vigil = subprocess.Popen(
        [vigil_bin, "run", "--config", os.path.join(work, "vigil.toml"), "--format", "json",
         "--evaluations", "show", "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first, seen = None, set()
    result = {}

    def read():
        nonlocal first
        for line in vigil.stdout:
            event = json.loads(line)
            if event.get("type") != "evaluation":
                continue
            now = time.monotonic()
            first = first or now
            seen.add(event["rule"])
            if len(seen) == count:
                result["all"] = now
                result["cpu"] = cpu_seconds(vigil.pid)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=timeout)
    vigil.terminate()
    vigil.wait()
    if "all" not in result:
        sys.exit(f"only {len(seen)} of {count} rules evaluated within {timeout} s")
    return first - started, result["all"] - started, result["cpu"]


start(timeout=3600)  # fills the compile cache (compiles every distinct component)
firsts, alls, cpus = [], [], []
for _ in range(runs):
    first, all_, cpu = start()
    firsts.append(first * 1000)
    alls.append(all_ * 1000)
    cpus.append(cpu * 1000)
server.shutdown()
shutil.rmtree(work)
fmt = lambda xs: f"min={min(xs):.0f}ms median={statistics.median(xs):.0f}ms max={max(xs):.0f}ms"
print(f"rule={os.path.basename(rule_wasm)} size={os.path.getsize(rule_wasm)}B "
      f"rules={count} shape={shape} runs={runs} (compile cache warm)")
print(f"  start -> first evaluation:          {fmt(firsts)}")
print(f"  start -> every rule evaluated once: {fmt(alls)}")
print(f"  CPU time vigil used by then:        {fmt(cpus)}")
