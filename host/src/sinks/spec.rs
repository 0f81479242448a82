//! The sinks a config declares (`[[sinks]]`), as typed values, and how the
//! delivery stage is built from them. Parsing and checking the TOML is
//! `config`'s; building the running sinks is here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::alertmanager::{AlertmanagerSink, alerts_url};
use super::{
    Delivery, Endpoint, FileSink, Format, OutboxSettings, Poster, Route, SinkOptions, StdoutSink,
    WebhookSink,
};
use crate::state::StateDb;

/// One declared sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// Unique name: the webhook's `receiver`, the outbox's key, the
    /// `sink` label of `DeliveryFailing`.
    pub name: String,
    /// Which alerts it takes.
    pub route: Route,
    /// What it is.
    pub kind: SinkKind,
}

/// What a sink is, with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// The console: `--format` and `--evaluations` say how.
    Stdout,
    /// JSON lines appended to a file.
    File {
        /// The file (absolute once parsed).
        path: PathBuf,
    },
    /// Alertmanager's webhook payload, version 4.
    Webhook {
        /// Where it posts.
        endpoint: Endpoint,
        /// Its outbox.
        outbox: OutboxSettings,
        /// The payload's `externalURL` and `generatorURL`.
        external_url: Option<reqwest::Url>,
    },
    /// Alertmanager's API, each URL with its own outbox.
    Alertmanager {
        /// One per Alertmanager (its base URL, bearer token and timeout).
        endpoints: Vec<Endpoint>,
        /// Each URL's outbox.
        outbox: OutboxSettings,
        /// How often firing alerts are re-sent.
        resend_interval: Duration,
        /// Each alert's `generatorURL`.
        external_url: Option<reqwest::Url>,
    },
}

/// How the console sink writes, from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console {
    /// Text or JSON lines.
    pub format: Format,
    /// Whether evaluations are printed too.
    pub evaluations: bool,
}

impl SinkSpec {
    /// The console sink a host has when the config declares none.
    pub fn console() -> Self {
        SinkSpec {
            name: "stdout".into(),
            route: Route::default(),
            kind: SinkKind::Stdout,
        }
    }
}

/// Attaches every sink in `specs` to `delivery`, the network ones behind
/// an outbox in `state` (call inside a tokio runtime). An Alertmanager
/// sink with several URLs is one outbox and task per URL, named
/// `NAME@URL`.
pub async fn attach(
    delivery: &mut Delivery,
    specs: &[SinkSpec],
    state: &StateDb,
    console: Console,
) -> anyhow::Result<()> {
    for spec in specs {
        let name = &spec.name;
        match &spec.kind {
            SinkKind::Stdout => {
                let options = SinkOptions {
                    evaluations: console.evaluations,
                    route: spec.route.clone(),
                    ..SinkOptions::default()
                };
                delivery.add(name, StdoutSink::new(console.format), options);
            }
            SinkKind::File { path } => {
                let sink = FileSink::open(path).await.with_context(|| {
                    format!(
                        "sink `{name}`: cannot open `{}` for appending",
                        path.display()
                    )
                })?;
                let options = SinkOptions {
                    route: spec.route.clone(),
                    ..SinkOptions::default()
                };
                delivery.add(name, sink, options);
            }
            SinkKind::Webhook {
                endpoint,
                outbox,
                external_url,
            } => {
                let poster =
                    Poster::new(endpoint.clone()).with_context(|| format!("sink `{name}`"))?;
                let sink = WebhookSink::new(name, poster, external_url.as_ref());
                delivery
                    .add_durable(name, sink, spec.route.clone(), *outbox, state)
                    .with_context(|| format!("sink `{name}`: cannot open its outbox"))?;
            }
            SinkKind::Alertmanager {
                endpoints,
                outbox,
                resend_interval,
                external_url,
            } => {
                for endpoint in endpoints {
                    let each = format!("{name}@{}", endpoint.url);
                    let posted = Endpoint {
                        url: alerts_url(&endpoint.url),
                        ..endpoint.clone()
                    };
                    let poster = Poster::new(posted).with_context(|| format!("sink `{each}`"))?;
                    let sink =
                        AlertmanagerSink::new(poster, *resend_interval, external_url.as_ref());
                    delivery
                        .add_durable(&each, sink, spec.route.clone(), *outbox, state)
                        .with_context(|| format!("sink `{each}`: cannot open its outbox"))?;
                }
            }
        }
    }
    Ok(())
}

/// In a cluster (issue 16): the network sinks are not attached to the
/// local delivery stage but driven by the node's notifier, which reads the
/// cluster's notification stream; the console and files stay local.
impl SinkSpec {
    /// Whether this sink writes on this machine (console, file), as
    /// opposed to posting to a receiver.
    pub fn is_local(&self) -> bool {
        matches!(self.kind, SinkKind::Stdout | SinkKind::File { .. })
    }
}

/// A network sink as the cluster's notifier drives it.
pub struct NetworkSink {
    /// Its name (`NAME@URL` for each Alertmanager).
    pub name: String,
    /// Which alerts it takes.
    pub route: super::Route,
    /// The sink.
    pub sink: Box<dyn super::Sink>,
}

/// The network sinks of `specs`, each posting as `node`.
pub fn network(specs: &[SinkSpec], node: &str) -> anyhow::Result<Vec<NetworkSink>> {
    let mut sinks = Vec::new();
    for spec in specs {
        let name = &spec.name;
        match &spec.kind {
            SinkKind::Stdout | SinkKind::File { .. } => {}
            SinkKind::Webhook {
                endpoint,
                external_url,
                ..
            } => {
                let poster = Poster::new(endpoint.clone())
                    .with_context(|| format!("sink `{name}`"))?
                    .with_node(node);
                sinks.push(NetworkSink {
                    name: name.clone(),
                    route: spec.route.clone(),
                    sink: Box::new(WebhookSink::new(name, poster, external_url.as_ref())),
                });
            }
            SinkKind::Alertmanager {
                endpoints,
                resend_interval,
                external_url,
                ..
            } => {
                for endpoint in endpoints {
                    let each = format!("{name}@{}", endpoint.url);
                    let posted = Endpoint {
                        url: alerts_url(&endpoint.url),
                        ..endpoint.clone()
                    };
                    let poster = Poster::new(posted)
                        .with_context(|| format!("sink `{each}`"))?
                        .with_node(node);
                    sinks.push(NetworkSink {
                        name: each,
                        route: spec.route.clone(),
                        sink: Box::new(AlertmanagerSink::new(
                            poster,
                            *resend_interval,
                            external_url.as_ref(),
                        )),
                    });
                }
            }
        }
    }
    Ok(sinks)
}
