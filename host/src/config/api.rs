//! `[api]`: where the HTTP API, `/metrics` and the page listen, and the
//! token that guards what changes state.
//!
//! ```toml
//! [api]
//! listen = "127.0.0.1:9470"     # the default; "off" for no server
//! token_file = "/etc/vigil/api.token"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the API listens when the config does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9470";

/// Whether and where the API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// No server.
    Off,
    /// The default address: when another process holds it (a second host on
    /// one machine), the API takes a free port instead and logs which.
    Default(SocketAddr),
    /// An address the operator chose: a host that cannot bind it does not
    /// start.
    Configured(SocketAddr),
}

impl Listen {
    /// The address asked for, if any.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::Default(addr) | Listen::Configured(addr) => Some(addr),
        }
    }
}

/// The API's settings, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Where it listens.
    pub listen: Listen,
    /// The bearer token file; `None`: the host makes a token at every start
    /// in its data directory (`api.token`, readable by its user only), where
    /// `vigil` commands on the same machine find it.
    pub token_file: Option<PathBuf>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: Listen::Default(DEFAULT_LISTEN.parse().expect("a valid address")),
            token_file: None,
        }
    }
}

/// `[api]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiConfig {
    /// `"127.0.0.1:9470"`, `"[::1]:9470"`, `"0.0.0.0:9470"` or `"off"`.
    listen: Option<String>,
    /// A file holding the bearer token: `"/etc/vigil/api.token"`.
    token_file: Option<PathBuf>,
}

impl ApiConfig {
    /// Checks the section; relative paths are taken from `base` (the config
    /// file's folder).
    pub(super) fn validate(self, base: &Path) -> Result<ApiSettings, String> {
        let listen = match self.listen.as_deref() {
            None => ApiSettings::default().listen,
            Some("off") => Listen::Off,
            Some(text) => Listen::Configured(text.parse().map_err(|_| {
                format!(
                    "listen = \"{text}\" is not an address\nhint: write an IP address and a port, e.g. \"{DEFAULT_LISTEN}\", or \"off\""
                )
            })?),
        };
        let token_file = self.token_file.map(|file| base.join(file));
        if let (Some(addr), None) = (listen.addr(), &token_file)
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "listen = \"{addr}\" is reachable from other machines, and no token_file is set\nhint: set token_file to a file holding a secret; every request but /healthz, /readyz and the page at / must then carry it"
            ));
        }
        Ok(ApiSettings { listen, token_file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<ApiSettings, String> {
        toml::from_str::<ApiConfig>(text)
            .map_err(|error| error.to_string())?
            .validate(Path::new("/etc/vigil"))
    }

    #[test]
    fn the_default_is_loopback_and_may_move_when_taken() {
        let settings = validate("").unwrap();
        assert_eq!(settings, ApiSettings::default());
        assert!(
            matches!(settings.listen, Listen::Default(addr) if addr.to_string() == DEFAULT_LISTEN)
        );
    }

    #[test]
    fn an_address_the_operator_chose_is_kept_and_off_is_off() {
        let chosen = validate("listen = \"[::1]:9999\"").unwrap();
        assert_eq!(
            chosen.listen,
            Listen::Configured("[::1]:9999".parse().unwrap())
        );
        assert_eq!(validate("listen = \"off\"").unwrap().listen, Listen::Off);
        let token = validate("token_file = \"secret/api.token\"").unwrap();
        assert_eq!(
            token.token_file,
            Some(PathBuf::from("/etc/vigil/secret/api.token"))
        );
    }

    #[test]
    fn a_bad_address_or_an_open_one_without_a_token_is_refused() {
        let error = validate("listen = \"localhost\"").unwrap_err();
        assert!(
            error.starts_with("listen = \"localhost\" is not an address\nhint: "),
            "{error}"
        );
        let error = validate("listen = \"0.0.0.0:9470\"").unwrap_err();
        assert!(
            error.contains("reachable from other machines, and no token_file is set"),
            "{error}"
        );
        assert!(validate("listen = \"0.0.0.0:9470\"\ntoken_file = \"t\"").is_ok());
        let error = validate("port = 1").unwrap_err();
        assert!(error.contains("unknown field `port`"), "{error}");
    }
}
