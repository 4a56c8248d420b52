//! Webhooks: one ordered queue per prediction, `logs` events throttled, the terminal `completed`
//! event retried with backoff so a receiver that is briefly down still gets it exactly once.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    Start,
    Output,
    Logs,
    Completed,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 4] = [Self::Start, Self::Output, Self::Logs, Self::Completed];
}

/// Settings shared by every prediction's webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `COG_THROTTLE_RESPONSE_INTERVAL` seconds between non-terminal `logs` webhooks (0.5).
    pub throttle: Duration,
    /// `WEBHOOK_AUTH_TOKEN`, sent as a bearer token.
    pub auth_token: Option<String>,
    pub retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn from_env() -> Self {
        let throttle = std::env::var("COG_THROTTLE_RESPONSE_INTERVAL")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v >= 0.0)
            .unwrap_or(0.5);
        Self {
            throttle: Duration::from_secs_f64(throttle),
            auth_token: std::env::var("WEBHOOK_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            retries: 12,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            // `COG_WEBHOOK_TIMEOUT` seconds for one delivery attempt (30).
            timeout: std::env::var("COG_WEBHOOK_TIMEOUT")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v > 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_secs(30)),
        }
    }
}

/// W3C trace headers copied from the request that created the prediction.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

struct Message {
    event: WebhookEvent,
    payload: Value,
}

/// Sends one prediction's webhooks in order on a background task.
pub struct WebhookSender {
    tx: mpsc::UnboundedSender<Message>,
    filter: HashSet<WebhookEvent>,
    throttle: Duration,
    last_logs: Option<Instant>,
}

impl WebhookSender {
    pub fn spawn(
        url: String,
        filter: HashSet<WebhookEvent>,
        config: &WebhookConfig,
        trace: TraceContext,
        client: reqwest::Client,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let throttle = config.throttle;
        tracker.spawn(deliver(url, rx, config.clone(), trace, client));
        Self {
            tx,
            filter,
            throttle,
            last_logs: None,
        }
    }

    /// A non-terminal event; `logs` events closer than the throttle interval are dropped (the next
    /// webhook carries the whole state anyway).
    pub fn send(&mut self, event: WebhookEvent, payload: Value) {
        if !self.filter.contains(&event) {
            return;
        }
        if event == WebhookEvent::Logs {
            let now = Instant::now();
            if self
                .last_logs
                .is_some_and(|t| now.duration_since(t) < self.throttle)
            {
                return;
            }
            self.last_logs = Some(now);
        }
        let _ = self.tx.send(Message { event, payload });
    }

    /// The terminal event; consumes the sender so it can only happen once.
    pub fn send_terminal(self, payload: Value) {
        if self.filter.contains(&WebhookEvent::Completed) {
            let _ = self.tx.send(Message {
                event: WebhookEvent::Completed,
                payload,
            });
        }
    }
}

async fn deliver(
    url: String,
    mut rx: mpsc::UnboundedReceiver<Message>,
    config: WebhookConfig,
    trace: TraceContext,
    client: reqwest::Client,
) {
    while let Some(msg) = rx.recv().await {
        let terminal = msg.event == WebhookEvent::Completed;
        let attempts = if terminal { config.retries.max(1) } else { 1 };
        for attempt in 0..attempts {
            let mut req = client
                .post(&url)
                .timeout(config.timeout)
                .header("content-type", "application/json")
                .body(msg.payload.to_string());
            if let Some(token) = &config.auth_token {
                req = req.bearer_auth(token);
            }
            if let Some(tp) = &trace.traceparent {
                req = req.header("traceparent", tp);
            }
            if let Some(ts) = &trace.tracestate {
                req = req.header("tracestate", ts);
            }
            let retry = match req.send().await {
                Ok(resp) if resp.status().is_success() => false,
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    tracing::warn!(event = ?msg.event, code, "webhook answered with an error");
                    matches!(code, 429 | 500 | 502 | 503 | 504)
                }
                Err(e) => {
                    tracing::warn!(event = ?msg.event, error = %e, "webhook failed");
                    true
                }
            };
            if !retry || attempt + 1 == attempts {
                if retry {
                    tracing::error!(event = ?msg.event, "webhook given up after {attempts} attempts");
                }
                break;
            }
            let backoff = config
                .backoff_base
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(config.backoff_cap);
            tokio::time::sleep(backoff).await;
        }
        if terminal {
            break;
        }
    }
}
