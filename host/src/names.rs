//! Names: which characters each kind of name may hold ([`Syntax`]), and the
//! typed names the host passes around once a config is parsed
//! ([`RuleName`], [`TargetName`], [`ActionName`], [`TenantName`], and the
//! cluster's [`NodeId`] and [`ClusterName`]).
//!
//! The typed names are cheap to clone (an `Arc<str>`), so a name can be a
//! map key, sit in every sample and log line, and cross threads without a
//! copy of its text. They do not check their text: a name is checked where
//! it is declared (the config), and whatever that accepted is the name.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Which characters a kind of name may hold. The rules differ because the
/// names end up in different places; each variant says where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `[A-Za-z_][A-Za-z0-9_]*`: label names (as Prometheus has them) and
    /// action params, whose `{placeholder}` must not be mistaken for text.
    Identifier,
    /// `[A-Za-z0-9_-]+`: action names, which appear in TOML table headers,
    /// audit filters and alert labels.
    Word,
    /// `[a-z][a-z0-9-]*`: a `vigil new` project's name, which is at once a
    /// folder, a crate, an npm package and a `.wasm` file name.
    Slug,
}

impl Syntax {
    /// Whether `text` is a name of this kind (never the empty text).
    pub fn accepts(self, text: &str) -> bool {
        let mut chars = text.chars();
        chars.next().is_some_and(|c| self.may_start(c)) && chars.all(|c| self.may_hold(c))
    }

    fn may_start(self, c: char) -> bool {
        match self {
            Syntax::Identifier => c.is_ascii_alphabetic() || c == '_',
            Syntax::Word => self.may_hold(c),
            Syntax::Slug => c.is_ascii_lowercase(),
        }
    }

    fn may_hold(self, c: char) -> bool {
        match self {
            Syntax::Identifier => c.is_ascii_alphanumeric() || c == '_',
            Syntax::Word => c.is_ascii_alphanumeric() || c == '_' || c == '-',
            Syntax::Slug => c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        }
    }
}

/// Defines a name type: an `Arc<str>` newtype that borrows, derefs and
/// serializes as its text.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            /// As a string literal, `"web-01"`, like the `String` it replaces.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Lets a map keyed by names be searched with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                $name(text.into())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                $name(text.into())
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0.to_string()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

name_type! {
    /// A rule's name from the config (`threshold`, or a file's stem): its
    /// log tag, its state namespace and the key of its worker.
    RuleName
}

/// Between a tenant's name and its rule's own name in a [`RuleName`].
pub const TENANT_SEPARATOR: char = '/';

impl RuleName {
    /// The name of tenant `tenant`'s rule `rule`: `payments/disk-full`.
    /// Two tenants may both have a `disk-full`; their rules' state, alert
    /// fingerprints and audit records are kept apart because every one of
    /// them is keyed by this name.
    pub fn of_tenant(tenant: &TenantName, rule: &str) -> Self {
        RuleName::from(format!("{tenant}{TENANT_SEPARATOR}{rule}"))
    }

    /// The tenant a rule belongs to: the part before `/`, or `None` for
    /// the operator's own rules (whose names the config keeps free of `/`).
    pub fn tenant(&self) -> Option<&str> {
        tenant_of(&self.0)
    }
}

/// The tenant of the rule named `rule` ([`RuleName::tenant`], for a name
/// held as text).
pub fn tenant_of(rule: &str) -> Option<&str> {
    rule.split_once(TENANT_SEPARATOR).map(|(tenant, _)| tenant)
}

name_type! {
    /// A target's name from the config (`web-01`): `sample.target` for the
    /// rules, and half of every per-target key (alerts, cooldowns).
    TargetName
}

name_type! {
    /// An action's name, the `NAME` of `[actions.NAME]` (`restart`): what
    /// rules request, and the key of its gate history and breaker.
    ActionName
}

name_type! {
    /// A tenant's name, the `name` of a `[[tenants]]` table (`payments`):
    /// the first half of its rules' names (`payments/disk-full`), the value
    /// of the `tenant` label on its alerts, and the key of its share of the
    /// rule workers.
    TenantName
}

name_type! {
    /// A node's id in its cluster (`[cluster] node`): letters, digits, `_`
    /// and `-`, since it is a key in the lease bucket.
    NodeId
}

name_type! {
    /// A cluster's name (`[cluster] name`), which names its buckets.
    ClusterName
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn each_syntax_accepts_its_names_only() {
        let cases = [
            (Syntax::Identifier, "service", true),
            (Syntax::Identifier, "_x1", true),
            (Syntax::Identifier, "1x", false),
            (Syntax::Identifier, "a-b", false),
            (Syntax::Identifier, "", false),
            (Syntax::Word, "restart-nginx_2", true),
            (Syntax::Word, "2fa", true),
            (Syntax::Word, "-", true),
            (Syntax::Word, "bad name", false),
            (Syntax::Word, "é", false),
            (Syntax::Word, "", false),
            (Syntax::Slug, "disk-full2", true),
            (Syntax::Slug, "Disk", false),
            (Syntax::Slug, "2disk", false),
            (Syntax::Slug, "disk_full", false),
            (Syntax::Slug, "", false),
        ];
        for (syntax, text, expected) in cases {
            assert_eq!(syntax.accepts(text), expected, "{syntax:?} {text:?}");
        }
    }

    #[test]
    fn a_tenant_rule_name_says_whose_it_is() {
        let name = RuleName::of_tenant(&TenantName::from("payments"), "disk-full");
        assert_eq!(name, "payments/disk-full");
        assert_eq!(name.tenant(), Some("payments"));
        assert_eq!(RuleName::from("threshold").tenant(), None);
    }

    #[test]
    fn a_name_is_its_text() {
        let name = ActionName::from("restart");
        assert_eq!(name.to_string(), "restart");
        assert_eq!(format!("{name:?}"), "\"restart\"");
        assert_eq!(name, "restart");
        assert_eq!(name.len(), 7);
        let map = BTreeMap::from([(name.clone(), 1)]);
        assert_eq!(map.get("restart"), Some(&1));
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"restart\"");
        let back: ActionName = serde_json::from_str("\"restart\"").unwrap();
        assert_eq!(back, name);
        assert_eq!(String::from(back), "restart");
    }
}
