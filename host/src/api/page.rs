//! `/`: the page. One HTML file with its style and script inline, served as
//! it is: no build step, nothing fetched from elsewhere. It polls the JSON
//! API (the same endpoints anyone can use) once a second while it is shown.
//!
//! The page itself holds no data, so it is served without the token even
//! where the API needs one: it asks for the token when the API answers 401
//! and keeps it in the tab's `sessionStorage`.
//!
//! Its Content-Security-Policy allows exactly the page's own `<style>` and
//! `<script>`, by their sha256, rather than `'unsafe-inline'`: alert
//! summaries and labels come from rules nobody vetted, and although the
//! script only ever puts them in the page as text, a mistake there could not
//! run anything either (no other script, no inline `on...=` handler, no
//! `style=` attribute).

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::Shared;

const PAGE: &str = include_str!("page.html");

/// The policy, computed once from the page.
static POLICY: LazyLock<String> = LazyLock::new(|| policy(PAGE));

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/", get(page))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

/// The page talks only to this host, runs only its own script and style,
/// and may not be framed (the token form must not be overlaid).
fn policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(inline(page, "script")),
        source_hash(inline(page, "style")),
    )
}

/// The text of the page's one `<tag>` element (the page has exactly one
/// each; the tests check it).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open).map(|at| at + open.len());
    let end = page.find(&close);
    match (start, end) {
        (Some(start), Some(end)) if start <= end => &page[start..end],
        _ => panic!("page.html has no <{tag}> element"),
    }
}

/// A CSP hash source: `sha256-` and the base64 of the text's sha256.
fn source_hash(text: &str) -> String {
    format!("sha256-{}", base64(&Sha256::digest(text.as_bytes())))
}

/// Standard base64 with padding (RFC 4648), for the 32 bytes of a hash; not
/// worth a dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        // RFC 4648, section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn a_hash_source_is_what_browsers_compute() {
        // `printf 'alert(1)' | openssl dgst -sha256 -binary | base64`
        assert_eq!(
            source_hash("alert(1)"),
            "sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI="
        );
    }

    #[test]
    fn the_policy_allows_the_pages_one_script_and_one_style_and_nothing_inline() {
        for tag in ["script", "style"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "<{tag}>");
        }
        let policy = policy(PAGE);
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(policy.contains(&source_hash(inline(PAGE, "script"))));
        // Inline handlers and style attributes would be blocked by the
        // policy: none are written.
        let lower = PAGE.to_lowercase();
        for attribute in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onerror=",
            " style=",
        ] {
            assert!(!lower.contains(attribute), "page.html has{attribute}");
        }
        // Data goes in as text, never as markup.
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
    }
}
