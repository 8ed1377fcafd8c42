//! The REST API as a bot or a tool calls it: with the operator key, or a moderator's session
//! token for their own room. Rooms and invites here; any other call through [`Api::post`] and
//! [`Api::get`]. Errors come back as [`Error::Refused`] with the problem's stable `code`.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Error;
use crate::join::InviteLink;

/// How long a REST call may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// A server's REST API with one credential.
#[derive(Clone)]
pub struct Api {
    base: String,
    bearer: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Api({})", self.base)
    }
}

impl Api {
    /// The API of the server at `base` (`http://host:port`), called with `bearer` (the
    /// operator key, or a moderator's session token).
    pub fn new(base: &str, bearer: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            bearer: bearer.to_owned(),
        }
    }

    /// `POST /api/v1/rooms`: a room with `title` and whatever else `extra` sets
    /// (`max_participants`, `max_stage`, …); the room as the server answers it.
    pub async fn create_room(&self, title: &str, extra: Value) -> Result<Value, Error> {
        let mut body = json!({ "title": title });
        merge(&mut body, extra);
        self.post("/api/v1/rooms", &body).await
    }

    /// `POST /api/v1/rooms/{room}/invites`: an invite of `role` (`listener`, `speaker`,
    /// `moderator`), with whatever else `extra` sets (`label`, `max_uses`,
    /// `expires_in_secs`), as a link to join with.
    pub async fn create_invite(
        &self,
        room: &str,
        role: &str,
        extra: Value,
    ) -> Result<InviteLink, Error> {
        let mut body = json!({ "role": role });
        merge(&mut body, extra);
        let invite = self
            .post(&format!("/api/v1/rooms/{room}/invites"), &body)
            .await?;
        let code = invite["code"]
            .as_str()
            .ok_or_else(|| Error::Protocol(format!("an invite without a code: {invite}")))?;
        InviteLink::new(&self.base, code)
    }

    /// POSTs `body` to `path` (`/api/v1/…`) and returns the answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        call(
            http()?.post(format!("{}{path}", self.base)).json(body),
            Some(&self.bearer),
        )
        .await
    }

    /// GETs `path` (`/api/v1/…`, with its query) and returns the answer.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        call(
            http()?.get(format!("{}{path}", self.base)),
            Some(&self.bearer),
        )
        .await
    }
}

/// Adds `extra`'s fields (an object) to `body`.
fn merge(body: &mut Value, extra: Value) {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
}

/// The client every call shares. No idle connections kept: a kept connection would be a
/// socket and a task on the server for nothing.
fn http() -> Result<&'static reqwest::Client, Error> {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(http) = HTTP.get() {
        return Ok(http);
    }
    // reqwest brings no crypto provider of its own: rustls on *ring*, as the media stack.
    let _ = rustls::crypto::ring::default_provider().install_default();
    #[allow(clippy::disallowed_methods)]
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| Error::Transport(e.to_string()))?;
    Ok(HTTP.get_or_init(|| http))
}

/// POSTs `body` to `url` without a credential (redeeming an invite needs none).
pub(crate) async fn post_anonymous(url: &str, body: &Value) -> Result<Value, Error> {
    call(http()?.post(url).json(body), None).await
}

/// Sends a request (with a bearer credential if given) and returns the JSON answer (`null` for
/// an empty body), or the server's problem as [`Error::Refused`].
async fn call(mut request: reqwest::RequestBuilder, bearer: Option<&str>) -> Result<Value, Error> {
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let (status, url) = (response.status(), response.url().path().to_owned());
    let text = response
        .text()
        .await
        .map_err(|e| Error::Transport(format!("{url}: {e}")))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(Error::Refused {
            status: status.as_u16(),
            code: value["code"].as_str().unwrap_or_default().to_owned(),
            detail: value["detail"].as_str().unwrap_or(&text).to_owned(),
        });
    }
    Ok(value)
}
