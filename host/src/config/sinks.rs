//! `[[sinks]]`: where alerts go. Each table is checked completely (its
//! kind's settings only, URLs, the bearer token readable) and becomes a
//! typed [`SinkSpec`]; an error names the sink and hints at the fix.
//!
//! ```toml
//! [[sinks]]
//! name = "oncall"                          # unique
//! kind = "webhook"                         # stdout | file | webhook | alertmanager
//! url = "https://hooks.example/alerts"
//! bearer_token_file = "/etc/vigil/oncall.token"   # or bearer_token_env = "ONCALL_TOKEN"
//! match_labels = { severity = "critical" }  # route: every label must match
//! match_rules = ["threshold"]              # route: only these rules' alerts
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, check_label_name};
use crate::names::Syntax;
use crate::sinks::alertmanager::DEFAULT_RESEND_INTERVAL;
use crate::sinks::spec::{SinkKind, SinkSpec};
use crate::sinks::{Endpoint, OutboxSettings, Route, Secret};

/// How long one POST may take when the sink does not say.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[sinks]]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinkConfig {
    /// Unique name: `"oncall"`.
    name: String,
    /// `"stdout"`, `"file"`, `"webhook"` or `"alertmanager"`.
    kind: SinkKindName,
    /// webhook: where to POST, `"https://hooks.example/alerts"`.
    url: Option<String>,
    /// alertmanager: every Alertmanager, `["http://am-1:9093", "http://am-2:9093"]`.
    urls: Option<Vec<String>>,
    /// file: the file to append to, `"alerts.jsonl"` (relative to the config).
    path: Option<PathBuf>,
    /// A file holding the bearer token: `"/etc/vigil/oncall.token"`.
    bearer_token_file: Option<PathBuf>,
    /// An environment variable holding the bearer token: `"ONCALL_TOKEN"`.
    bearer_token_env: Option<String>,
    /// Refused with a hint: a token does not belong in the config.
    bearer_token: Option<toml::Value>,
    /// One POST, answer included: `"10s"`.
    timeout: Option<ConfigDuration>,
    /// Notifications that may wait in the outbox: `10000`.
    max_queue: Option<usize>,
    /// The first retry's wait: `"1s"`.
    retry_initial: Option<ConfigDuration>,
    /// The longest wait between retries: `"1m"`.
    retry_max: Option<ConfigDuration>,
    /// Failing this long raises `DeliveryFailing`: `"1m"`.
    failing_after: Option<ConfigDuration>,
    /// alertmanager: how often firing alerts are re-sent, `"1m"`.
    resend_interval: Option<ConfigDuration>,
    /// Where people reach this Vigil: `externalURL` and `generatorURL`.
    external_url: Option<String>,
    /// Route: only these rules' alerts, `["threshold"]`.
    #[serde(default)]
    match_rules: Vec<String>,
    /// Route: only alerts with these labels, `{ severity = "critical" }`.
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum SinkKindName {
    Stdout,
    File,
    Webhook,
    Alertmanager,
}

const NETWORK: &[&str] = &[
    "bearer_token_file",
    "bearer_token_env",
    "timeout",
    "max_queue",
    "retry_initial",
    "retry_max",
    "failing_after",
    "external_url",
];

impl SinkKindName {
    const ALL: [SinkKindName; 4] = [
        SinkKindName::Stdout,
        SinkKindName::File,
        SinkKindName::Webhook,
        SinkKindName::Alertmanager,
    ];

    fn name(self) -> &'static str {
        match self {
            SinkKindName::Stdout => "stdout",
            SinkKindName::File => "file",
            SinkKindName::Webhook => "webhook",
            SinkKindName::Alertmanager => "alertmanager",
        }
    }

    fn takes(self, field: &str) -> bool {
        match self {
            SinkKindName::Stdout => false,
            SinkKindName::File => field == "path",
            SinkKindName::Webhook => field == "url" || NETWORK.contains(&field),
            SinkKindName::Alertmanager => {
                field == "urls" || field == "resend_interval" || NETWORK.contains(&field)
            }
        }
    }
}

impl SinkConfig {
    /// The name, for error messages before the rest is checked.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Checks the table; `base` anchors relative paths.
    pub(super) fn validate(mut self, base: &Path) -> Result<SinkSpec, String> {
        if !Syntax::Word.accepts(&self.name) {
            return Err("the name must be letters, digits, `_` and `-`".into());
        }
        if self.bearer_token.is_some() {
            return Err("an inline `bearer_token` is refused: a token in the config ends up in backups, diffs and logs\nhint: put it in a file readable by vigil only and set bearer_token_file = \"/etc/vigil/token\", or set bearer_token_env = \"VIGIL_TOKEN\"".into());
        }
        let kind = self.kind;
        for (field, set) in [
            ("url", self.url.is_some()),
            ("urls", self.urls.is_some()),
            ("path", self.path.is_some()),
            ("bearer_token_file", self.bearer_token_file.is_some()),
            ("bearer_token_env", self.bearer_token_env.is_some()),
            ("timeout", self.timeout.is_some()),
            ("max_queue", self.max_queue.is_some()),
            ("retry_initial", self.retry_initial.is_some()),
            ("retry_max", self.retry_max.is_some()),
            ("failing_after", self.failing_after.is_some()),
            ("resend_interval", self.resend_interval.is_some()),
            ("external_url", self.external_url.is_some()),
        ] {
            if set && !kind.takes(field) {
                let owners: Vec<String> = SinkKindName::ALL
                    .into_iter()
                    .filter(|other| other.takes(field))
                    .map(|other| format!("`{}`", other.name()))
                    .collect();
                return Err(format!(
                    "kind `{}` takes no `{field}`\nhint: `{field}` is a setting of {}",
                    kind.name(),
                    owners.join(" and ")
                ));
            }
        }
        let route = route(
            std::mem::take(&mut self.match_rules),
            std::mem::take(&mut self.match_labels),
        )?;
        let kind = match kind {
            SinkKindName::Stdout => SinkKind::Stdout,
            SinkKindName::File => {
                let path = self.path.ok_or(
                    "kind `file` needs a `path`, e.g. path = \"/var/log/vigil/alerts.jsonl\"",
                )?;
                let path = base.join(path);
                let parent = path.parent().unwrap_or(Path::new("/"));
                if !parent.is_dir() {
                    return Err(format!(
                        "the folder of `{}` does not exist\nhint: create it, or point `path` elsewhere",
                        path.display()
                    ));
                }
                SinkKind::File { path }
            }
            SinkKindName::Webhook => {
                let url = self.url.as_deref().ok_or(
                    "kind `webhook` needs a `url`, e.g. url = \"https://hooks.example/alerts\"",
                )?;
                let outbox = outbox(&self)?;
                SinkKind::Webhook {
                    endpoint: endpoint(&self, url, base)?,
                    outbox,
                    external_url: external_url(&self)?,
                }
            }
            SinkKindName::Alertmanager => {
                let urls = self.urls.clone().unwrap_or_default();
                if urls.is_empty() {
                    return Err("kind `alertmanager` needs `urls`, every Alertmanager of the cluster, e.g. urls = [\"http://127.0.0.1:9093\"]".into());
                }
                let endpoints = urls
                    .iter()
                    .map(|url| endpoint(&self, url, base))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut seen = std::collections::HashSet::new();
                if let Some(twice) = endpoints.iter().find(|e| !seen.insert(e.url.clone())) {
                    return Err(format!(
                        "`{}` is in `urls` twice; each Alertmanager once",
                        twice.url
                    ));
                }
                SinkKind::Alertmanager {
                    endpoints,
                    outbox: outbox(&self)?,
                    resend_interval: self
                        .resend_interval
                        .map_or(DEFAULT_RESEND_INTERVAL, |d| d.0),
                    external_url: external_url(&self)?,
                }
            }
        };
        Ok(SinkSpec {
            name: self.name,
            route,
            kind,
        })
    }
}

fn route(rules: Vec<String>, labels: BTreeMap<String, String>) -> Result<Route, String> {
    if rules.iter().any(String::is_empty) {
        return Err("`match_rules` has an empty rule name".into());
    }
    for name in labels.keys() {
        check_label_name(name).map_err(|error| format!("match_labels: {error}"))?;
    }
    Ok(Route {
        rules: rules.into_iter().map(Into::into).collect(),
        labels,
    })
}

fn url(text: &str, key: &str) -> Result<reqwest::Url, String> {
    let url =
        reqwest::Url::parse(text).map_err(|error| format!("invalid {key} `{text}`: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{key} `{url}` must be http:// or https://"));
    }
    Ok(url)
}

fn external_url(config: &SinkConfig) -> Result<Option<reqwest::Url>, String> {
    config
        .external_url
        .as_deref()
        .map(|text| url(text, "external_url"))
        .transpose()
}

fn endpoint(config: &SinkConfig, text: &str, base: &Path) -> Result<Endpoint, String> {
    Ok(Endpoint {
        url: url(text, "url")?,
        bearer: bearer(config, base)?,
        timeout: config.timeout.map_or(DEFAULT_SINK_TIMEOUT, |d| d.0),
    })
}

/// The bearer token, read now so that a missing file or variable stops
/// the start, not the first alert.
fn bearer(config: &SinkConfig, base: &Path) -> Result<Option<Secret>, String> {
    let token = match (&config.bearer_token_file, &config.bearer_token_env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(
                "set `bearer_token_file` or `bearer_token_env`, not both: which token is meant?"
                    .into(),
            );
        }
        (Some(file), None) => {
            let file = base.join(file);
            let text = std::fs::read_to_string(&file).map_err(|error| {
                format!(
                    "cannot read the bearer token file `{}`: {error}\nhint: it must be readable by the user vigil runs as",
                    file.display()
                )
            })?;
            Secret::new(&text).non_empty().ok_or(format!(
                "the bearer token file `{}` is empty",
                file.display()
            ))?
        }
        (None, Some(variable)) => {
            let text = std::env::var(variable).unwrap_or_default();
            Secret::new(&text).non_empty().ok_or(format!(
                "the environment variable `{variable}` (bearer_token_env) is not set or empty\nhint: set it in the service's environment, e.g. systemd's EnvironmentFile="
            ))?
        }
    };
    Ok(Some(token))
}

fn outbox(config: &SinkConfig) -> Result<OutboxSettings, String> {
    let mut settings = OutboxSettings::default();
    if let Some(max) = config.max_queue {
        if max == 0 {
            return Err("max_queue must be at least 1\nhint: it bounds the notifications waiting while the receiver is down; the default is 10000".into());
        }
        settings.max_queue = max;
    }
    if let Some(wait) = config.retry_initial {
        settings.retry_initial = wait.0;
    }
    if let Some(wait) = config.retry_max {
        settings.retry_max = wait.0;
    }
    if settings.retry_max < settings.retry_initial {
        return Err(format!(
            "retry_max ({}) is shorter than retry_initial ({})\nhint: retries start at retry_initial and double up to retry_max",
            humantime::format_duration(settings.retry_max),
            humantime::format_duration(settings.retry_initial)
        ));
    }
    if let Some(after) = config.failing_after {
        settings.failing_after = after.0;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    const HEAD: &str = "[[targets]]\nname = \"me\"\nkind = \"local\"\n";

    fn parse(sinks: &str) -> Result<Settings, String> {
        let dir = std::env::temp_dir();
        Settings::parse(&format!("{HEAD}{sinks}"), &dir.join("vigil.toml"))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn every_kind_becomes_a_typed_sink_with_its_route() {
        let token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token.path(), "s3cret\n").unwrap();
        let settings = parse(&format!(
            r#"
[[sinks]]
name = "console"
kind = "stdout"

[[sinks]]
name = "log"
kind = "file"
path = "alerts.jsonl"

[[sinks]]
name = "oncall"
kind = "webhook"
url = "https://hooks.example/alerts"
bearer_token_file = "{}"
match_labels = {{ severity = "critical" }}
max_queue = 50
retry_initial = "10ms"
retry_max = "100ms"

[[sinks]]
name = "am"
kind = "alertmanager"
urls = ["http://127.0.0.1:9093", "http://127.0.0.1:9094"]
match_rules = ["threshold"]
resend_interval = "30s"
"#,
            token.path().display()
        ))
        .unwrap();
        let names: Vec<&str> = settings.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["console", "log", "oncall", "am"]);
        assert_eq!(settings.sinks[0].kind, SinkKind::Stdout);
        let SinkKind::Webhook {
            endpoint, outbox, ..
        } = &settings.sinks[2].kind
        else {
            panic!("a webhook")
        };
        assert_eq!(endpoint.bearer, Some(Secret::new("s3cret")));
        assert_eq!(format!("{:?}", endpoint.bearer), "Some(Secret(..))");
        assert_eq!(endpoint.timeout, DEFAULT_SINK_TIMEOUT);
        assert_eq!(
            (outbox.max_queue, outbox.retry_initial, outbox.retry_max),
            (50, Duration::from_millis(10), Duration::from_millis(100))
        );
        assert_eq!(settings.sinks[2].route.labels["severity"], "critical");
        let SinkKind::Alertmanager {
            endpoints,
            resend_interval,
            ..
        } = &settings.sinks[3].kind
        else {
            panic!("an alertmanager")
        };
        assert_eq!(endpoints.len(), 2);
        assert_eq!(*resend_interval, Duration::from_secs(30));
        assert_eq!(settings.sinks[3].route.rules, ["threshold"]);
        // No [[sinks]]: none declared, the console is the default.
        assert!(parse("").unwrap().sinks.is_empty());
    }

    #[test]
    fn errors_name_the_sink_and_hint_at_the_fix() {
        let error = |text: &str| parse(text).unwrap_err();
        let inline = error(
            "[[sinks]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"http://x/\"\nbearer_token = \"abc\"\n",
        );
        assert!(
            inline.contains(":4: sink `oncall`: an inline `bearer_token` is refused")
                && inline.contains("hint: put it in a file"),
            "{inline}"
        );
        let wrong = error("[[sinks]]\nname = \"log\"\nkind = \"file\"\nurl = \"http://x/\"\n");
        assert!(
            wrong.ends_with(
                "sink `log`: kind `file` takes no `url`\nhint: `url` is a setting of `webhook`"
            ),
            "{wrong}"
        );
        let no_urls = error("[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\n");
        assert!(no_urls.contains("needs `urls`"), "{no_urls}");
        let env = error(
            "[[sinks]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x/\"\nbearer_token_env = \"VIGIL_TEST_NO_SUCH_VARIABLE\"\n",
        );
        assert!(
            env.contains("`VIGIL_TEST_NO_SUCH_VARIABLE` (bearer_token_env) is not set"),
            "{env}"
        );
        let file = error(
            "[[sinks]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x/\"\nbearer_token_file = \"/nonexistent/token\"\n",
        );
        assert!(
            file.contains("cannot read the bearer token file `/nonexistent/token`"),
            "{file}"
        );
        let backoff = error(
            "[[sinks]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x/\"\nretry_initial = \"1m\"\nretry_max = \"1s\"\n",
        );
        assert!(
            backoff.contains("retry_max (1s) is shorter than retry_initial (1m)"),
            "{backoff}"
        );
        let twice = error(
            "[[sinks]]\nname = \"s\"\nkind = \"stdout\"\n[[sinks]]\nname = \"s\"\nkind = \"stdout\"\n",
        );
        assert!(
            twice.contains(":7: sink `s`: the name is used twice"),
            "{twice}"
        );
        let scheme = error("[[sinks]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"ftp://x/\"\n");
        assert!(scheme.contains("must be http:// or https://"), "{scheme}");
        let label = error(
            "[[sinks]]\nname = \"s\"\nkind = \"stdout\"\nmatch_labels = { \"a-b\" = \"x\" }\n",
        );
        assert!(
            label.contains("match_labels: label name `a-b` is invalid"),
            "{label}"
        );
    }
}
