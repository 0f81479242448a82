//! `[cluster]`: join a Vigil cluster on NATS JetStream. Without the
//! section, Vigil is the single process it always was.
//!
//! ```toml
//! [cluster]
//! urls = ["nats://127.0.0.1:4222"]     # one or more servers of one NATS cluster
//! credentials_file = "vigil.creds"     # optional: NATS user credentials (JWT + nkey seed)
//! name = "prod"                        # names the cluster's buckets: vigil_prod_leases
//! node = "web-01"                      # optional: this node's id; default hostname-pid
//! partitions = 256                     # optional: fixed; every node must say the same
//! lease_ttl = "10s"                    # optional: how long a partition stays owned unrenewed
//! renew_every = "3s"                   # optional: default lease_ttl / 3
//! replicas = 3                         # optional: copies of the lease bucket (default 1)
//! ```
//!
//! Why these defaults: killing the leader of a three-replica KV stalled
//! writes for 5-8 s in the design notes' probe, so a lease must outlive such
//! a stall (10 s), and renewing three times per TTL lets two renewals in a
//! row fail without losing it. `partitions` and `lease_ttl` are written into
//! the lease bucket by the first node; a node that says otherwise is refused
//! at start (`cluster::nats`), because two nodes hashing targets into a
//! different number of partitions would poll some twice and some never.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cluster::{ClusterName, NodeId, Partitions};
use crate::duration::TextDuration;

/// Partitions when the config does not say.
pub const DEFAULT_PARTITIONS: u32 = 256;
/// Most partitions: each is a key renewed every `renew_every`.
pub const MAX_PARTITIONS: u32 = 4096;
/// Lease TTL when the config does not say (see the module doc).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The shortest lease: below it, a renewal's round trip and the safety
/// margin eat the lease.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// NATS server URLs (`nats://` or `tls://`).
    pub urls: Vec<String>,
    /// NATS credentials (a `.creds` file), when the servers require them.
    pub credentials_file: Option<PathBuf>,
    /// The cluster's name: its buckets are `vigil_<name>_...`.
    pub name: ClusterName,
    /// This node's id, unique in the cluster.
    pub node: NodeId,
    /// How many partitions targets hash into.
    pub partitions: Partitions,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// How often this node renews its leases and its membership.
    pub renew_every: Duration,
    /// How many servers keep a copy of the lease bucket (JetStream
    /// replicas), set when the first node creates it.
    pub replicas: usize,
}

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterConfig {
    /// `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]`.
    #[serde(default)]
    urls: Vec<String>,
    /// `"/etc/vigil/vigil.creds"`, relative to the config file.
    credentials_file: Option<PathBuf>,
    /// `"prod"`: letters, digits, `_` and `-`.
    name: Option<String>,
    /// `"web-01"`: letters, digits, `_` and `-`; default hostname-pid.
    node: Option<String>,
    /// `256`.
    partitions: Option<u32>,
    /// `"10s"`.
    lease_ttl: Option<TextDuration>,
    /// `"3s"`.
    renew_every: Option<TextDuration>,
    /// `3`: one per server of a three-server NATS cluster.
    replicas: Option<usize>,
}

/// Whether `text` can be a token of a NATS subject and a bucket name.
fn is_word(text: &str) -> bool {
    crate::names::Syntax::Word.accepts(text)
}

impl ClusterConfig {
    /// Checks the section; relative paths are taken from `base` (the config
    /// file's folder).
    pub(super) fn validate(self, base: &Path) -> Result<Option<ClusterSettings>, String> {
        if self.urls.is_empty() {
            return Err("no `urls`: which NATS servers to join\nhint: e.g. urls = [\"nats://127.0.0.1:4222\"]".into());
        }
        for url in &self.urls {
            let parsed = reqwest::Url::parse(url).map_err(|error| {
                format!("url `{url}` is not a URL: {error}\nhint: e.g. \"nats://127.0.0.1:4222\"")
            })?;
            if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none() {
                return Err(format!(
                    "url `{url}` is not a NATS server URL\nhint: write nats://HOST:PORT (or tls://HOST:PORT), e.g. \"nats://127.0.0.1:4222\""
                ));
            }
        }
        let name = self.name.ok_or(
            "no `name`: the cluster's name, which every node of it shares\nhint: e.g. name = \"prod\"",
        )?;
        if !is_word(&name) || name.len() > 64 {
            return Err(format!(
                "name `{name}` must be 1 to 64 letters, digits, `_` or `-`\nhint: it names the cluster's NATS buckets (vigil_{{name}}_leases)"
            ));
        }
        let node = match self.node {
            Some(node) if is_word(&node) && node.len() <= 64 => node,
            Some(node) => {
                return Err(format!(
                    "node `{node}` must be 1 to 64 letters, digits, `_` or `-`\nhint: it is a key in the lease bucket; leave it out for hostname-pid"
                ));
            }
            None => default_node(),
        };
        let partitions = self.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(format!(
                "partitions = {partitions} is out of range: 1 to {MAX_PARTITIONS}\nhint: the default, {DEFAULT_PARTITIONS}, spreads targets evenly over up to a few dozen nodes"
            ));
        }
        let lease_ttl = self.lease_ttl.map_or(DEFAULT_LEASE_TTL, TextDuration::get);
        if lease_ttl < MIN_LEASE_TTL {
            return Err(format!(
                "lease_ttl = \"{}\" is shorter than {}\nhint: a lease must outlive a NATS leader election (5-8 s measured); the default is {}",
                humantime::format_duration(lease_ttl),
                humantime::format_duration(MIN_LEASE_TTL),
                humantime::format_duration(DEFAULT_LEASE_TTL),
            ));
        }
        let renew_every = self.renew_every.map_or(lease_ttl / 3, TextDuration::get);
        if renew_every.is_zero() || renew_every > lease_ttl / 2 {
            return Err(format!(
                "renew_every = \"{}\" must be more than zero and at most half of lease_ttl (\"{}\")\nhint: leave it out for lease_ttl / 3, which survives two failed renewals in a row",
                humantime::format_duration(renew_every),
                humantime::format_duration(lease_ttl),
            ));
        }
        let replicas = self.replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err(format!(
                "replicas = {replicas} is out of range: JetStream keeps 1 to 5 copies\nhint: 3 on a three-server NATS cluster survives the loss of one"
            ));
        }
        let credentials_file = self.credentials_file.map(|file| base.join(file));
        if let Some(file) = &credentials_file
            && !file.is_file()
        {
            return Err(format!(
                "credentials_file `{}` does not exist\nhint: the `.creds` file `nsc generate creds` writes, relative to the config file",
                file.display()
            ));
        }
        Ok(Some(ClusterSettings {
            urls: self.urls,
            credentials_file,
            name: ClusterName::from(name.as_str()),
            node: NodeId::from(node.as_str()),
            partitions: Partitions::new(partitions),
            lease_ttl,
            renew_every,
            replicas,
        }))
    }
}

/// `hostname-pid`, with any character a key may not hold made `_`: unique
/// on one machine and across machines with distinct host names, and new at
/// every start (a restarted node is a new member; its old leases expire).
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "vigil".into());
    let host: String = host
        .trim()
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "vigil".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Option<ClusterSettings>, String> {
        toml::from_str::<ClusterConfig>(text)
            .map_err(|error| error.to_string())?
            .validate(Path::new("/etc/vigil"))
    }

    #[test]
    fn defaults_follow_the_lease_ttl() {
        let settings = validate("urls = [\"nats://127.0.0.1:4222\"]\nname = \"prod\"")
            .unwrap()
            .unwrap();
        assert_eq!(settings.partitions.count(), DEFAULT_PARTITIONS);
        assert_eq!(settings.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(settings.renew_every, DEFAULT_LEASE_TTL / 3);
        assert!(
            settings
                .node
                .as_str()
                .ends_with(&format!("-{}", std::process::id())),
            "{}",
            settings.node
        );
        assert!(is_word(settings.node.as_str()));
        let set = validate(
            "urls = [\"nats://a:4222\", \"tls://b:4222\"]\nname = \"p\"\nnode = \"n-1\"\npartitions = 30\nlease_ttl = \"6s\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(set.node.as_str(), "n-1");
        assert_eq!(set.partitions.count(), 30);
        assert_eq!(set.renew_every, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_setting_and_hint() {
        let error = |text: &str| validate(text).unwrap_err();
        let head = "urls = [\"nats://127.0.0.1:4222\"]\nname = \"prod\"\n";
        assert!(error("name = \"x\"").starts_with("no `urls`"));
        assert!(
            error("urls = [\"http://x:1\"]\nname = \"x\"")
                .starts_with("url `http://x:1` is not a NATS server URL\nhint: ")
        );
        assert!(error("urls = [\"nats://x:1\"]").starts_with("no `name`"));
        assert!(
            error("urls = [\"nats://x:1\"]\nname = \"a.b\"")
                .starts_with("name `a.b` must be 1 to 64 letters")
        );
        assert!(error(&format!("{head}node = \"a b\"")).starts_with("node `a b` must be 1 to 64"));
        assert!(
            error(&format!("{head}partitions = 0")).starts_with("partitions = 0 is out of range")
        );
        assert!(
            error(&format!("{head}lease_ttl = \"500ms\""))
                .starts_with("lease_ttl = \"500ms\" is shorter than 1s\nhint: ")
        );
        assert!(
            error(&format!("{head}lease_ttl = \"4s\"\nrenew_every = \"3s\""))
                .starts_with("renew_every = \"3s\" must be more than zero and at most half")
        );
        assert!(
            error(&format!("{head}credentials_file = \"nope.creds\""))
                .starts_with("credentials_file `/etc/vigil/nope.creds` does not exist")
        );
        assert!(error(&format!("{head}url = \"x\"")).contains("unknown field `url`"));
    }
}
