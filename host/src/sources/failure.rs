//! Why a poll failed: a reason from a short fixed list (a metric label and
//! an API filter; the list never grows with what targets say) and the
//! message in words (the sample's `down` reason, the log line).

use std::fmt;

use serde::Serialize;

/// The class of a failed poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No answer within the target's `timeout`.
    Timeout,
    /// No connection (refused, unreachable, name not resolved).
    Connect,
    /// An answer that is not 2xx.
    HttpStatus,
    /// A body or output over its cap.
    TooLarge,
    /// A body that does not parse as the source's format.
    Malformed,
    /// A check that exited outside 0-3, was killed or timed out.
    Check,
    /// Anything else (a request that failed mid-way, this machine's
    /// counters unreadable).
    Other,
}

impl Reason {
    /// Every reason, for listing.
    pub const ALL: [Reason; 7] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::HttpStatus,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Check,
        Reason::Other,
    ];

    /// `timeout`, `connect`, `http-status`, `too-large`, `malformed`,
    /// `check`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::HttpStatus => "http-status",
            Reason::TooLarge => "too-large",
            Reason::Malformed => "malformed",
            Reason::Check => "check",
            Reason::Other => "other",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed poll: its class and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollError {
    /// The class.
    pub reason: Reason,
    /// What happened, for people.
    pub message: String,
}

impl PollError {
    /// A failure of class `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        PollError {
            reason,
            message: message.into(),
        }
    }

    /// A body that does not parse.
    pub fn malformed(message: impl Into<String>) -> Self {
        PollError::new(Reason::Malformed, message)
    }
}

impl From<String> for PollError {
    fn from(message: String) -> Self {
        PollError::new(Reason::Other, message)
    }
}

impl From<&str> for PollError {
    fn from(message: &str) -> Self {
        PollError::new(Reason::Other, message)
    }
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
