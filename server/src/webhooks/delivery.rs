//! The sender: one task per node that drains the webhook outbox, in two lanes with their own
//! attempts in flight: rows for the server's endpoint (when `[webhooks] url` is set) and rows
//! for rooms' own endpoints, so a room's failing receiver never holds the server's. Each lane
//! takes due rows from the store (each the oldest pending row of its room for its endpoint,
//! leased to this node so no other node sends it at the same time), POSTs each with its
//! signature, and records how it went: delivered, tried again later (doubling waits with
//! jitter), or given up after `max_attempts` or `max_age_secs`. Attempts for different rooms
//! run side by side; a room's next event for an endpoint waits for the one before it. Never on
//! a room's task; a receiver that hangs costs one slot of its lane until `timeout_ms`. Rooms'
//! endpoints are reached only at addresses the operator allows (`address.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::address::{AddressPolicy, GuardedResolver};
use crate::clock::{Backoff, Clock, jittered};
use crate::config::{WebhookSettings, signing_key};
use crate::control::{
    ClaimedWebhook, ControlError, Destination, Store, WebhookAttempt, WebhookLane, error_chain,
    random_token,
};
use crate::metrics::Metrics;

/// How often a shared store's outbox is looked at when nothing woke the sender: rows another
/// node wrote and could not send (it died). Rows written on this node wake the sender, and it
/// sleeps until the next row it knows of is due; with SQLite nothing else writes, so an idle
/// sender does not touch the store at all.
const SHARED_POLL: Duration = Duration::from_secs(5);

/// The least a lane waits for a row the store says is due but it did not get.
const MIN_WAIT_MS: i64 = 50;

/// The most of a receiver's answer read (to report it); the rest is not read.
const MAX_ANSWER_BYTES: usize = 1024;

/// How often delivered rows older than `keep_delivered_secs` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Starts the sender for `settings`: the rooms' lane always, the server's lane when it has a
/// URL (which must then have a valid secret). It runs until the task is aborted.
pub fn start(
    store: Store,
    settings: WebhookSettings,
    metrics: Metrics,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let owner = format!("sender_{}", random_token(9));
    let extra_roots = match &settings.tls_ca {
        Some(path) => ca_certificates(path)?,
        None => Vec::new(),
    };
    // A machine without root certificates (no ca-certificates) still runs the server: its
    // https:// receivers are then verified against `tls_ca` alone.
    let system_roots = !rustls_native_certs::load_native_certs().certs.is_empty();
    if !system_roots {
        tracing::warn!(
            tls_ca = extra_roots.len(),
            "the system has no root certificates (install ca-certificates): https:// webhook \
             receivers are verified against [webhooks] tls_ca only"
        );
    }
    let client = |policy: Option<Arc<AddressPolicy>>| {
        let builder = if system_roots {
            crate::http_client::builder().tls_certs_merge(extra_roots.clone())
        } else {
            crate::http_client::builder().tls_certs_only(extra_roots.clone())
        };
        let builder = builder
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("stoa/", env!("CARGO_PKG_VERSION")));
        match policy {
            // Through no proxy: the addresses connected to are the ones checked.
            Some(policy) => builder
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver(policy))),
            None => builder,
        }
        .build()
    };
    let server_lane = match &settings.url {
        Some(url) => {
            let key = signing_key(settings.secret.as_deref().unwrap_or_default())
                .map_err(anyhow::Error::msg)?;
            Some(Lane::Server {
                url: url.clone(),
                key: Arc::new(key),
            })
        }
        None => None,
    };
    let policy = Arc::new(AddressPolicy::new(&settings));
    let worker = |lane: Lane, http: reqwest::Client| Worker {
        store: store.clone(),
        // Attempts, leases and retries are real time, whatever clock the rooms run on.
        clock: Clock::system(),
        http,
        lane: Arc::new(lane),
        owner: owner.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        finished: Arc::new(Notify::new()),
    };
    let rooms = worker(
        Lane::Rooms {
            policy: policy.clone(),
        },
        client(Some(policy))?,
    );
    let server = match server_lane {
        Some(lane) => Some(worker(lane, client(None)?)),
        None => None,
    };
    Ok(tokio::spawn(async move {
        match server {
            Some(server) => {
                tokio::join!(server.run(), rooms.run());
            }
            None => rooms.run().await,
        }
    }))
}

/// What one lane sends to.
enum Lane {
    /// The server's `[webhooks] url`, signed with its secret.
    Server { url: String, key: Arc<Vec<u8>> },
    /// Each row's room endpoint, at addresses `policy` allows.
    Rooms { policy: Arc<AddressPolicy> },
}

impl Lane {
    fn which(&self) -> WebhookLane {
        match self {
            Lane::Server { .. } => WebhookLane::Server,
            Lane::Rooms { .. } => WebhookLane::Rooms,
        }
    }

    fn concurrency(&self, settings: &WebhookSettings) -> usize {
        match self {
            Lane::Server { .. } => settings.concurrency,
            Lane::Rooms { .. } => settings.room_concurrency,
        }
    }
}

#[derive(Clone)]
struct Worker {
    store: Store,
    clock: Clock,
    http: reqwest::Client,
    lane: Arc<Lane>,
    /// This sender's name on the rows it leases.
    owner: String,
    settings: WebhookSettings,
    metrics: Metrics,
    /// One of this lane's attempts was recorded: its room's next row may be due.
    finished: Arc<Notify>,
}

impl Worker {
    /// A lease outlives any attempt (its timeout) by a margin for recording the outcome, so a
    /// row is never taken by another node while this one may still be sending it; a node that
    /// died holding one delays its room's events by that much.
    fn lease_ms(&self) -> i64 {
        (self.settings.timeout_ms * 2 + 5_000) as i64
    }

    async fn run(self) {
        let mut outbox = self.store.watch_outbox();
        let mut in_flight = JoinSet::new();
        let mut store_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut next_prune = tokio::time::Instant::now();
        // When the earliest row not taken yet is due, as last read.
        let mut next_due: Option<tokio::time::Instant> = None;
        loop {
            // Rows written from here on wake the lane again.
            outbox.borrow_and_update();
            // One lane prunes for both.
            let prunes = self.lane.which() == WebhookLane::Rooms;
            if prunes && tokio::time::Instant::now() >= next_prune {
                next_prune += PRUNE_EVERY;
                let keep = (self.settings.keep_delivered_secs * 1000) as i64;
                if let Err(e) = self.store.prune_webhooks(self.clock.now_ms() - keep).await {
                    tracing::warn!(error = %e, "could not prune delivered webhooks");
                }
            }
            let concurrency = self.lane.concurrency(&self.settings);
            let free = concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                match self.claim(free).await {
                    Ok((rows, next_due_ms)) => {
                        store_backoff.reset();
                        let took = rows.len();
                        for row in rows {
                            in_flight.spawn(self.clone().attempt(row));
                        }
                        // Every free slot filled: there may be more due right away.
                        if took == free {
                            if let Some(done) = in_flight.join_next().await {
                                log_panic(done);
                            }
                            continue;
                        }
                        // A row due already but not taken is being claimed by another
                        // node right now: looked at again a little later, not in a spin.
                        next_due = next_due_ms.map(|at| {
                            let wait = (at - self.clock.now_ms()).max(MIN_WAIT_MS) as u64;
                            tokio::time::Instant::now() + Duration::from_millis(wait)
                        });
                    }
                    Err(e) => {
                        log_store_error(&e, "could not read the webhook outbox");
                        tokio::time::sleep(store_backoff.next_wait()).await;
                        continue;
                    }
                }
            }
            let poll = self
                .store
                .is_shared()
                .then(|| tokio::time::Instant::now() + jittered(SHARED_POLL));
            let wake_at = [next_due, poll, prunes.then_some(next_prune)]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                Some(done) = in_flight.join_next() => log_panic(done),
                _ = self.finished.notified() => {}
                _ = outbox.changed() => {}
                _ = sleep_until(wake_at) => {}
            }
        }
    }

    /// Takes up to `free` due rows; when fewer were due, also when the next one will be.
    async fn claim(&self, free: usize) -> Result<(Vec<ClaimedWebhook>, Option<i64>), ControlError> {
        let rows = self
            .store
            .claim_webhooks(
                self.owner.clone(),
                self.clock.now_ms(),
                self.lease_ms(),
                free as u32,
                self.lane.which(),
            )
            .await?;
        if rows.len() == free {
            return Ok((rows, None));
        }
        let next_due_ms = self.store.next_webhook_due(self.lane.which()).await?;
        Ok((rows, next_due_ms))
    }

    /// One attempt at one row, and its outcome recorded.
    async fn attempt(self, row: ClaimedWebhook) {
        let outcome = self.post(&row).await;
        let attempts = row.attempts + 1;
        let now = self.clock.now_ms();
        let attempt = match outcome {
            Ok(status) => {
                self.metrics.webhook_attempt("delivered");
                WebhookAttempt::Delivered { status }
            }
            Err((status, error)) => {
                let age_ms = now - row.created_at_ms;
                if row.destination == Destination::RoomGone
                    || attempts >= self.settings.max_attempts
                    || age_ms >= (self.settings.max_age_secs * 1000) as i64
                {
                    self.metrics.webhook_attempt("given_up");
                    tracing::warn!(id = %row.id, attempts, %error,
                        "a webhook was not delivered and is given up");
                    WebhookAttempt::GivenUp { status, error }
                } else {
                    self.metrics.webhook_attempt("failed");
                    let wait = self.retry_wait(attempts);
                    tracing::info!(id = %row.id, attempts, %error, retry_in = ?wait,
                        "a webhook was not delivered; it will be tried again");
                    WebhookAttempt::Retry {
                        status,
                        error,
                        next_at_ms: now + wait.as_millis() as i64,
                    }
                }
            }
        };
        // The outcome must be recorded, or the row would be sent again after its lease: the
        // store is tried until it answers (while the lease holds, nobody else sends it).
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self
                .store
                .finish_webhook(row.seq, self.owner.clone(), attempt.clone(), now)
                .await
            {
                Ok(true) => {
                    // The room's next row may be due now.
                    self.finished.notify_one();
                    return;
                }
                Ok(false) => {
                    tracing::warn!(id = %row.id, "a webhook's lease ended before its outcome was recorded");
                    return;
                }
                Err(e) => {
                    log_store_error(&e, "could not record a webhook's outcome");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        }
    }

    /// The wait before attempt `attempts + 1`: `retry_first_ms` doubling up to `retry_max_ms`,
    /// jittered.
    fn retry_wait(&self, attempts: u32) -> Duration {
        let first = Duration::from_millis(self.settings.retry_first_ms);
        let max = Duration::from_millis(self.settings.retry_max_ms);
        let doubled = first.saturating_mul(1u32 << (attempts - 1).min(20));
        jittered(doubled.min(max))
    }

    /// Where the row goes and the key that signs it, or why it cannot be sent.
    fn target(&self, row: &ClaimedWebhook) -> Result<(String, Arc<Vec<u8>>), String> {
        match (&*self.lane, &row.destination) {
            (Lane::Server { url, key }, Destination::Server) => Ok((url.clone(), key.clone())),
            (Lane::Rooms { policy }, Destination::Room { url, secret }) => {
                // Checked again: the operator's rule may have changed since it was set.
                policy
                    .check_url(url)
                    .map_err(|refused| refused.detail().to_owned())?;
                let key = signing_key(secret).map_err(str::to_owned)?;
                Ok((url.clone(), Arc::new(key)))
            }
            (_, Destination::RoomGone) => Err("the room's endpoint was deleted".into()),
            _ => Err("a row of the other lane".into()),
        }
    }

    /// POSTs the row: the status of a 2xx answer, or the status (if any) and why not.
    async fn post(&self, row: &ClaimedWebhook) -> Result<u16, (Option<u16>, String)> {
        let (url, key) = self.target(row).map_err(|why| (None, why))?;
        let timestamp = self.clock.now_ms() / 1000;
        let signature = super::signature(&key, &row.id, timestamp, &row.body);
        let sent = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &row.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.body.clone())
            .send()
            .await;
        let mut answer = match sent {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => return Err((None, "timed out".into())),
            Err(e) => return Err((None, format!("could not send: {}", error_chain(&e)))),
        };
        let status = answer.status().as_u16();
        // A bounded read of what the receiver said, for the operator; the rest is dropped.
        let mut said = Vec::new();
        while said.len() < MAX_ANSWER_BYTES {
            match answer.chunk().await {
                Ok(Some(chunk)) => said.extend_from_slice(&chunk),
                _ => break,
            }
        }
        said.truncate(MAX_ANSWER_BYTES);
        if answer.status().is_success() {
            Ok(status)
        } else {
            let said = String::from_utf8_lossy(&said);
            Err((Some(status), format!("answered {status}: {}", said.trim())))
        }
    }
}

/// The certificates in the PEM file `[webhooks] tls_ca`; an error names the file.
fn ca_certificates(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read webhooks.tls_ca {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow::anyhow!("webhooks.tls_ca {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("webhooks.tls_ca {} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_store_error(e: &ControlError, what: &str) {
    match e {
        ControlError::Unavailable(_) => tracing::warn!(error = %e, "{what}"),
        _ => tracing::error!(error = %e, "{what}"),
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a webhook attempt failed unexpectedly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_ca_that_cannot_be_used_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ca_certificates(&missing).unwrap_err().to_string();
        assert!(err.starts_with("cannot read webhooks.tls_ca"), "{err}");
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = ca_certificates(&empty).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        // And the sender does not start with it.
        let settings = WebhookSettings {
            tls_ca: Some(empty),
            ..WebhookSettings::default()
        };
        let store = Store::open_in_memory().unwrap();
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                start(store, settings, Metrics::default()).map(|task| task.abort())
            });
        assert!(started.is_err());
    }
}
