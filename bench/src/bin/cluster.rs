//! Throughput of a Vigil cluster with 1, 2 and 3 nodes on one fleet
//! (issue 16): the nodes share the fleet's targets through partition leases
//! in one nats-server, all on this machine. For each node count it measures,
//! over the same window: polls per target per second (1.000: every target
//! polled once a second, by exactly one node, since a target polled by two
//! would count twice), the interval jitter, each node's and the server's CPU
//! and peak RSS, and the partitions each node holds at the end (from
//! `vigil cluster status`).
//!
//! All nodes run on the same cores: this shows what the cluster costs and
//! how the work divides, not how it scales across machines.
//!
//! ```sh
//! bench/cluster.sh --targets 3000 --window 30
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use vigil_bench::children::Children;
use vigil_bench::fleet::{Fleet, target_name};

/// Every knob of the run.
#[derive(Parser)]
struct Args {
    /// How many targets the fleet serves.
    #[arg(long, default_value_t = 3000)]
    targets: usize,
    /// The node counts to measure, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// Seconds over which CPU and polls are measured.
    #[arg(long, default_value_t = 30.0)]
    window: f64,
    /// Seconds after every target was polled and every partition is owned
    /// before measuring.
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Partitions the targets hash into.
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// The `vigil` binary [default: next to this one].
    #[arg(long)]
    vigil: Option<PathBuf>,
    /// nats-server 2.11 or newer [default: `nats-server` on PATH].
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
}

/// What one node count measured.
struct Figures {
    nodes: usize,
    window: Duration,
    polls_per_target_second: f64,
    jitter_ms: (u64, u64, u64),
    node_cpu: Vec<f64>,
    nats_cpu: f64,
    node_rss: Vec<u64>,
    partitions_held: Vec<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vigil = match &args.vigil {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("vigil"),
    };
    if !vigil.is_file() {
        bail!(
            "no vigil binary at `{}`\nhint: cargo build --release -p vigil, or pass --vigil PATH",
            vigil.display()
        );
    }
    let version = Command::new(&args.nats_server)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run `{}`\nhint: python3 -m pip install --require-hashes -r tests/cluster/requirements.txt (nats-server 2.15), or pass --nats-server PATH",
                args.nats_server.display()
            )
        })?;
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let fleet = Fleet::new(args.targets);
    let fleet_addr = vigil_bench::serve(fleet.router(), 0).await?;
    println!("fleet of {} targets on http://{fleet_addr}", args.targets);
    let mut results = Vec::new();
    for &nodes in &args.nodes {
        let run = measure(&args, nodes, &vigil, &fleet, fleet_addr);
        let figures = tokio::select! {
            figures = run => figures?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; every process started was killed"),
        };
        results.push(figures);
    }
    print!("{}", table(&args, &results));
    Ok(())
}

async fn measure(
    args: &Args,
    nodes: usize,
    vigil: &Path,
    fleet: &std::sync::Arc<Fleet>,
    fleet_addr: SocketAddr,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut nats = Children::default();
    nats.spawn(
        Command::new(&args.nats_server).args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-sd",
            &dir.path().join("nats").display().to_string(),
        ]),
        &dir.path().join("nats.log"),
    )?;
    wait_for_port(port).await?;
    let mut configs = Vec::new();
    let mut children = Children::default();
    for node in 0..nodes {
        let path = write_config(dir.path(), node, args, port, fleet_addr)?;
        children.spawn(
            Command::new(vigil)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "warn"),
            &dir.path().join(format!("node-{node}.log")),
        )?;
        configs.push(path);
    }
    println!("{nodes} node(s): started, waiting for every target and partition");
    fleet.reset();
    let ready_by = Instant::now() + Duration::from_secs(90 + args.targets as u64 / 1000);
    loop {
        children.check_running()?;
        nats.check_running()?;
        let seen = fleet.stats(1000).targets_seen;
        let held = partitions_held(vigil, &configs[0], nodes)?;
        if seen == args.targets && held.iter().sum::<usize>() == args.partitions as usize {
            break;
        }
        if Instant::now() > ready_by {
            bail!(
                "{nodes} node(s): {seen} of {} targets polled and {held:?} partitions held after {:?}; logs in {}",
                args.targets,
                ready_by.elapsed(),
                dir.path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    println!("{nodes} node(s): measuring");
    fleet.reset();
    let (cpu_before, nats_before) = (children.cpu_seconds_each()?, nats.cpu_seconds()?);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.window)).await;
    let cpu_after = children.cpu_seconds_each()?;
    let nats_cpu = nats.cpu_seconds()? - nats_before;
    let window = started.elapsed();
    let stats = fleet.stats(1000);
    children.check_running()?;
    let partitions_held = partitions_held(vigil, &configs[0], nodes)?;
    let figures = Figures {
        nodes,
        window,
        polls_per_target_second: stats.requests as f64
            / (args.targets as f64 * window.as_secs_f64()),
        jitter_ms: (
            stats.deviation_p50_ms,
            stats.deviation_p99_ms,
            stats.deviation_max_ms,
        ),
        node_cpu: cpu_after
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| after - before)
            .collect(),
        nats_cpu,
        node_rss: children.peak_rss_bytes_each()?,
        partitions_held,
    };
    drop(children);
    drop(nats);
    Ok(figures)
}

/// Node `node`'s config: every target of the fleet, polled every second,
/// the bundled threshold rule, the cluster on `nats_port`.
fn write_config(
    dir: &Path,
    node: usize,
    args: &Args,
    nats_port: u16,
    fleet: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let mut config = format!(
        "data_dir = {:?}\n\n[api]\nlisten = \"off\"\n\n[cluster]\nurls = [\"nats://127.0.0.1:{nats_port}\"]\nname = \"bench\"\nnode = \"n{node}\"\npartitions = {}\nlease_ttl = \"10s\"\n\n",
        dir.join(format!("data-{node}")),
        args.partitions
    );
    for i in 0..args.targets {
        writeln!(
            config,
            "[[targets]]\nname = \"{}\"\nkind = \"http-json\"\nurl = \"http://{fleet}/t/{i}/status\"\ninterval = \"1s\"\ntimeout = \"1s\"",
            target_name(i)
        )?;
    }
    writeln!(config, "[[rules]]\nbuiltin = \"threshold\"")?;
    let path = dir.join(format!("node-{node}.toml"));
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Partitions held per node, from `vigil cluster status --format json`.
fn partitions_held(vigil: &Path, config: &Path, nodes: usize) -> anyhow::Result<Vec<usize>> {
    let output = Command::new(vigil)
        .args(["cluster", "status", "--format", "json", "--config"])
        .arg(config)
        .output()?;
    if !output.status.success() {
        // The bucket does not exist until the first node made it.
        return Ok(vec![0; nodes]);
    }
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let held: Vec<usize> = (0..nodes)
        .map(|node| {
            status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|entry| entry["node"] == format!("n{node}"))
                .and_then(|entry| entry["leases"].as_object())
                .map_or(0, |leases| leases.len())
        })
        .collect();
    Ok(held)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nats-server did not listen on port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn table(args: &Args, results: &[Figures]) -> String {
    let mut out = format!(
        "\n{} targets, 1 s interval, {} partitions, window {:.0} s\n\n| nodes | polls per target per second | jitter p50 / p99 / max (ms) | vigil CPU s/min (all nodes) | per node | nats-server CPU s/min | peak RSS per node (MiB) | partitions per node |\n|---:|---:|---|---:|---|---:|---|---|\n",
        args.targets, args.partitions, args.window
    );
    for figures in results {
        let minutes = figures.window.as_secs_f64() / 60.0;
        let per_node: Vec<String> = figures
            .node_cpu
            .iter()
            .map(|cpu| format!("{:.2}", cpu / minutes))
            .collect();
        let rss: Vec<String> = figures
            .node_rss
            .iter()
            .map(|bytes| format!("{:.0}", *bytes as f64 / (1024.0 * 1024.0)))
            .collect();
        let held: Vec<String> = figures
            .partitions_held
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "| {} | {:.3} | {} / {} / {} | {:.2} | {} | {:.2} | {} | {} |",
            figures.nodes,
            figures.polls_per_target_second,
            figures.jitter_ms.0,
            figures.jitter_ms.1,
            figures.jitter_ms.2,
            figures.node_cpu.iter().sum::<f64>() / minutes,
            per_node.join(" / "),
            figures.nats_cpu / minutes,
            rss.join(" / "),
            held.join(" / "),
        );
    }
    out
}
