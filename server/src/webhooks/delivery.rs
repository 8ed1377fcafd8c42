//! The sender: one task per node that drains the webhook outbox. It takes due rows from the
//! store (each the oldest pending row of its room, leased to this node so no other node sends
//! it at the same time), POSTs each with its signature, and records how it went: delivered,
//! tried again later (doubling waits with jitter), or given up after `max_attempts` or
//! `max_age_secs`. Attempts for different rooms run side by side; a room's next event waits
//! for the one before it. Never on a room's task; a receiver that hangs costs one slot until
//! `timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::clock::{Backoff, Clock, jittered};
use crate::config::{WebhookSettings, signing_key};
use crate::control::{
    ClaimedWebhook, ControlError, Store, WebhookAttempt, error_chain, random_token,
};
use crate::metrics::Metrics;

/// How often the outbox is looked at when nothing woke the sender: rows other nodes wrote,
/// and retries that came due.
const POLL: Duration = Duration::from_millis(500);

/// The most of a receiver's answer read (to report it); the rest is not read.
const MAX_ANSWER_BYTES: usize = 1024;

/// How often delivered rows older than `keep_delivered_secs` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The handle the rest of the server has: wakes the sender when rows were written.
#[derive(Clone)]
pub struct Sender {
    wake: Arc<Notify>,
}

impl Sender {
    /// Starts the sender for `settings` (which must have a URL and a valid secret).
    pub fn start(
        store: Store,
        settings: WebhookSettings,
        metrics: Metrics,
    ) -> anyhow::Result<(Sender, tokio::task::JoinHandle<()>)> {
        let url = settings
            .url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("webhooks: no url"))?;
        let key = signing_key(settings.secret.as_deref().unwrap_or_default())
            .map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("stoa/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let wake = Arc::new(Notify::new());
        let worker = Worker {
            store,
            // Attempts, leases and retries are real time, whatever clock the rooms run on.
            clock: Clock::system(),
            http,
            url,
            key: Arc::new(key),
            owner: format!("sender_{}", random_token(9)),
            settings,
            metrics,
            wake: wake.clone(),
        };
        Ok((Sender { wake }, tokio::spawn(worker.run())))
    }

    /// Rows were written: look at the outbox now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

#[derive(Clone)]
struct Worker {
    store: Store,
    clock: Clock,
    http: reqwest::Client,
    url: String,
    key: Arc<Vec<u8>>,
    /// This sender's name on the rows it leases.
    owner: String,
    settings: WebhookSettings,
    metrics: Metrics,
    wake: Arc<Notify>,
}

impl Worker {
    /// A lease outlives any attempt (its timeout) by a margin for recording the outcome, so a
    /// row is never taken by another node while this one may still be sending it; a node that
    /// died holding one delays its room's events by that much.
    fn lease_ms(&self) -> i64 {
        (self.settings.timeout_ms * 2 + 5_000) as i64
    }

    async fn run(self) {
        let mut in_flight = JoinSet::new();
        let mut store_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune += PRUNE_EVERY;
                let keep = (self.settings.keep_delivered_secs * 1000) as i64;
                if let Err(e) = self.store.prune_webhooks(self.clock.now_ms() - keep).await {
                    tracing::warn!(error = %e, "could not prune delivered webhooks");
                }
            }
            let free = self.settings.concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                match self
                    .store
                    .claim_webhooks(
                        self.owner.clone(),
                        self.clock.now_ms(),
                        self.lease_ms(),
                        free as u32,
                    )
                    .await
                {
                    Ok(claimed) => {
                        store_backoff.reset();
                        let took = claimed.len();
                        for row in claimed {
                            in_flight.spawn(self.clone().attempt(row));
                        }
                        // Every free slot filled: there may be more due right away.
                        if took == free {
                            if let Some(done) = in_flight.join_next().await {
                                log_panic(done);
                            }
                            continue;
                        }
                    }
                    Err(e) => {
                        log_store_error(&e, "could not read the webhook outbox");
                        tokio::time::sleep(store_backoff.next_wait()).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                Some(done) = in_flight.join_next() => log_panic(done),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(jittered(POLL)) => {}
            }
        }
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
                if attempts >= self.settings.max_attempts
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
                    self.wake.notify_one();
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

    /// POSTs the row: the status of a 2xx answer, or the status (if any) and why not.
    async fn post(&self, row: &ClaimedWebhook) -> Result<u16, (Option<u16>, String)> {
        let timestamp = self.clock.now_ms() / 1000;
        let signature = super::signature(&self.key, &row.id, timestamp, &row.body);
        let sent = self
            .http
            .post(&self.url)
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
