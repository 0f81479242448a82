//! The command line: flags parsed once into typed values, then handed to
//! the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::{self, App};
use crate::config::Settings;
use crate::sinks::{Format, StdoutSink};

/// Vigil: a monitoring host that runs your rules as sandboxed WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll the targets and evaluate the rules until interrupted.
    ///
    /// Without --config: watch this machine every 5 s with the bundled
    /// `threshold` rule (cpu_usage and memory_usage above 80, disks above 90).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// How evaluations and alerts are printed on stdout.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Where durable state lives [default: config's data_dir, else
    /// $XDG_STATE_HOME/vigil or ~/.local/state/vigil].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Runs the command line and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_monitor(args),
    }
}

fn run_monitor(args: RunArgs) -> anyhow::Result<()> {
    let settings = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::local_default(),
    };
    let data_dir = args
        .data_dir
        .or_else(|| settings.data_dir.clone())
        .unwrap_or_else(app::default_data_dir);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut app = App::build(settings, &data_dir, StdoutSink::new(args.format)).await?;
        if let Some(path) = args.config {
            app = app.watch_config(path);
        }
        app.run(shutdown_signal()).await
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
