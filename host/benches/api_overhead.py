#!/usr/bin/env python3
"""Measured run: what the HTTP API, /metrics and the page cost a host
polling 1,000 targets once a second.

One status server on loopback (HTTP/1.1, keep-alive) serves N targets at
/t/<i>, each answering `{"cpu_usage": 42, "memory_usage": 51}` (no alert
fires). The release `vigil` polls them every second with the bundled rule,
in three alternating scenarios, each for WINDOW seconds after a warm-up:
  off:     `[api] listen = "off"`: no server at all;
  idle:    the API listening, nobody asking;
  watched: the API listening, and every second what the page asks
           (`/api/v1/alerts`, `/targets`, `/rules`, `/audit?limit=20`)
           plus a Prometheus scrape of `/metrics`: a 1 s scrape and a page
           left open, the worst an operator does.
Measured from /proc/PID/stat: the host's CPU time (user + system) over the
window, as a percentage of one core. The overhead is watched - off, and
idle - off, per round; the rounds alternate so that drift on a shared
machine falls on every scenario alike. Prints every round, the medians,
the machine and the date. Figures go to BENCHMARKS.md.

Usage (from the workspace root, after `cargo build --release`):
    python3 host/benches/api_overhead.py [--targets 1000] [--window 30] [--rounds 3]
"""
import argparse, http.server, json, os, platform, statistics, subprocess, sys
import tempfile, threading, time, urllib.request

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--targets", type=int, default=1000)
parser.add_argument("--window", type=float, default=30.0, help="seconds measured per run")
parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--vigil", default=os.path.join(root, "target/release/vigil"))
args = parser.parse_args()

BODY = json.dumps({"cpu_usage": 42, "memory_usage": 51}).encode()


class Status(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real fleet would

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *_):
        pass


class Fleet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A host stopped between two polls closes its connections: not news.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


server = Fleet(("127.0.0.1", 0), Status)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]
ticks = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def page_and_scrape(base, stop, errors):
    """Every second: what the page fetches, and a /metrics scrape."""
    paths = ["/api/v1/alerts", "/api/v1/targets", "/api/v1/rules", "/api/v1/audit?limit=20", "/metrics"]
    while not stop.is_set():
        started = time.monotonic()
        for path in paths:
            try:
                with urllib.request.urlopen(base + path, timeout=10) as answer:
                    answer.read()
            except Exception as problem:  # counted and reported, not hidden
                errors.append(f"{path}: {problem}")
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def run(scenario):
    work = tempfile.mkdtemp(prefix="vigil-api-bench-")
    listen = "off" if scenario == "off" else "127.0.0.1:0"
    with open(os.path.join(work, "vigil.toml"), "w") as config:
        for i in range(args.targets):
            config.write(f'[[targets]]\nname = "t{i}"\nkind = "http-json"\n'
                         f'url = "http://127.0.0.1:{port}/t/{i}"\ninterval = "1s"\n\n')
        config.write(f'[[rules]]\nbuiltin = "threshold"\n\n[api]\nlisten = "{listen}"\n')
    vigil = subprocess.Popen(
        [args.vigil, "run", "--config", os.path.join(work, "vigil.toml"),
         "--data-dir", os.path.join(work, "data"), "--evaluations", "hide"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop, errors, reader = threading.Event(), [], None
    try:
        if scenario == "watched":
            addr_file = os.path.join(work, "data", "api.json")
            deadline = time.monotonic() + 60
            while not os.path.exists(addr_file):
                if time.monotonic() > deadline:
                    sys.exit("vigil wrote no api.json within 60 s")
                time.sleep(0.05)
            base = "http://" + json.load(open(addr_file))["addr"]
            reader = threading.Thread(target=page_and_scrape, args=(base, stop, errors))
            reader.start()
        time.sleep(args.warmup)
        before, start = cpu_seconds(vigil.pid), time.monotonic()
        time.sleep(args.window)
        used, wall = cpu_seconds(vigil.pid) - before, time.monotonic() - start
    finally:
        stop.set()
        if reader:
            reader.join()
        vigil.terminate()
        vigil.wait(timeout=30)
    if errors:
        sys.exit(f"{scenario}: {len(errors)} requests failed, first: {errors[0]}")
    return 100.0 * used / wall


print(f"# {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')}")
print(f"# {args.targets} targets at 1 s, window {args.window:.0f} s, {args.rounds} rounds")
results = {"off": [], "idle": [], "watched": []}
for round_ in range(args.rounds):
    for scenario in ["off", "idle", "watched"]:
        percent = run(scenario)
        results[scenario].append(percent)
        print(f"round {round_ + 1} {scenario:<8} {percent:6.2f} % of a core", flush=True)
off = statistics.median(results["off"])
for scenario in ["idle", "watched"]:
    extra = [results[scenario][i] - results["off"][i] for i in range(args.rounds)]
    print(f"{scenario:<8} median {statistics.median(results[scenario]):6.2f} %, "
          f"added over off: median {statistics.median(extra):+.2f} points "
          f"(rounds: {', '.join(f'{e:+.2f}' for e in extra)})")
print(f"off      median {off:6.2f} %")
