//! Security headers on every answer: pages, files, API results and errors alike. A handler
//! that sets one of them itself (the pages' own CSP) keeps its value; nothing here reads bodies.

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use super::state::AppState;

/// For everything that is not a page: nothing may load, frame or submit from it.
const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page asks for the microphone on its own origin; nothing may ask for anything else, and
/// no embedding page can delegate a feature to a frame of ours (we refuse framing anyway).
const PERMISSIONS_POLICY: &str =
    "microphone=(self), camera=(), display-capture=(), geolocation=(), payment=(), usb=()";

/// A year; without `includeSubDomains`, as other hosts of the operator's domain may be plain HTTP.
const HSTS: &str = "max-age=31536000";

/// The headers every answer gets, unless its handler set them already.
pub struct SecurityHeaders {
    fixed: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    /// HSTS only when clients reach the server over HTTPS: its own TLS, or a `public_url`
    /// starting with `https://` (a TLS-terminating proxy in front).
    pub fn new(https: bool) -> Self {
        let mut fixed = vec![
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, API_CSP),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                "same-origin",
            ),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                "same-origin",
            ),
            (
                HeaderName::from_static("permissions-policy"),
                PERMISSIONS_POLICY,
            ),
        ];
        if https {
            fixed.push((header::STRICT_TRANSPORT_SECURITY, HSTS));
        }
        SecurityHeaders {
            fixed: fixed
                .into_iter()
                .map(|(name, value)| (name, HeaderValue::from_static(value)))
                .collect(),
        }
    }

    fn apply(&self, response: &mut Response) {
        let headers = response.headers_mut();
        for (name, value) in &self.fixed {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

pub async fn add_security_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    state.security_headers.apply(&mut response);
    response
}
