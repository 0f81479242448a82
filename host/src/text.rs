//! Text a rule wrote, made safe to print.
//!
//! A rule's summaries, labels, log messages and panic messages end up in the
//! host's text output and log, where one line is one event. A newline or
//! carriage return in them could start a line that looks like the host's,
//! and an escape sequence could rewrite what a terminal shows. [`one_line`]
//! escapes every such character, so what a rule says stays inside the line
//! the host gave it. JSON output needs none of this: its encoder escapes.
//! [`prefix`] cuts text to a byte budget without splitting a character.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1) and every Unicode line,
/// paragraph or direction override escaped as `\n`, `\r`, `\t` or `\u{..}`.
/// Text without any is returned as it is, without a copy.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", c as u32);
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        // Line and paragraph separators, and the bidirectional overrides
        // and isolates that reorder what a reader sees.
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_never_splits_a_character() {
        assert_eq!(prefix("añb", 2), "a");
        assert_eq!(prefix("añb", 3), "añ");
        assert_eq!(prefix("ab", 5), "ab");
    }

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(
            one_line("cpu_usage is 91.0, above 80 — ok"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn nothing_can_start_or_rewrite_a_line() {
        let forged =
            "done\n2026-11-30T10:00:00Z  INFO vigil: all good\r\x1b[2K\u{85}\u{2028}\u{202e}";
        let escaped = one_line(forged);
        assert_eq!(
            escaped,
            "done\\n2026-11-30T10:00:00Z  INFO vigil: all good\\r\\u{1b}[2K\\u{85}\\u{2028}\\u{202e}"
        );
        assert!(!escaped.chars().any(needs_escape));
    }
}
