//! Which web origins may call the server from a browser: its own, plus `allowed_origins`.
//! A request whose `Origin` is any other is refused before any handler, the signaling WebSocket
//! included (cross-site WebSocket hijacking); CORS headers go only to the allowed origins.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;

/// The origins the server accepts, lower-cased as browsers send them.
pub struct Origins {
    /// The origin of `public_url` (or of the bound address).
    own: String,
    /// `allowed_origins` from the configuration: these get CORS answers.
    cross: Vec<String>,
}

enum Verdict {
    /// Our own page (or no browser at all): nothing to add.
    SameOrigin,
    /// A configured other origin: answer with CORS headers.
    Allowed,
    Foreign,
}

impl Origins {
    pub fn new(base_url: &str, allowed: &[String]) -> Self {
        Origins {
            own: origin_of(base_url),
            cross: allowed.iter().map(|o| origin_of(o)).collect(),
        }
    }

    fn judge(&self, origin: &str, headers: &HeaderMap) -> Verdict {
        // `null` (sandboxed frames, files) and anything else without a scheme is foreign.
        if !origin.contains("://") {
            return Verdict::Foreign;
        }
        let origin = origin_of(origin);
        if origin == self.own || same_host(&origin, headers) {
            Verdict::SameOrigin
        } else if self.cross.contains(&origin) {
            Verdict::Allowed
        } else {
            Verdict::Foreign
        }
    }
}

/// `scheme://authority` of a URL, lower-cased, without a default port.
fn origin_of(url: &str) -> String {
    let url = url.to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url.as_str()));
    let authority = rest.split('/').next().unwrap_or("");
    format!("{scheme}://{}", without_default_port(scheme, authority))
}

fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// The page was loaded from the very host the request is addressed to (`origin` is
/// normalised by `origin_of`). This covers a server
/// reached under another name than `public_url` (`localhost` for `127.0.0.1`, a LAN address);
/// a page elsewhere cannot choose the `Host` its browser sends with the origin it names.
fn same_host(origin: &str, headers: &HeaderMap) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    without_default_port(scheme, authority) == without_default_port(scheme, &host)
}

/// Whether this is a CORS preflight (RFC: Fetch standard, "CORS-preflight request").
fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

pub async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Browsers send `Origin` on cross-origin requests, on every WebSocket handshake and on
    // same-origin requests that are not GET or HEAD; scripts and tools usually send none.
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let verdict = match origin.to_str() {
        Ok(text) => state.origins.judge(text, request.headers()),
        Err(_) => Verdict::Foreign,
    };
    match verdict {
        Verdict::SameOrigin => next.run(request).await,
        Verdict::Allowed if is_preflight(&request) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            allow(headers, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, DELETE"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            response
        }
        Verdict::Allowed => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            allow(headers, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after, www-authenticate"),
            );
            response
        }
        Verdict::Foreign => {
            tracing::debug!(origin = ?origin, "refused a request from a foreign origin");
            let mut response = ApiError::forbidden(
                "origin_not_allowed",
                "requests from this web origin are not allowed",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("origin"));
            response
        }
    }
}

/// The one origin allowed, echoed; never `*`, never credentials (the API takes bearer
/// tokens, not cookies).
fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        headers
    }

    #[test]
    fn own_origin_other_host_and_configured_origins() {
        let origins = Origins::new(
            "https://Rooms.Example.org/",
            &["https://tools.example.org".into()],
        );
        let same = |o: &str, h: &str| matches!(origins.judge(o, &host(h)), Verdict::SameOrigin);
        assert!(same("https://rooms.example.org", "127.0.0.1:8080"));
        assert!(same("https://rooms.example.org:443", "127.0.0.1:8080"));
        assert!(same("http://localhost:8080", "localhost:8080"));
        assert!(same("https://lan.example", "lan.example:443"));
        assert!(!same("http://localhost:8081", "localhost:8080"));
        assert!(!same("null", "localhost:8080"));
        assert!(!same("https://evil.example", "rooms.example.org"));
        assert!(matches!(
            origins.judge("https://tools.example.org", &host("x")),
            Verdict::Allowed
        ));
        assert!(matches!(
            origins.judge("https://tools.example.org.evil.example", &host("x")),
            Verdict::Foreign
        ));
    }
}
