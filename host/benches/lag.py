#!/usr/bin/env python3
"""Measured run: lag from poll to alert for a fast rule, alone and next to a
slow one, at ~500 samples/s.

Starts one status server on loopback (HTTP/1.1, keep-alive) serving N
targets at /t/<i>, each answering `{"cpu_usage": 42, "memory_usage": 51}`,
and runs the release `vigil` twice against it, every target polled every
100 ms (N=50: 500 samples/s):
  alone:  the bundled `threshold` rule only;
  beside: the same, plus `fixture_spin` as rule `slow` with busy_ms = 40
          (spins 40 ms of wall clock per call and returns nothing: 25 calls/s
          against 500 samples/s, so it cannot keep up).
After a warm-up, K times, one at a time: flips one target's cpu_usage to 95,
waits for `threshold`'s CpuUsageHigh to fire on it, flips it back to 42 and
waits for the alert to resolve. Per flip it records
  poll->alert: when the script read the firing line - the line's at_ms (the
               timestamp of the sample that produced it, i.e. its poll);
  flip->alert: when the script read the firing line - when cpu went to 95.
Prints min/median/max of both per scenario, the ratio of medians
(beside/alone), the samples `threshold` evaluated if evaluation lines are
printed, the machine and the date. Passes `--evaluations hide` when `vigil
run --help` offers it. A wait that passes its deadline is reported as a
timeout. Figures go to BENCHMARKS.md.

Usage (from the workspace root, after `cargo build --release`):
    python3 host/benches/lag.py [--targets 50] [--flips 10] [--vigil PATH]
"""
import argparse, http.server, json, os, queue, random, shutil, signal, statistics
import subprocess, sys, tempfile, threading, time

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--targets", type=int, default=50, help="status targets, each polled every 100 ms")
parser.add_argument("--flips", type=int, default=10, help="cpu flips per scenario")
parser.add_argument("--vigil", default=os.path.join(root, "target/release/vigil"))
parser.add_argument("--spin", default=os.path.join(root, "target/wasm-rules/wasm32-wasip2/rule/fixture_spin.wasm"))
parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the first flip")
parser.add_argument("--deadline", type=float, default=60.0, help="seconds to wait for one alert line")
args = parser.parse_args()

CALM, HOT = 42, 95
cpu = [CALM] * args.targets  # what /t/<i> answers; flipped by the main thread


class Status(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: vigil reuses its connections

    def do_GET(self):
        try:
            i = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/t/") else -1
        except ValueError:
            i = -1
        if not 0 <= i < len(cpu):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"cpu_usage": cpu[i], "memory_usage": 51}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # the default 5 drops SYNs when 50 targets connect at once
    daemon_threads = True
    errors = 0  # requests whose client went away (e.g. gave up at its timeout)

    def handle_error(self, request, client_address):
        Server.errors += 1


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{len(os.sched_getaffinity(0))} CPUs (nproc), {model}"


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def has_evaluations_flag(vigil):
    try:
        out = subprocess.run([vigil, "run", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--evaluations" in out.stdout + out.stderr


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Run:
    """One vigil process; a thread reads its stdout, timestamps alert lines
    as they are read, and counts evaluation lines per rule."""

    def __init__(self, name, work, port, extra_rules, hide):
        self.name = name
        config = os.path.join(work, f"{name}.toml")
        with open(config, "w") as f:
            for i in range(args.targets):
                f.write(f'[[targets]]\nname = "t{i}"\nkind = "http-json"\n'
                        f'url = "http://127.0.0.1:{port}/t/{i}"\ninterval = "100ms"\n\n')
            f.write('[[rules]]\nbuiltin = "threshold"\n' + extra_rules)
        command = [args.vigil, "run", "--config", config, "--format", "json",
                   "--data-dir", os.path.join(work, f"data-{name}")]
        if hide:
            command += ["--evaluations", "hide"]
        self.command = command
        self.stderr_path = os.path.join(work, f"{name}.stderr")
        self.alerts = queue.Queue()
        self.evaluations = {}  # rule -> lines
        self.other_alerts = {}  # (name, status) -> (count, first summary), alerts not waited for
        self.started = time.time()
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for line in self.proc.stdout:
            read_ms = time.time() * 1000
            if b'"type":"evaluation"' in line:
                start = line.find(b'"rule":"')
                rule = line[start + 8:line.find(b'"', start + 8)].decode() if start >= 0 else "?"
                self.evaluations[rule] = self.evaluations.get(rule, 0) + 1
            elif b'"type":"alert"' in line:
                self.alerts.put((read_ms, json.loads(line)))
        self.alerts.put((time.time() * 1000, None))  # EOF: vigil exited

    def wait_for(self, status, target, deadline):
        """The read time and event of `threshold`'s CpuUsageHigh `status` on
        `target`, or (None, reason)."""
        until = time.monotonic() + deadline
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return None, "timeout"
            try:
                read_ms, event = self.alerts.get(timeout=left)
            except queue.Empty:
                return None, "timeout"
            if event is None:
                self.alerts.put((read_ms, None))
                return None, f"vigil exited ({self.proc.poll()})"
            if (event.get("rule") == "threshold" and event.get("name") == "CpuUsageHigh"
                    and event.get("target") == target and event.get("status") == status):
                return read_ms, event
            key = (event.get("name"), event.get("status"))
            count, summary = self.other_alerts.get(key, (0, event.get("summary")))
            self.other_alerts[key] = (count + 1, summary)


def scenario(name, work, port, extra_rules, hide):
    load_before = loadavg()
    run = Run(name, work, port, extra_rules, hide)
    flips = []  # (poll->alert ms, flip->alert ms) or the failure
    try:
        print(f"[{name}] {' '.join(run.command)}", file=sys.stderr, flush=True)
        time.sleep(args.warmup)
        for k in range(args.flips):
            i = (k * 7) % args.targets  # spread over targets; a target is not reused soon
            target = f"t{i}"
            cpu[i] = HOT
            flipped_ms = time.time() * 1000
            read_ms, fired = run.wait_for("firing", target, args.deadline)
            cpu[i] = CALM
            if read_ms is None:
                flips.append(f"firing: {fired}")
                # a late firing would still resolve; let it, so it does not leak into the next flip
                run.wait_for("resolved", target, args.deadline)
                print(f"[{name}] flip {k + 1}: {target} firing {fired}", file=sys.stderr, flush=True)
                if run.proc.poll() is not None:
                    break
                continue
            poll_lag, flip_lag = read_ms - fired["at_ms"], read_ms - flipped_ms
            resolved_ms, resolved = run.wait_for("resolved", target, args.deadline)
            if resolved_ms is None:
                flips.append((poll_lag, flip_lag, f"resolved: {resolved}"))
                after = f"resolved {resolved}"
            else:
                flips.append((poll_lag, flip_lag, None))
                after = f"resolved after {resolved_ms - read_ms:.0f} ms"
            print(f"[{name}] flip {k + 1}: {target} poll->alert {poll_lag:.0f} ms, "
                  f"flip->alert {flip_lag:.0f} ms, {after}", file=sys.stderr, flush=True)
            if run.proc.poll() is not None:
                break
            # a random phase against the 100 ms polls, so that flip->alert samples the whole interval
            time.sleep(0.2 + random.uniform(0, 0.1))
    finally:
        for i in range(args.targets):
            cpu[i] = CALM
        seconds = time.time() - run.started
        stop(run.proc)
        run.reader.join(timeout=5)
    return {"flips": flips, "evaluations": dict(run.evaluations), "seconds": seconds,
            "other_alerts": dict(run.other_alerts), "exit": run.proc.returncode,
            "stderr": run.stderr_path, "load": (load_before, loadavg())}


def summary(values):
    if not values:
        return "-", None
    return f"{min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}", statistics.median(values)


def main():
    # SIGTERM to the script unwinds like Ctrl-C, so vigil and the server are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not os.path.exists(args.vigil):
        sys.exit(f"no vigil at {args.vigil}: run `cargo build --release` first")
    if not os.path.exists(args.spin):
        sys.exit(f"no fixture_spin at {args.spin}: run `cargo build --release` first")
    hide = has_evaluations_flag(args.vigil)
    slow = (f'\n[[rules]]\npath = "{args.spin}"\nname = "slow"\n'
            f'config = {{ busy_ms = 40 }}\ntimeout = "1s"\n')
    server = Server(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="vigil-lag-")
    results = {}
    try:
        for name, extra in (("alone", ""), ("beside", slow)):
            Server.errors = 0
            results[name] = scenario(name, work, server.server_port, extra, hide)
            results[name]["server_errors"] = Server.errors
    finally:
        server.shutdown()
        server.server_close()

    print(f"machine: {machine()}")
    print(f"date:    {time.strftime('%a %b %d %H:%M UTC %Y', time.gmtime())}")
    print(f"vigil:   {args.vigil} (--evaluations hide: {'passed' if hide else 'not offered'})")
    print(f"scene:   {args.targets} targets x 10 polls/s = {args.targets * 10} samples/s, "
          f"{args.flips} flips per scenario, warm-up {args.warmup:g} s, deadline {args.deadline:g} s")
    print(f"         beside = threshold + fixture_spin as `slow` (busy_ms = 40, timeout 1s)")
    print()
    print(f"{'':22}{'alone (ms)':>24}{'beside slow (ms)':>26}{'beside/alone':>15}")
    print(f"{'':22}{'min  median     max':>24}{'min  median     max':>26}{'(medians)':>15}")
    for label, column in (("poll->alert", 0), ("flip->alert", 1)):
        cells, medians = [], []
        for name in ("alone", "beside"):
            text, median = summary([f[column] for f in results[name]["flips"] if isinstance(f, tuple)])
            cells.append(text)
            medians.append(median)
        ratio = f"{medians[1] / medians[0]:.1f}x" if None not in medians and medians[0] > 0 else "-"
        print(f"{label:22}{cells[0]:>24}{cells[1]:>26}{ratio:>15}")
    for name in ("alone", "beside"):
        r = results[name]
        ok = sum(isinstance(f, tuple) for f in r["flips"])
        failures = [f if isinstance(f, str) else f[2] for f in r["flips"]
                    if isinstance(f, str) or f[2]]
        line = f"{name:7} flips measured {ok}/{args.flips}"
        if failures:
            line += f" ({'; '.join(failures)})"
        if r["evaluations"]:
            counts = ", ".join(f"{rule} {n}" for rule, n in sorted(r["evaluations"].items()))
            expected = r["seconds"] * args.targets * 10
            line += f"; evaluation lines in {r['seconds']:.0f} s: {counts} (polls due ~{expected:.0f})"
        elif hide:
            line += "; evaluation lines hidden"
        if r["other_alerts"]:
            line += "; other alert lines: " + ", ".join(
                f"{alert} {status} x{n} ({summary})"
                for (alert, status), (n, summary) in sorted(r["other_alerts"].items(), key=str))
        line += f"; load average {r['load'][0]} before, {r['load'][1]} after"
        if r["server_errors"]:
            line += f"; status requests the client dropped: {r['server_errors']}"
        print(line)
        print(f"        poll->alert per flip (ms): " + " ".join(
            f"{f[0]:.0f}" if isinstance(f, tuple) else "timeout" for f in r["flips"]))
        if r["exit"] not in (0, -signal.SIGTERM, None):
            how = " (still running 15 s after SIGTERM: killed)" if r["exit"] == -signal.SIGKILL else ""
            print(f"        vigil exited {r['exit']}{how}; its stderr: {r['stderr']}")
    if all(results[name]["exit"] in (0, -signal.SIGTERM, None) for name in results):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
