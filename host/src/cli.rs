//! The command line: flags parsed once into typed values, then handed to
//! the library.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::App;
use crate::config::Settings;
use crate::scaffold::{self, Lang, RuleName};
use crate::sinks::{Console, Delivery, Format, SinkOptions, StdoutSink};
use crate::state::DataDir;

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
    /// List the remediation audit log: every action request, what the gate
    /// decided and how it ended, newest first. A refusal repeated within a
    /// minute is one record with a count (`repeats` in JSON); past
    /// `[audit] refusal_records_per_minute`, a rule's refusals are counted in
    /// one summary record a minute (`counted`).
    ///
    /// While vigil runs on the data directory, this asks its API (the
    /// database allows one process at a time); otherwise it reads the
    /// database directly.
    Audit(AuditArgs),
    /// Show what a running vigil is doing: every target's last poll, every
    /// rule's version and health, the alerts firing and pending. Asks the
    /// API of the vigil running on the data directory; when none runs, says
    /// so (exit status 1) and lists the alerts saved when it stopped.
    Status(StatusArgs),
    /// Check that a file is a rule this host can run: a component for the
    /// `rule` world of the contract version it serves, whose `configure` accepts
    /// the config. Prints what it imports, its size, compile time and what
    /// it says about itself. Exit status 1 when it is not.
    Check(CheckArgs),
    /// Replay samples through a rule and check the alerts and actions at
    /// given steps (the format is in the README). Exit status 1 and a diff
    /// when an expectation fails.
    Test(TestArgs),
    /// Create a rule project to start from: a threshold rule in the given
    /// language, the contract it is built against, a `vigil test` case file
    /// it passes, and its build setup.
    New(NewArgs),
    /// Make a key pair for signing rules, in minisign's format (the
    /// `minisign` tool reads and writes the same keys). The public key goes
    /// into the host's `[trust] keys`; the secret key stays with the author.
    Keygen(KeygenArgs),
    /// Sign rule files: writes `FILE.minisig` beside each, the detached
    /// minisign signature a host with `require_signature` checks
    /// (`minisign -V` verifies it too).
    Sign(SignArgs),
    /// Look at the cluster a config's `[cluster]` section joins.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Roll rules out to every node of a cluster: push a component with its
    /// config, list what was pushed, disable or enable a pushed rule.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Store a component in the cluster (named by its sha256) and write the
    /// rule's manifest: every node fetches it, checks its digest (and its
    /// signature when the rule's owner requires one), compiles it and swaps
    /// it in; a node that refuses it keeps the version it runs. Prints the
    /// manifest's revision, the version every node's evaluations record.
    Push(RulesPushArgs),
    /// List the pushed rules with their kept manifest revisions.
    List(RulesListArgs),
    /// Stop a pushed rule on every node (its manifest stays, disabled).
    Disable(RulesNameArgs),
    /// Run a disabled pushed rule again on every node.
    Enable(RulesNameArgs),
}

#[derive(Debug, clap::Args)]
struct RulesPushArgs {
    /// The rule's component (`.wasm`).
    file: PathBuf,
    /// The rule's name (letters, digits, `-`, `_`).
    #[arg(long)]
    name: String,
    /// What the rule's `configure` receives, as a JSON object.
    #[arg(long, default_value = "{}")]
    rule_config: String,
    /// The component's minisign signature (`FILE.minisig`, as `vigil sign`
    /// writes it): required when the rule's owner requires signatures.
    #[arg(long)]
    signature: Option<PathBuf>,
    /// Push the rule as this tenant's (named `TENANT/NAME`, held to the
    /// tenant's grant and trust).
    #[arg(long)]
    tenant: Option<String>,
    /// The config with the `[cluster]` section.
    #[arg(long, short, visible_alias = "config-file")]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RulesListArgs {
    /// The config with the `[cluster]` section.
    #[arg(long, short, visible_alias = "config-file")]
    config: PathBuf,
    /// Text for people or JSON.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct RulesNameArgs {
    /// The rule's name (`TENANT/NAME` for a tenant's).
    name: String,
    /// The config with the `[cluster]` section.
    #[arg(long, short, visible_alias = "config-file")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Show the nodes, the partitions each holds and how long ago each
    /// lease was renewed, read straight from the cluster's lease bucket in
    /// NATS (no node needs to run on this machine).
    Status(ClusterStatusArgs),
    /// Remediation claims: every action run in the cluster is claimed
    /// before it starts. A claim left `running` by a node that died
    /// mid-run blocks that action on that target ("outcome unknown")
    /// until it is released here.
    #[command(subcommand)]
    Claims(ClaimsCommand),
}

#[derive(Debug, Subcommand)]
enum ClaimsCommand {
    /// List the claims: action, target, node, when, and how the run ended
    /// (or `running`).
    List(ClusterStatusArgs),
    /// Release the claim of ACTION on TARGET after checking what the
    /// interrupted run did: the next request runs it again.
    Release(ClaimReleaseArgs),
}

#[derive(Debug, clap::Args)]
struct ClaimReleaseArgs {
    /// The action, as declared.
    action: String,
    /// The target's name.
    target: String,
    /// The config with the `[cluster]` section.
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ClusterStatusArgs {
    /// The config with the `[cluster]` section (its URLs, credentials, name
    /// and partitions are used).
    #[arg(long, short)]
    config: PathBuf,
    /// Text for people or JSON.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Where to write the public key.
    #[arg(long, short = 'p')]
    public_key: PathBuf,
    /// Where to write the secret key (readable by its owner only).
    #[arg(long, short = 's')]
    secret_key: PathBuf,
    /// Do not protect the secret key with a password (as `minisign -W`):
    /// for a build machine that signs unattended. Without it, the password
    /// is asked for at the terminal.
    #[arg(long, short = 'W')]
    without_password: bool,
    /// Replace key files that exist.
    #[arg(long, short = 'f')]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct SignArgs {
    /// The secret key (`vigil keygen` or `minisign -G` made it); its
    /// password is asked for at the terminal if it has one.
    #[arg(long, short = 's')]
    secret_key: PathBuf,
    /// Text signed with the file, which the host logs when it loads the
    /// rule [default: the time and the file name, as minisign writes it].
    #[arg(long, short = 't')]
    trusted_comment: Option<String>,
    /// The rule files to sign.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// The language to write the rule in.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The rule's name, also its folder's: lowercase letters, digits and
    /// `-`, starting with a letter, e.g. `disk-full`.
    name: RuleName,
    /// The folder to create the project in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// Case files (TOML).
    #[arg(required = true)]
    cases: Vec<PathBuf>,
    /// Where the compile cache is, shared with `vigil run` [default:
    /// $XDG_STATE_HOME/vigil or ~/.local/state/vigil]: a rule compiled once
    /// (seconds for Python) loads in milliseconds on the next run.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The rule's `.wasm` file.
    rule: PathBuf,
    /// The config to `configure` it with, as JSON.
    #[arg(long, default_value = "{}")]
    config: String,
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Only this action.
    #[arg(long)]
    action: Option<String>,
    /// Only this target.
    #[arg(long)]
    target: Option<String>,
    /// Only this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Only this status: started, interrupted, refused, dry-run, succeeded,
    /// failed, timed-out.
    #[arg(long)]
    status: Option<crate::actions::AuditStatus>,
    /// Only requests made in this last stretch of time, e.g. `1h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<std::time::Duration>,
    /// At most this many records.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Text for people or JSON lines.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// Which host a command is about: the one whose data directory this is.
#[derive(Debug, clap::Args)]
struct HostArgs {
    /// The data directory [default: the config's `data_dir`, else as for
    /// `run`].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The config the host runs with, to find its `data_dir`.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl HostArgs {
    fn data_dir(self) -> anyhow::Result<DataDir> {
        if let Some(dir) = self.data_dir {
            return Ok(DataDir::new(dir));
        }
        let from_config = match &self.config {
            Some(path) => Settings::load(path)?.data_dir,
            None => None,
        };
        Ok(from_config.map_or_else(DataDir::default_location, DataDir::new))
    }
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Text for people or JSON.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// How evaluations and alerts are printed on stdout.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Whether a line per evaluation (rule and sample) is printed besides
    /// the alert events [default: show without --config, hide with one: a
    /// host watching many targets would print thousands a second].
    #[arg(long, value_enum)]
    evaluations: Option<Evaluations>,
    /// Where durable state lives [default: config's data_dir, else
    /// $XDG_STATE_HOME/vigil or ~/.local/state/vigil].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Whether evaluation lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Evaluations {
    /// A line per evaluation.
    Show,
    /// Alert events only.
    Hide,
}

/// Runs the command line and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    crate::allocator::one_arena_per_core();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(one_line_fields())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Formats a log event's fields as the default formatter does, with every
/// control character escaped: a log line is one event, whatever text a
/// rule (or a target, or a file name) put in its fields.
fn one_line_fields() -> impl for<'writer> tracing_subscriber::fmt::FormatFields<'writer> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = crate::text::one_line(&text);
        match field.name() {
            "message" => write!(writer, "{text}"),
            name => write!(writer, "{name}={text}"),
        }
    })
    .delimited(" ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_monitor(args),
        Command::Audit(args) => audit(args),
        Command::Status(args) => {
            crate::api::status::run(&args.host.data_dir()?, args.format == Format::Json)
        }
        Command::Check(args) => check(args),
        Command::Cluster(ClusterCommand::Status(args)) => cluster_status(args),
        Command::Cluster(ClusterCommand::Claims(ClaimsCommand::List(args))) => cluster_claims(args),
        Command::Cluster(ClusterCommand::Claims(ClaimsCommand::Release(args))) => {
            release_claim(args)
        }
        Command::Rules(command) => rules(command),
        Command::New(args) => new(args),
        Command::Keygen(args) => crate::signing::keygen(
            &args.public_key,
            &args.secret_key,
            !args.without_password,
            args.force,
        ),
        Command::Sign(args) => {
            let key = crate::signing::secret_key(&args.secret_key)?;
            for file in &args.files {
                let written = crate::signing::sign(&key, file, args.trusted_comment.as_deref())?;
                println!("signed `{}`: `{}`", file.display(), written.display());
            }
            Ok(())
        }
        Command::Test(args) => {
            let data_dir = args
                .data_dir
                .map_or_else(DataDir::default_location, DataDir::new);
            let runtime = crate::runtime::Runtime::new()?
                .with_compile_cache(crate::runtime::CompileCache::new(data_dir.cache_dir()));
            let mut passed = true;
            for path in &args.cases {
                passed &= crate::casefile::run(path, &runtime, &mut std::io::stdout().lock())?;
            }
            if !passed {
                anyhow::bail!("rule tests failed");
            }
            Ok(())
        }
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
        .map_or_else(DataDir::default_location, DataDir::new);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.poll_threads())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let evaluations = match args.evaluations {
        Some(choice) => choice == Evaluations::Show,
        None => args.config.is_none(),
    };
    runtime.block_on(async {
        let console = Console {
            format: args.format,
            evaluations,
        };
        let mut delivery = Delivery::new().with_console(console);
        // With `[[sinks]]`, the config says where alerts go (its `stdout`
        // sink, if any, writes as the flags say); without, the console.
        if settings.sinks.is_empty() {
            let options = SinkOptions {
                evaluations,
                // The operator's console shows every tenant's alerts.
                tenant_grants: false,
                ..SinkOptions::default()
            };
            delivery.add("stdout", StdoutSink::new(args.format), options);
        }
        let mut app = App::build(settings, &data_dir, delivery).await?;
        if let Some(path) = args.config {
            app = app.watch_config(path);
        }
        app.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// A runtime for one command's NATS calls.
fn command_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn cluster_claims(args: ClusterStatusArgs) -> anyhow::Result<()> {
    let (cluster, runtime) = (cluster_of(&args.config)?, command_runtime()?);
    let claims = runtime.block_on(async {
        let nats = crate::cluster::nats::Nats::connect(&cluster).await?;
        nats.claims(&cluster).await?.list().await
    })?;
    let mut out = std::io::stdout().lock();
    for claim in &claims {
        match args.format {
            Format::Json => serde_json::to_writer(&mut out, claim)?,
            Format::Text => {
                let state = match &claim.finished {
                    Some(finished) => finished.status.as_str(),
                    None => "running (outcome unknown if its node is gone)",
                };
                write!(
                    out,
                    "{}\t{}\tnode {}\tclaimed {}\t{state}",
                    claim.action,
                    claim.target,
                    claim.node,
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + Duration::from_millis(claim.claimed_ms)
                    )
                )?;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

fn release_claim(args: ClaimReleaseArgs) -> anyhow::Result<()> {
    let (cluster, runtime) = (cluster_of(&args.config)?, command_runtime()?);
    let released = runtime.block_on(async {
        let nats = crate::cluster::nats::Nats::connect(&cluster).await?;
        nats.claims(&cluster)
            .await?
            .release(&args.action, &args.target)
            .await
    })?;
    match released {
        Some(node) => println!(
            "Released the claim of `{}` on `{}` (node {node}).",
            args.action, args.target
        ),
        None => anyhow::bail!(
            "no claim of `{}` on `{}` in cluster `{}`\nhint: `vigil cluster claims list --config {}` shows them",
            args.action,
            args.target,
            cluster.name,
            args.config.display()
        ),
    }
    Ok(())
}

fn cluster_status(args: ClusterStatusArgs) -> anyhow::Result<()> {
    let (cluster, runtime) = (cluster_of(&args.config)?, command_runtime()?);
    let status = runtime.block_on(crate::cluster::status::read(&cluster))?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut out, &status)?;
            std::io::Write::write_all(&mut out, b"\n")?;
        }
        Format::Text => crate::cluster::status::print(&status, &mut out)?,
    }
    Ok(())
}

/// The `[cluster]` section of `config`, or why there is none.
fn cluster_of(config: &Path) -> anyhow::Result<crate::config::ClusterSettings> {
    match Settings::load(config)?.cluster {
        Some(cluster) => Ok(cluster),
        None => anyhow::bail!(
            "`{}` has no [cluster] section\nhint: give the config the cluster's nodes run with",
            config.display()
        ),
    }
}

fn rules(command: RulesCommand) -> anyhow::Result<()> {
    use crate::cluster::rules;
    let runtime = command_runtime()?;
    match command {
        RulesCommand::Push(args) => {
            let cluster = cluster_of(&args.config)?;
            let rule = rules::rule_name(&args.name, args.tenant.as_deref())?;
            let config = serde_json::from_str(&args.rule_config).map_err(|error| {
                anyhow::anyhow!("--rule-config is not JSON: {error}\nhint: e.g. --rule-config '{{\"above\": 80}}'")
            })?;
            let push = rules::Push {
                file: args.file,
                rule: rule.clone(),
                config,
                signature: args.signature,
            };
            let (revision, manifest) = runtime.block_on(rules::push(&cluster, push))?;
            println!(
                "pushed rule `{rule}` revision {revision} (sha256 {}, {} bytes) to cluster `{}`",
                manifest.digest, manifest.size, cluster.name
            );
        }
        RulesCommand::List(args) => {
            let cluster = cluster_of(&args.config)?;
            let list = runtime.block_on(rules::list(&cluster))?;
            let mut out = std::io::stdout().lock();
            match args.format {
                Format::Json => {
                    let json: std::collections::BTreeMap<_, Vec<_>> = list
                        .iter()
                        .map(|(rule, history)| {
                            let revisions = history
                                .iter()
                                .map(|(revision, manifest)| match manifest {
                                    Ok(manifest) => serde_json::json!({"revision": revision, "manifest": manifest}),
                                    Err(error) => serde_json::json!({"revision": revision, "error": error}),
                                })
                                .collect();
                            (rule.to_string(), revisions)
                        })
                        .collect();
                    serde_json::to_writer(&mut out, &json)?;
                    std::io::Write::write_all(&mut out, b"\n")?;
                }
                Format::Text => rules::print_list(&list, &mut out)?,
            }
        }
        RulesCommand::Disable(args) => set_enabled(&runtime, args, false)?,
        RulesCommand::Enable(args) => set_enabled(&runtime, args, true)?,
    }
    Ok(())
}

fn set_enabled(
    runtime: &tokio::runtime::Runtime,
    args: RulesNameArgs,
    enabled: bool,
) -> anyhow::Result<()> {
    let cluster = cluster_of(&args.config)?;
    let rule = crate::names::RuleName::from(args.name.as_str());
    let revision =
        runtime.block_on(crate::cluster::rules::set_enabled(&cluster, &rule, enabled))?;
    let done = if enabled { "enabled" } else { "disabled" };
    println!(
        "rule `{rule}` {done} on cluster `{}` (revision {revision})",
        cluster.name
    );
    Ok(())
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let project = scaffold::create(args.lang, &args.name, &args.dir)?;
    println!(
        "Created a {} rule in `{}`:",
        args.lang.label(),
        project.dir.display()
    );
    for file in &project.files {
        println!("  {file}");
    }
    println!("Next, build it and run its test cases:");
    println!("  cd {}", project.dir.display());
    for command in &project.build {
        println!("  {command}");
    }
    println!("  vigil test cases.toml");
    Ok(())
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    use crate::runtime::{Limits, RuleInstance, Runtime, WIT_PACKAGE};
    let name = args.rule.display().to_string();
    let bytes = std::fs::read(&args.rule).with_context(|| format!("cannot read `{name}`"))?;
    serde_json::from_str::<serde_json::Value>(&args.config)
        .with_context(|| format!("--config is not JSON: `{}`", args.config))?;
    let runtime = Runtime::new()?;
    let prepared = runtime
        .prepare(&bytes)
        .map_err(|error| anyhow::anyhow!("`{name}` is not a rule this host can run: {error}"))?;
    let (size, compile_time, imports) = (
        prepared.size,
        prepared.compile_time,
        prepared.imports.clone(),
    );
    let state = crate::state::StateDb::in_memory()?;
    let (_instance, info) = RuleInstance::start(
        &runtime,
        "check",
        prepared,
        args.config.clone(),
        Limits::default(),
        state.rule("check")?,
    )
    .map_err(|error| anyhow::anyhow!("`{name}` is not a rule this host can run: {error}"))?;
    let subscriptions = if info.metrics.is_empty() {
        "every metric".to_string()
    } else {
        info.metrics.join(", ")
    };
    println!("{name}: ok, a rule for {WIT_PACKAGE}");
    println!(
        "  rule        {} {}: {}",
        info.name, info.version, info.description
    );
    println!("  subscribes  {subscriptions}");
    println!("  size        {size} bytes");
    println!("  compiled    in {compile_time:.1?}");
    println!("  imports     {}", imports.join("\n              "));
    Ok(())
}

fn audit(args: AuditArgs) -> anyhow::Result<()> {
    use crate::actions::{AuditLog, AuditQuery};
    let data_dir = args.host.data_dir()?;
    let records = match crate::api::client::Client::find(&data_dir) {
        Some(client) => {
            if args.limit > crate::api::v1::MAX_AUDIT_LIMIT {
                anyhow::bail!(
                    "--limit {} is more than a running vigil returns at once ({})\nhint: narrow the search with --since, --rule, --target or --action",
                    args.limit,
                    crate::api::v1::MAX_AUDIT_LIMIT
                );
            }
            let query = crate::api::client::query([
                ("action", args.action),
                ("target", args.target),
                ("rule", args.rule),
                ("status", args.status.map(|status| status.to_string())),
                ("since", args.since.map(since_param)),
                ("limit", Some(args.limit.to_string())),
            ]);
            #[derive(serde::Deserialize)]
            struct Records {
                records: Vec<crate::actions::AuditRecord>,
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime
                .block_on(client.get::<Records>(&format!("/api/v1/audit{query}")))?
                .records
        }
        None => {
            let state = data_dir.open_existing_state()?;
            let log = AuditLog::open(&state)?;
            let since_ms = args.since.map(|since| {
                crate::clock::now_ms()
                    .saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            });
            log.list(&AuditQuery {
                action: args.action,
                target: args.target,
                rule: args.rule,
                since_ms,
                status: args.status,
                limit: Some(args.limit),
            })?
        }
    };
    let mut out = std::io::stdout().lock();
    for record in &records {
        let line = match args.format {
            Format::Json => serde_json::to_string(record)?,
            Format::Text => {
                let time = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.requested_ms),
                );
                let params: Vec<String> = record
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect();
                let detail = record
                    .outcome
                    .as_ref()
                    .map_or("", |outcome| outcome.detail.as_str());
                format!(
                    "{time} #{} {:<11} {}({}) on {} by {}: {detail}{}",
                    record.id,
                    record.status.to_string(),
                    record.action,
                    params.join(", "),
                    record.target,
                    record.rule,
                    counts(record)
                )
            }
        };
        std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
    }
    Ok(())
}

/// `--since` as the API's `since` takes it: whole seconds and
/// milliseconds (`5400s`, `1s500ms`, `250ms`), each at most nine digits.
fn since_param(since: std::time::Duration) -> String {
    let (seconds, millis) = (since.as_secs().min(999_999_999), since.subsec_millis());
    match (seconds, millis) {
        (0, millis) => format!("{millis}ms"),
        (seconds, 0) => format!("{seconds}s"),
        (seconds, millis) => format!("{seconds}s{millis}ms"),
    }
}

/// How many refusals an aggregated record stands for, as ` [×N, last at
/// TIME]`; nothing for a record that stands for one.
fn counts(record: &crate::actions::AuditRecord) -> String {
    let times = if record.counted > 0 {
        record.counted
    } else {
        1 + record.repeats
    };
    if times == 1 {
        return String::new();
    }
    let last = record.last_requested_ms.map_or(String::new(), |ms| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        format!(", last at {}", humantime::format_rfc3339_seconds(at))
    });
    let what = if record.counted > 0 {
        "refusals of this rule counted here"
    } else {
        "the same refusal"
    };
    format!(" [×{times}: {what}{last}]")
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
