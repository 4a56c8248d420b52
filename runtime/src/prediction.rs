//! One prediction's state: status, logs, metrics, output, timestamps, and the events (SSE and
//! webhooks) that every change of it produces. The JSON snapshot built here is the single source
//! for sync responses, webhook payloads and the SSE `completed` event.

use crate::validate::FieldError;
use crate::webhook::{WebhookEvent, WebhookSender};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Starting,
    Processing,
    Succeeded,
    Canceled,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Canceled => "canceled",
            Self::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Canceled | Self::Failed)
    }
}

/// An SSE event (`Accept: text/event-stream`).
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Start {
        id: String,
        status: &'static str,
    },
    Output {
        chunk: Value,
        index: u64,
    },
    Log {
        data: String,
    },
    Metric {
        name: String,
        value: Value,
    },
    /// The prediction ended; its payload is the prediction's final snapshot, built by whoever
    /// sends the event (most predictions have no SSE client, so none is built for them).
    Completed,
}

impl StreamEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::Output { .. } => "output",
            Self::Log { .. } => "log",
            Self::Metric { .. } => "metric",
            Self::Completed { .. } => "completed",
        }
    }

    pub fn data(&self) -> Value {
        match self {
            Self::Start { id, status } => json!({"id": id, "status": status}),
            Self::Output { chunk, index } => json!({"chunk": chunk, "index": index}),
            Self::Log { data } => json!({"source": "stdout", "data": data}),
            Self::Metric { name, value } => {
                json!({"name": name, "value": value, "mode": "replace"})
            }
            Self::Completed => Value::Null,
        }
    }
}

/// Events kept for subscribers that arrive late (a repeated PUT with `Accept: text/event-stream`).
const HISTORY_LIMIT: usize = 4096;

struct State {
    status: Status,
    input: Value,
    output: Option<Value>,
    chunks: Vec<Value>,
    error: Option<String>,
    logs: String,
    metrics: Map<String, Value>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    started: Option<Instant>,
    predict_time: Option<f64>,
    history: VecDeque<Arc<StreamEvent>>,
    /// Made by the first SSE subscriber: most predictions have none, and a broadcast channel's
    /// buffer is the largest allocation a prediction would otherwise make.
    events: Option<broadcast::Sender<Arc<StreamEvent>>>,
    webhook: Option<WebhookSender>,
    /// Set when the prediction failed on its input: the 422 `detail` a sync client gets.
    invalid: Option<Value>,
}

/// A prediction shared by its task, its HTTP handlers and its `PredictContext`.
pub struct Prediction {
    pub id: String,
    pub cancel: CancellationToken,
    state: Mutex<State>,
    done: watch::Sender<bool>,
}

/// What `PredictContext` writes through.
pub type PredictionEvents = Arc<Prediction>;

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Prediction {
    pub fn new(id: String, input: Value, webhook: Option<WebhookSender>) -> Arc<Self> {
        let (done, _) = watch::channel(false);
        Arc::new(Self {
            id,
            cancel: CancellationToken::new(),
            state: Mutex::new(State {
                status: Status::Starting,
                input,
                output: None,
                chunks: Vec::new(),
                error: None,
                logs: String::new(),
                metrics: Map::new(),
                created_at: Utc::now(),
                started_at: None,
                completed_at: None,
                started: None,
                predict_time: None,
                history: VecDeque::new(),
                events: None,
                webhook,
                invalid: None,
            }),
            done,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: &mut State, event: StreamEvent) {
        let event = Arc::new(event);
        if state.history.len() == HISTORY_LIMIT {
            state.history.pop_front();
        }
        state.history.push_back(event.clone());
        if let Some(tx) = &state.events {
            let _ = tx.send(event);
        }
    }

    fn snapshot_locked(&self, s: &State) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("status".into(), json!(s.status.as_str()));
        out.insert("input".into(), s.input.clone());
        if let Some(output) = &s.output {
            out.insert("output".into(), output.clone());
        } else if !s.chunks.is_empty() {
            out.insert("output".into(), Value::Array(s.chunks.clone()));
        }
        if let Some(error) = &s.error {
            out.insert("error".into(), json!(error));
        }
        out.insert("logs".into(), json!(s.logs));
        let mut metrics = s.metrics.clone();
        if let Some(t) = s.predict_time {
            metrics.insert("predict_time".into(), json!(t));
        }
        out.insert("metrics".into(), Value::Object(metrics));
        out.insert("created_at".into(), json!(timestamp(s.created_at)));
        if let Some(t) = s.started_at {
            out.insert("started_at".into(), json!(timestamp(t)));
        }
        if let Some(t) = s.completed_at {
            out.insert("completed_at".into(), json!(timestamp(t)));
        }
        Value::Object(out)
    }

    /// The prediction as JSON, as responses and webhooks carry it.
    pub fn snapshot(&self) -> Value {
        self.snapshot_locked(&self.lock())
    }

    /// The 422 `detail` list when the prediction failed on its input.
    pub fn invalid_detail(&self) -> Option<Value> {
        self.lock().invalid.clone()
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    fn webhook(&self, s: &mut State, event: WebhookEvent) {
        if s.webhook.is_some() {
            let payload = self.snapshot_locked(s);
            if let Some(w) = s.webhook.as_mut() {
                w.send(event, payload);
            }
        }
    }

    pub fn set_processing(&self) {
        let mut s = self.lock();
        s.status = Status::Processing;
        s.started_at = Some(Utc::now());
        s.started = Some(Instant::now());
        let id = self.id.clone();
        self.publish(
            &mut s,
            StreamEvent::Start {
                id,
                status: "processing",
            },
        );
        self.webhook(&mut s, WebhookEvent::Start);
    }

    pub fn log(&self, line: &str) {
        tracing::info!(prediction_id = %self.id, "{line}");
        let mut s = self.lock();
        s.logs.push_str(line);
        s.logs.push('\n');
        self.publish(
            &mut s,
            StreamEvent::Log {
                data: format!("{line}\n"),
            },
        );
        self.webhook(&mut s, WebhookEvent::Logs);
    }

    pub fn metric(&self, name: &str, value: Value) {
        let mut s = self.lock();
        s.metrics.insert(name.to_string(), value.clone());
        self.publish(
            &mut s,
            StreamEvent::Metric {
                name: name.to_string(),
                value,
            },
        );
    }

    pub fn output_chunk(&self, chunk: Value) {
        let mut s = self.lock();
        let index = s.chunks.len() as u64;
        s.chunks.push(chunk.clone());
        self.publish(&mut s, StreamEvent::Output { chunk, index });
        self.webhook(&mut s, WebhookEvent::Output);
    }

    /// Ends the prediction: records the outcome, emits `completed`, sends the terminal webhook and
    /// wakes whoever waits. Later calls are ignored, so there is exactly one terminal state.
    pub fn finish(&self, outcome: Outcome) {
        let mut s = self.lock();
        if s.status.is_terminal() {
            return;
        }
        let (status, output, error) = match outcome {
            Outcome::Succeeded(output) => (Status::Succeeded, Some(output), None),
            Outcome::Failed(error) => (Status::Failed, None, Some(error)),
            Outcome::Canceled => (Status::Canceled, None, None),
            Outcome::Invalid(errors) => {
                let msg = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.msg))
                    .collect::<Vec<_>>()
                    .join("; ");
                s.invalid = Some(Value::Array(
                    errors.iter().map(FieldError::to_json).collect(),
                ));
                (Status::Failed, None, Some(msg))
            }
        };
        s.status = status;
        s.output = output;
        s.error = error;
        s.completed_at = Some(Utc::now());
        s.predict_time = Some(s.started.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        self.publish(&mut s, StreamEvent::Completed);
        if let Some(w) = s.webhook.take() {
            w.send_terminal(self.snapshot_locked(&s));
        }
        drop(s);
        self.done.send_replace(true);
    }

    /// Resolves once the prediction is terminal.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Past events and a receiver for the next ones, taken atomically so none is missed.
    pub fn subscribe(&self) -> (Vec<Arc<StreamEvent>>, broadcast::Receiver<Arc<StreamEvent>>) {
        let mut s = self.lock();
        let rx = match &s.events {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(1024);
                s.events = Some(tx);
                rx
            }
        };
        (s.history.iter().cloned().collect(), rx)
    }
}

/// How a prediction ended.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    /// The input was refused after the prediction started (a file that is not an image...).
    Invalid(Vec<FieldError>),
    Canceled,
}
