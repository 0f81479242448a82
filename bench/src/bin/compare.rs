//! `compare`: Prometheus + Alertmanager against Vigil on one synthetic
//! fleet, measured the same way, printed side by side.
//!
//! For each system in turn: write its config into a temporary directory,
//! start it on loopback, wait until every target has been polled, let it
//! warm up, then measure over one window its CPU seconds (user + system of
//! every process under test, from `/proc`), and flip K targets one at a
//! time above the threshold and back, timing the firing and the resolved
//! notification at the webhook receiver. Peak RSS is `VmHWM` at the end.
//! Every process this starts is killed when it ends, on error or Ctrl-C too.
//!
//! `bench/compare.sh` builds what it needs and runs this; `--help` lists
//! the knobs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use vigil_bench::children::Children;
use vigil_bench::fleet::{Fleet, Flip, Stats, target_name};
use vigil_bench::min_median_max;
use vigil_bench::receiver::Receiver;

#[derive(Parser)]
struct Args {
    /// How many targets the fleet serves.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// Seconds over which CPU is measured (longer if the flips take longer).
    #[arg(long, default_value_t = 60.0)]
    window: f64,
    /// Targets flipped above the threshold and back, one at a time.
    #[arg(long, default_value_t = 12)]
    flips: usize,
    /// Seconds after every target has been polled once before measuring.
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Only this system.
    #[arg(long, value_enum)]
    only: Option<System>,
    /// The `vigil` binary [default: next to this one].
    #[arg(long)]
    vigil: Option<PathBuf>,
    /// Runs the fleet in its own process (the `fleet` binary next to this
    /// one) pinned to these CPUs with `taskset -c` (e.g. `1`), so its work
    /// is not on the cores of the system under test. Without it the fleet
    /// is served by this process, on any core.
    #[arg(long, value_name = "CPU_LIST")]
    fleet_cpus: Option<String>,
    /// Pins the system under test to these CPUs with `taskset -c` (e.g.
    /// `0`).
    #[arg(long, value_name = "CPU_LIST")]
    sut_cpus: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Prometheus,
    Vigil,
}

impl System {
    fn title(self) -> &'static str {
        match self {
            System::Prometheus => "Prometheus+AM",
            System::Vigil => "Vigil",
        }
    }
}

/// What one system measured.
struct Figures {
    window: Duration,
    cpu_seconds: f64,
    /// The fleet's, when it runs in its own process.
    fleet_cpu_seconds: f64,
    peak_rss_bytes: u64,
    fleet: Stats,
    detections: Vec<f64>,
    resolutions: Vec<f64>,
    missed: usize,
    /// Notifications not about a flipped target, by alert name and status
    /// (a `TargetDown` is a poll that failed or timed out).
    other_notifications: std::collections::BTreeMap<String, usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let systems: Vec<System> = match args.only {
        Some(system) => vec![system],
        None => vec![System::Prometheus, System::Vigil],
    };
    let vigil = match &args.vigil {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("vigil"),
    };
    // Everything the run needs, checked before anything starts.
    for system in &systems {
        match system {
            System::Prometheus => {
                for (program, package) in [
                    ("prometheus", "prometheus"),
                    ("prometheus-alertmanager", "prometheus-alertmanager"),
                ] {
                    find_program(program).with_context(|| {
                        format!(
                            "`{program}` is not on PATH\nhint: sudo apt-get install {package} (Debian's, the version the figures are for)"
                        )
                    })?;
                }
            }
            System::Vigil => {
                if !vigil.is_file() {
                    bail!(
                        "no vigil binary at `{}`\nhint: cargo build --release -p vigil, or pass --vigil PATH",
                        vigil.display()
                    );
                }
            }
        }
    }

    if (args.fleet_cpus.is_some() || args.sut_cpus.is_some()) && find_program("taskset").is_none() {
        bail!(
            "`taskset` is not on PATH (needed by --fleet-cpus and --sut-cpus)\nhint: sudo apt-get install util-linux"
        );
    }
    let (fleet, _fleet_process) = match &args.fleet_cpus {
        None => {
            let fleet = Fleet::new(args.targets);
            (
                FleetControl::new(vigil_bench::serve(fleet.router(), 0).await?, None)?,
                None,
            )
        }
        Some(cpus) => {
            let (addr, pid, process) = start_fleet(cpus, args.targets)?;
            (FleetControl::new(addr, Some(pid))?, Some(process))
        }
    };
    let fleet_addr = fleet.addr;
    let receiver = Receiver::new();
    let receiver_addr = vigil_bench::serve(receiver.router(), 0).await?;
    println!(
        "fleet of {} targets on http://{fleet_addr}, receiver on http://{receiver_addr}/hook",
        args.targets
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut results = Vec::new();
    for system in systems {
        let run = measure(
            system,
            &args,
            &vigil,
            &fleet,
            fleet_addr,
            &receiver,
            receiver_addr,
        );
        let figures = tokio::select! {
            figures = run => figures?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; every process started was killed"),
            _ = terminate.recv() => bail!("terminated; every process started was killed"),
        };
        results.push((system, figures));
    }
    print!("{}", table(&args, &results));
    Ok(())
}

/// Runs one system on the fleet and measures it.
async fn measure(
    system: System,
    args: &Args,
    vigil: &Path,
    fleet: &FleetControl,
    fleet_addr: SocketAddr,
    receiver: &Arc<Receiver>,
    receiver_addr: SocketAddr,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let hook = format!("http://{receiver_addr}/hook");
    let mut children = match system {
        System::Prometheus => start_prometheus(dir.path(), args, fleet_addr, &hook)?,
        System::Vigil => start_vigil(dir.path(), vigil, args, fleet_addr, &hook)?,
    };
    println!(
        "{}: started, waiting for every target to be polled",
        system.title()
    );
    fleet.reset().await?;
    let ready_by = Instant::now() + Duration::from_secs(60 + args.targets as u64 / 1000);
    while fleet.stats().await?.targets_seen < args.targets {
        children.check_running()?;
        if Instant::now() > ready_by {
            bail!(
                "{}: only {} of {} targets polled after a minute; see its log in {}",
                system.title(),
                fleet.stats().await?.targets_seen,
                args.targets,
                dir.path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    children.check_running()?;

    println!("{}: measuring", system.title());
    let seen_before = receiver.arrivals().len();
    fleet.reset().await?;
    let cpu_before = children.cpu_seconds()?;
    let fleet_cpu_before = fleet.cpu_seconds()?;
    let started = Instant::now();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let control = |action: &str, i: usize| {
        let url = format!("http://{fleet_addr}/control/{action}/{i}");
        let client = client.clone();
        async move {
            let body = client
                .post(url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            let flip: Flip = serde_json::from_slice(&body)?;
            anyhow::Ok(flip)
        }
    };
    let mut random = Random(0x5eed_0015);
    let mut flipped = Vec::new();
    let (mut detections, mut resolutions, mut missed) = (Vec::new(), Vec::new(), 0);
    let patience = Duration::from_secs(15);
    for _ in 0..args.flips {
        let i = random.below(args.targets as u64) as usize;
        let target = target_name(i);
        flipped.push(target.clone());
        // A random phase against the systems' schedules.
        tokio::time::sleep(Duration::from_millis(random.below(1000))).await;
        let flip = control("flip", i).await?;
        match receiver
            .wait_for(&target, "firing", flip.at_unix_ns, patience)
            .await
        {
            Some(arrival) => detections.push(seconds(arrival.at_unix_ns - flip.at_unix_ns)),
            None => missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(random.below(1000))).await;
        let restore = control("restore", i).await?;
        match receiver
            .wait_for(&target, "resolved", restore.at_unix_ns, patience)
            .await
        {
            Some(arrival) => resolutions.push(seconds(arrival.at_unix_ns - restore.at_unix_ns)),
            None => missed += 1,
        }
        children.check_running()?;
    }
    let window = Duration::from_secs_f64(args.window);
    if let Some(rest) = window.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let cpu_seconds = children.cpu_seconds()? - cpu_before;
    let fleet_cpu_seconds = fleet.cpu_seconds()? - fleet_cpu_before;
    let window = started.elapsed();
    let fleet_stats = fleet.stats().await?;
    let peak_rss_bytes = children.peak_rss_bytes()?;
    let mut other_notifications = std::collections::BTreeMap::new();
    for arrival in receiver.arrivals()[seen_before..]
        .iter()
        .filter(|arrival| !flipped.contains(&arrival.target))
    {
        *other_notifications
            .entry(format!("{} {}", arrival.alertname, arrival.status))
            .or_insert(0) += 1;
    }
    drop(children);
    Ok(Figures {
        window,
        cpu_seconds,
        fleet_cpu_seconds,
        peak_rss_bytes,
        fleet: fleet_stats,
        detections,
        resolutions,
        missed,
        other_notifications,
    })
}

fn start_prometheus(
    dir: &Path,
    args: &Args,
    fleet: SocketAddr,
    hook: &str,
) -> anyhow::Result<Children> {
    let targets = args.targets;
    let prometheus_port = free_port()?;
    let alertmanager_port = free_port()?;
    // JSON is YAML: written with serde_json, no YAML writer needed.
    let scrape: Vec<serde_json::Value> = (0..targets)
        .map(|i| {
            serde_json::json!({
                "targets": [fleet.to_string()],
                "labels": {"__metrics_path__": format!("/t/{i}/metrics"), "target": target_name(i)},
            })
        })
        .collect();
    let config = serde_json::json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [dir.join("rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [format!("127.0.0.1:{alertmanager_port}")]}]}]},
        "scrape_configs": [{"job_name": "fleet", "static_configs": scrape}],
    });
    std::fs::write(dir.join("prometheus.yml"), config.to_string())?;
    let rules = serde_json::json!({"groups": [{"name": "fleet", "interval": "1s", "rules": [
        {"alert": "CpuUsageHigh", "expr": "cpu_usage > 80", "for": "0s"},
        {"alert": "MemoryUsageHigh", "expr": "memory_usage > 80", "for": "0s"},
    ]}]});
    std::fs::write(dir.join("rules.yml"), rules.to_string())?;
    // Every alert its own group (`...`), sent at once, resolves included.
    let alertmanager = serde_json::json!({
        "route": {"receiver": "bench", "group_by": ["..."], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "bench", "webhook_configs": [{"url": hook, "send_resolved": true}]}],
    });
    std::fs::write(dir.join("alertmanager.yml"), alertmanager.to_string())?;

    let mut children = Children::default();
    children.spawn(
        pinned("prometheus-alertmanager", args.sut_cpus.as_deref()).args([
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{alertmanager_port}"),
            // No gossip port: one instance, loopback only.
            "--cluster.listen-address=".to_string(),
        ]),
        &dir.join("alertmanager.log"),
    )?;
    children.spawn(
        pinned("prometheus", args.sut_cpus.as_deref()).args([
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ]),
        &dir.join("prometheus.log"),
    )?;
    Ok(children)
}

fn start_vigil(
    dir: &Path,
    vigil: &Path,
    args: &Args,
    fleet: SocketAddr,
    hook: &str,
) -> anyhow::Result<Children> {
    let targets = args.targets;
    let mut config = format!("data_dir = {:?}\n", dir.join("vigil-data"));
    for i in 0..targets {
        writeln!(
            config,
            "[[targets]]\nname = \"{}\"\nkind = \"http-json\"\nurl = \"http://{fleet}/t/{i}/status\"\ninterval = \"1s\"\ntimeout = \"1s\"",
            target_name(i)
        )?;
    }
    writeln!(
        config,
        "[[rules]]\nbuiltin = \"threshold\"\n\n[[sinks]]\nname = \"bench\"\nkind = \"webhook\"\nurl = \"{hook}\""
    )?;
    let path = dir.join("vigil.toml");
    std::fs::write(&path, config)?;
    let mut children = Children::default();
    children.spawn(
        pinned(vigil, args.sut_cpus.as_deref())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn"),
        &dir.join("vigil.log"),
    )?;
    Ok(children)
}

/// `program`, under `taskset -c cpus` when `cpus` is given. `taskset`
/// execs the program, so the child's PID is the program's.
fn pinned(program: impl AsRef<std::ffi::OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        None => Command::new(program),
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
    }
}

/// Starts the `fleet` binary (next to this one) pinned to `cpus`, and
/// reads the address it prints.
fn start_fleet(cpus: &str, targets: usize) -> anyhow::Result<(SocketAddr, u32, Children)> {
    let program = std::env::current_exe()?.with_file_name("fleet");
    if !program.is_file() {
        bail!(
            "no fleet binary at `{}`\nhint: cargo build --release -p vigil-bench",
            program.display()
        );
    }
    let mut child = pinned(&program, Some(cpus))
        .args(["--targets", &targets.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", program.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let pid = child.id();
    let mut children = Children::default();
    children.adopt(child, PathBuf::from("fleet (stdout)"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line
        .trim()
        .strip_prefix("http://")
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("the fleet printed `{}`, not its address", line.trim()))?;
    Ok((addr, pid, children))
}

/// The fleet's control endpoints, over HTTP whether it runs in this
/// process or in its own.
struct FleetControl {
    addr: SocketAddr,
    /// The fleet's own process, if it has one.
    pid: Option<u32>,
    client: reqwest::Client,
}

impl FleetControl {
    fn new(addr: SocketAddr, pid: Option<u32>) -> anyhow::Result<Self> {
        Ok(FleetControl {
            addr,
            pid,
            client: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    /// CPU seconds the fleet's own process has used (0 when it runs in
    /// this one).
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pid.map_or(Ok(0.0), vigil_bench::proc::cpu_seconds)
    }

    /// The counters since the last reset, intervals measured against 1 s.
    async fn stats(&self) -> anyhow::Result<Stats> {
        let url = format!("http://{}/control/stats/1000", self.addr);
        let body = self
            .client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn reset(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/control/reset", self.addr);
        self.client.post(url).send().await?.error_for_status()?;
        Ok(())
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// xorshift64: the same flips and pauses in every run.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn table(args: &Args, results: &[(System, Figures)]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        rows.push((
            name.to_string(),
            results.iter().map(|(_, f)| cell(f)).collect(),
        ));
    };
    let spread = |values: &[f64]| match min_median_max(values) {
        Some((min, median, max)) => format!("{min:.2} / {median:.2} / {max:.2}"),
        None => "-".to_string(),
    };
    row("window (s)", &|f| format!("{:.1}", f.window.as_secs_f64()));
    row("CPU seconds", &|f| format!("{:.1}", f.cpu_seconds));
    row("CPU seconds per minute", &|f| {
        format!("{:.2}", f.cpu_seconds * 60.0 / f.window.as_secs_f64())
    });
    row("cores", &|f| {
        format!("{:.3}", f.cpu_seconds / f.window.as_secs_f64())
    });
    if args.fleet_cpus.is_some() {
        row("fleet's own cores (not counted above)", &|f| {
            format!("{:.3}", f.fleet_cpu_seconds / f.window.as_secs_f64())
        });
    }
    row("peak RSS (MiB)", &|f| {
        format!("{:.0}", f.peak_rss_bytes as f64 / (1024.0 * 1024.0))
    });
    row("polls per target per second", &|f| {
        format!(
            "{:.3}",
            f.fleet.requests as f64 / (f.fleet.targets as f64 * f.window.as_secs_f64())
        )
    });
    row("interval jitter p50 / p99 / max (ms)", &|f| {
        format!(
            "{} / {} / {}",
            f.fleet.deviation_p50_ms, f.fleet.deviation_p99_ms, f.fleet.deviation_max_ms
        )
    });
    row("detection min / median / max (s)", &|f| {
        spread(&f.detections)
    });
    row("resolve min / median / max (s)", &|f| {
        spread(&f.resolutions)
    });
    row("flips missed (15 s)", &|f| f.missed.to_string());
    row("other notifications", &|f| {
        let count: usize = f.other_notifications.values().sum();
        let kinds: Vec<String> = f
            .other_notifications
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        match count {
            0 => "0".into(),
            _ => format!("{count} ({})", kinds.join(", ")),
        }
    });

    let mut out = format!(
        "\n{} targets, 1 s interval, {} flips, window {} s\n",
        args.targets, args.flips, args.window
    );
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    write!(out, "{:width$}", "").unwrap();
    for (system, _) in results {
        write!(out, "  {:>22}", system.title()).unwrap();
    }
    out.push('\n');
    for (name, cells) in &rows {
        write!(out, "{name:width$}").unwrap();
        for cell in cells {
            write!(out, "  {cell:>22}").unwrap();
        }
        out.push('\n');
    }
    if let [(_, prometheus), (_, vigil)] = results {
        writeln!(
            out,
            "Vigil / Prometheus+AM: CPU {:.2}x, peak RSS {:.2}x",
            (vigil.cpu_seconds / vigil.window.as_secs_f64())
                / (prometheus.cpu_seconds / prometheus.window.as_secs_f64()),
            vigil.peak_rss_bytes as f64 / prometheus.peak_rss_bytes as f64
        )
        .unwrap();
    }
    out
}
