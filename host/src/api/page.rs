//! `/`: the page. One HTML file with its script inline, served as it is:
//! no build step, nothing fetched from elsewhere. It polls the JSON API
//! (the same endpoints anyone can use) once a second.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

const PAGE: &str = include_str!("page.html");

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/", get(page))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page runs only its own inline script and talks only to
            // this host.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}
