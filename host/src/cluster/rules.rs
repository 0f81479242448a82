//! Rules pushed to the whole cluster (`vigil rules push`): what a manifest
//! says, how a node turns one into a [`RuleSpec`], and the operator's
//! commands (`push`, `list`, `disable`, `enable`).
//!
//! A manifest names its component by sha256; the component sits in the
//! object store under that name. A node trusts neither: it hashes the bytes
//! it fetched and refuses them unless they are the manifest's digest, then
//! checks them against the same trust as a rule file of the same owner (the
//! operator's `[trust]`, or the tenant's file and grant), then compiles
//! them. The revision of the manifest key is the rule's version on every
//! node, so an evaluation, the status board and `vigil_rule_version` say
//! which push is running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::NodeId;
use super::nats::Nats;
use super::rule_store::{History, RuleStore};
use crate::config::{ClusterSettings, FailurePolicy, RuleSource, RuleSpec, Settings};
use crate::hash::sha256_hex;
use crate::names::{RuleName, TENANT_SEPARATOR, TenantName};
use crate::plugins::SignatureFile;
use crate::routing::TargetSelector;
use crate::runtime::Limits;

/// One revision of a pushed rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The component's sha256, hex: its object's name.
    pub digest: String,
    /// The component's size in bytes.
    pub size: u64,
    /// What the rule's `configure` receives.
    pub config: serde_json::Value,
    /// `false`: every node stops the rule (its component stays stored).
    pub enabled: bool,
    /// The component's minisign signature (a `.minisig` file's text),
    /// checked when the rule's owner requires signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Who pushed it (`user@host`).
    pub pushed_by: String,
    /// When, ms since the epoch.
    pub pushed_at_ms: u64,
}

/// What one node runs of the pushed rules, published under `node.<id>`
/// after each change, for `vigil cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node.
    pub node: NodeId,
    /// When it published this, ms since the epoch (its clock).
    pub at_ms: u64,
    /// Each pushed rule it knows of, by name.
    pub rules: BTreeMap<RuleName, RunningRule>,
}

/// One pushed rule on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningRule {
    /// The manifest revision serving (0: none, the rule is disabled,
    /// deleted, or no revision loaded yet).
    pub revision: u64,
    /// Its component's sha256 (empty when none serves).
    pub digest: String,
    /// The last revision refused, with why; cleared by one that loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<(u64, String)>,
}

/// Refuses bytes that are not the manifest's component.
pub fn check_digest(manifest: &Manifest, bytes: &[u8]) -> Result<(), String> {
    let actual = sha256_hex(bytes);
    if actual != manifest.digest {
        return Err(format!(
            "digest mismatch: the manifest names sha256 {}, the object fetched is {actual}\nhint: the object store holds other bytes under that name; push the component again with `vigil rules push`",
            manifest.digest
        ));
    }
    Ok(())
}

/// The signature a manifest carries, as the trust check reads a
/// `.minisig` file; the path only names it in errors.
pub fn signature_of(rule: &RuleName, revision: u64, manifest: &Manifest) -> SignatureFile {
    SignatureFile {
        path: PathBuf::from(format!(
            "the signature in rule `{rule}`'s manifest (revision {revision})"
        )),
        bytes: manifest.signature.clone().map(String::into_bytes),
    }
}

/// The spec a node runs `rule` with: the trust, targets and limits of its
/// owner, as for a rule file it declared. Refuses a name the config
/// declares (the config wins, so that a push cannot replace a rule the
/// operator pinned) and a tenant this host does not know.
pub fn spec_for(
    rule: &RuleName,
    revision: u64,
    manifest: &Manifest,
    bucket: &str,
    settings: &Settings,
) -> Result<RuleSpec, String> {
    if let Some(declared) = settings.rules.iter().find(|spec| &spec.name == rule) {
        return Err(format!(
            "a rule of this name is declared at {}; a pushed rule cannot replace it\nhint: push it under another name, or remove it from the config",
            declared.origin
        ));
    }
    if !manifest.config.is_object() {
        return Err("the manifest's config is not a JSON object".into());
    }
    let (tenant, trust, targets, limits) = match rule.tenant() {
        None => (
            None,
            settings.trust.clone(),
            TargetSelector::default(),
            Limits::default(),
        ),
        Some(tenant) => {
            let Some(spec) = settings.tenants.iter().find(|spec| spec.name == tenant) else {
                return Err(format!(
                    "no tenant `{tenant}` on this host\nhint: add it as a [[tenants]] table, or push the rule without --tenant"
                ));
            };
            (
                Some(spec.name.clone()),
                spec.trust.clone(),
                spec.grant.targets.clone(),
                spec.grant.limits,
            )
        }
    };
    let trust = trust.for_rule(None, None)?;
    Ok(RuleSpec {
        name: rule.clone(),
        source: RuleSource::Pushed {
            bucket: bucket.to_string(),
            digest: manifest.digest.clone(),
        },
        config_json: manifest.config.to_string(),
        limits,
        failure_policy: FailurePolicy::default(),
        targets,
        origin: format!("manifest `rule.{rule}` revision {revision}"),
        trust,
        tenant,
    })
}

/// The rule name a push writes: `NAME`, or `TENANT/NAME`. Refuses what a
/// KV key cannot hold.
pub fn rule_name(name: &str, tenant: Option<&str>) -> anyhow::Result<RuleName> {
    let valid = |text: &str| {
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    };
    if !valid(name) {
        bail!(
            "rule name `{name}` may hold only letters, digits, `-` and `_`\nhint: e.g. --name cpu-hot"
        );
    }
    match tenant {
        None => Ok(RuleName::from(name)),
        Some(tenant) if valid(tenant) => Ok(RuleName::of_tenant(&TenantName::from(tenant), name)),
        Some(tenant) => bail!(
            "tenant name `{tenant}` may hold only letters, digits, `-` and `_` (and `{TENANT_SEPARATOR}` never)"
        ),
    }
}

/// What `vigil rules push` sends.
#[derive(Debug)]
pub struct Push {
    /// The component.
    pub file: PathBuf,
    /// The rule's name (with its tenant).
    pub rule: RuleName,
    /// What its `configure` receives.
    pub config: serde_json::Value,
    /// Its minisign signature file, if any.
    pub signature: Option<PathBuf>,
}

fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

fn read(file: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read the {what} `{}`", file.display()))
}

/// Stores the component, then writes the manifest: the manifest's new
/// revision. The component is stored first, so a node never sees a
/// manifest whose object is not there yet.
pub async fn push(settings: &ClusterSettings, push: Push) -> anyhow::Result<(u64, Manifest)> {
    if !push.config.is_object() {
        bail!("--rule-config must be a JSON object, e.g. '{{\"above\": 80}}'");
    }
    let bytes = read(&push.file, "component")?;
    let signature = match &push.signature {
        Some(file) => Some(String::from_utf8(read(file, "signature")?).map_err(|_| {
            anyhow::anyhow!(
                "`{}` is not a minisign signature (not text)",
                file.display()
            )
        })?),
        None => None,
    };
    let digest = sha256_hex(&bytes);
    let store = open(settings).await?;
    store.put_component(&digest, &bytes).await?;
    let manifest = Manifest {
        digest,
        size: bytes.len() as u64,
        config: push.config,
        enabled: true,
        signature,
        pushed_by: who(),
        pushed_at_ms: crate::clock::now_ms(),
    };
    let revision = store.put_manifest(&push.rule, &manifest).await?;
    Ok((revision, manifest))
}

/// Writes a new revision of `rule`'s manifest with `enabled` set: every
/// node stops (or starts again) the rule.
pub async fn set_enabled(
    settings: &ClusterSettings,
    rule: &RuleName,
    enabled: bool,
) -> anyhow::Result<u64> {
    let store = open(settings).await?;
    let Some((_, mut manifest)) = store.manifest(rule).await? else {
        bail!(
            "no rule `{rule}` was pushed to cluster `{}`\nhint: `vigil rules list` shows the pushed rules",
            settings.name
        );
    };
    manifest.enabled = enabled;
    manifest.pushed_by = who();
    manifest.pushed_at_ms = crate::clock::now_ms();
    store.put_manifest(rule, &manifest).await
}

/// Every pushed rule's kept revisions.
pub async fn list(settings: &ClusterSettings) -> anyhow::Result<BTreeMap<RuleName, History>> {
    open(settings).await?.histories().await
}

/// Prints [`list`] for people: one line per revision, newest last.
pub fn print_list(
    rules: &BTreeMap<RuleName, History>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<28} {:>8} {:<14} {:<8} {:<24} PUSHED",
        "RULE", "REVISION", "DIGEST", "ENABLED", "BY"
    )?;
    for (rule, history) in rules {
        for (revision, manifest) in history {
            match manifest {
                Ok(manifest) => writeln!(
                    out,
                    "{:<28} {:>8} {:<14} {:<8} {:<24} {}",
                    rule.as_str(),
                    revision,
                    &manifest.digest[..manifest.digest.len().min(12)],
                    manifest.enabled,
                    manifest.pushed_by,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(manifest.pushed_at_ms)
                    )
                )?,
                Err(reason) => writeln!(out, "{:<28} {:>8} {reason}", rule.as_str(), revision)?,
            }
        }
    }
    Ok(())
}

async fn open(settings: &ClusterSettings) -> anyhow::Result<RuleStore> {
    let nats = Nats::connect(settings).await?;
    RuleStore::open(&nats, settings).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(bytes: &[u8]) -> Manifest {
        Manifest {
            digest: sha256_hex(bytes),
            size: bytes.len() as u64,
            config: serde_json::json!({}),
            enabled: true,
            signature: None,
            pushed_by: "ops@test".into(),
            pushed_at_ms: 1,
        }
    }

    #[test]
    fn bytes_other_than_the_manifests_are_refused_naming_both_digests() {
        let manifest = manifest(b"v1");
        check_digest(&manifest, b"v1").unwrap();
        let error = check_digest(&manifest, b"v2").unwrap_err();
        assert!(error.starts_with("digest mismatch"), "{error}");
        assert!(error.contains(&manifest.digest) && error.contains(&sha256_hex(b"v2")));
        assert!(error.contains("\nhint: "));
    }

    #[test]
    fn a_config_declared_rule_or_an_unknown_tenant_is_not_replaced_by_a_push() {
        let settings = Settings::local_default();
        let declared = settings.rules[0].name.clone();
        let error = spec_for(&declared, 3, &manifest(b"x"), "b", &settings).unwrap_err();
        assert!(error.contains("declared at embedded default"), "{error}");
        let tenant = rule_name("cpu", Some("payments")).unwrap();
        let error = spec_for(&tenant, 3, &manifest(b"x"), "b", &settings).unwrap_err();
        assert!(error.starts_with("no tenant `payments`"), "{error}");
        let spec = spec_for(&"cpu".into(), 3, &manifest(b"x"), "b", &settings).unwrap();
        assert_eq!(
            spec.source.to_string(),
            format!("nats:b/{}", sha256_hex(b"x"))
        );
        assert_eq!(spec.origin, "manifest `rule.cpu` revision 3");
        assert!(!spec.trust.requires_signature());
    }

    /// A tenant with `require_signature` gets no unsigned pushed rule: its
    /// pushed rules carry the tenant file's keys, or are refused when it
    /// trusts none.
    #[test]
    fn a_tenants_pushed_rule_needs_the_signature_its_grant_requires() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = dir.path().join("tenants.d");
        std::fs::create_dir(&tenants).unwrap();
        crate::signing::keygen(
            &tenants.join("pay.pub"),
            &dir.path().join("pay.key"),
            false,
            false,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("vigil.toml"),
            "[[targets]]\nname = \"local\"\nkind = \"local\"\n\n[[tenants]]\nname = \"pay\"\ntargets = [\"*\"]\nrequire_signature = true\n\n[[tenants]]\nname = \"ops\"\ntargets = [\"*\"]\nrequire_signature = true\n",
        )
        .unwrap();
        std::fs::write(tenants.join("pay.toml"), "[trust]\nkeys = [\"pay.pub\"]\n").unwrap();
        std::fs::write(tenants.join("ops.toml"), "").unwrap();
        let settings = Settings::load(&dir.path().join("vigil.toml")).unwrap();
        let pay = rule_name("cpu", Some("pay")).unwrap();
        let spec = spec_for(&pay, 7, &manifest(b"x"), "b", &settings).unwrap();
        assert!(spec.trust.requires_signature());
        let unsigned = spec
            .trust
            .check(b"x", Some(&signature_of(&pay, 7, &manifest(b"x"))));
        let error = unsigned.unwrap_err().to_string();
        assert!(error.contains("manifest (revision 7)"), "{error}");
        let ops = rule_name("cpu", Some("ops")).unwrap();
        let error = spec_for(&ops, 7, &manifest(b"x"), "b", &settings).unwrap_err();
        assert!(error.contains("no key is trusted"), "{error}");
    }

    #[test]
    fn names_that_a_key_cannot_hold_are_refused() {
        assert_eq!(rule_name("cpu-hot", None).unwrap().as_str(), "cpu-hot");
        assert_eq!(
            rule_name("cpu", Some("payments")).unwrap().as_str(),
            "payments/cpu"
        );
        assert!(rule_name("a b", None).is_err());
        assert!(rule_name("a.b", None).is_err());
        assert!(rule_name("cpu", Some("x/y")).is_err());
    }
}
