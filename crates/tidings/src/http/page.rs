//! The page at `/`: a console to subscribe, publish and watch events, for a newcomer's first
//! minutes and an operator's quick check. It is one HTML file with its script inline (no build
//! step, nothing fetched from elsewhere), told at start-up what it cannot ask the hub for:
//! the authorization mode (so it hides token fields that `--auth none` ignores), the bus and
//! the instance. The bus's state it reads live from `/readyz`.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde_json::json;

use crate::auth::AuthMode;
use crate::state::AppState;

const TEMPLATE: &str = include_str!("page.html");
/// The pages' palette, and where a page's template wants it.
const THEME: &str = include_str!("theme.css");
const THEME_AT: &str = "/* THEME */";

/// A page's template with the pages' palette in its place.
pub(super) fn themed(template: &str) -> String {
    template.replacen(THEME_AT, THEME, 1)
}
/// Where the hub's facts go in the template: the text of a `<script type="application/json">`.
const FACTS: &str = "{/* hub facts */}";

/// The page of this instance, rendered once.
pub(super) fn render(state: &AppState) -> Bytes {
    let config = state.config();
    let auth = &config.auth;
    let facts = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "instanceId": config.instance_id,
        "bus": state.bus().kind(),
        "auth": if auth.mode == AuthMode::None { "none" } else { "jwt" },
        "anonymous": auth.anonymous,
        "callback": state.authenticator().asks_application(),
        "subscriptions": config.subscriptions,
    });
    // `<` only occurs inside JSON strings, where `\u003c` means the same to JSON.parse and
    // cannot close the script element (an instance id is the operator's free text).
    let facts = facts.to_string().replace('<', "\\u003c");
    Bytes::from(themed(TEMPLATE).replacen(FACTS, &facts, 1))
}

/// `GET /`.
pub(super) fn serve(page: Bytes) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_one_place_for_the_facts() {
        assert_eq!(TEMPLATE.matches(FACTS).count(), 1);
    }

    #[test]
    fn each_page_has_one_place_for_the_palette() {
        for page in [TEMPLATE, include_str!("admin.html")] {
            assert_eq!(page.matches(THEME_AT).count(), 1);
            assert!(themed(page).contains("--accent:"));
        }
    }
}
