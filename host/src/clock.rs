//! The host's one wall clock. Pure stages (the gate, the alert lifecycle)
//! never call it: they take the time as an argument, and the stage that does
//! the I/O reads it here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now: 0 for a clock set before 1970,
/// `u64::MAX` past the year 584 million.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_this_code_was_written() {
        // 2024-01-01T00:00:00Z.
        assert!(now_ms() > 1_704_067_200_000);
    }
}
