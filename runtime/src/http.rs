//! The HTTP layer: Cog's routes over [`PredictionService`]. Handlers translate requests into
//! service calls and service results into Cog's status codes and bodies; nothing else lives here.

use crate::prediction::{Prediction, StreamEvent};
use crate::service::{PredictionRequest, PredictionService, SubmitError, PROTOCOL_VERSION};
use crate::webhook::{TraceContext, WebhookEvent};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (inline base64 files make bodies big).
pub const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;

type Svc = State<Arc<PredictionService>>;

pub fn routes(service: Arc<PredictionService>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health-check", get(health_check))
        .route("/openapi.json", get(openapi))
        .route("/shutdown", post(shutdown))
        .route("/predictions", post(create))
        .route("/predictions/{id}", put(create_idempotent))
        .route("/predictions/{id}/cancel", post(cancel))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

/// The body of `POST /predictions` and `PUT /predictions/{id}`; other keys are ignored.
#[derive(Debug, Deserialize)]
struct Body {
    id: Option<String>,
    #[serde(default = "empty_object", deserialize_with = "null_as_empty")]
    input: Value,
    webhook: Option<String>,
    webhook_events_filter: Option<Vec<WebhookEvent>>,
    #[serde(default)]
    context: Option<HashMap<String, String>>,
}

fn empty_object() -> Value {
    json!({})
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(if v.is_null() { empty_object() } else { v })
}

/// `pred_` + hex of unix nanoseconds, as coglet names predictions; strictly increasing so two
/// requests in the same nanosecond still get different ids.
fn new_prediction_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return format!("pred_{next:x}"),
            Err(actual) => prev = actual,
        }
    }
}

async fn index() -> Json<Value> {
    Json(json!({
        "cog_version": PROTOCOL_VERSION,
        "docs_url": "/docs",
        "openapi_url": "/openapi.json",
        "shutdown_url": "/shutdown",
        "healthcheck_url": "/health-check",
        "predictions_url": "/predictions",
        "predictions_idempotent_url": "/predictions/{prediction_id}",
        "predictions_cancel_url": "/predictions/{prediction_id}/cancel",
    }))
}

async fn health_check(State(service): Svc) -> Json<Value> {
    Json(service.health())
}

async fn openapi(State(service): Svc) -> Json<Value> {
    Json(service.schema_document().clone())
}

async fn shutdown(State(service): Svc) -> Json<Value> {
    service.trigger_shutdown();
    Json(json!({}))
}

async fn cancel(State(service): Svc, Path(id): Path<String>) -> Response {
    if service.cancel(&id) {
        (StatusCode::OK, Json(json!({}))).into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({}))).into_response()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
    Sse,
}

fn mode(headers: &HeaderMap) -> Mode {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept
        .split(',')
        .any(|p| p.trim().split(';').next() == Some("text/event-stream"))
    {
        Mode::Sse
    } else if headers.get("prefer").and_then(|v| v.to_str().ok()) == Some("respond-async") {
        Mode::Async
    } else {
        Mode::Sync
    }
}

fn trace(headers: &HeaderMap) -> TraceContext {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    TraceContext {
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
    }
}

fn error_body(code: StatusCode, msg: &str) -> Response {
    (code, Json(json!({"error": msg, "status": "failed"}))).into_response()
}

fn not_streaming() -> Response {
    (
        StatusCode::NOT_ACCEPTABLE,
        Json(json!({"error": "This model does not support streaming responses."})),
    )
        .into_response()
}

async fn create(State(service): Svc, headers: HeaderMap, body: Option<Json<Body>>) -> Response {
    let body = body.map(|Json(b)| b);
    let id = body
        .as_ref()
        .and_then(|b| b.id.clone())
        .unwrap_or_else(new_prediction_id);
    start(service, id, body, &headers).await
}

async fn create_idempotent(
    State(service): Svc,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Body>>,
) -> Response {
    let body = body.map(|Json(b)| b);
    if let Some(body_id) = body.as_ref().and_then(|b| b.id.as_ref()) {
        if body_id != &id {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"detail": [{
                    "loc": ["body", "id"],
                    "msg": "prediction ID must match the ID supplied in the URL",
                    "type": "value_error"
                }]})),
            )
                .into_response();
        }
    }
    if let Some(existing) = service.get(&id) {
        return match mode(&headers) {
            Mode::Sse if !service.def().streaming => not_streaming(),
            Mode::Sse => sse_response(existing, false),
            _ => (StatusCode::ACCEPTED, Json(existing.snapshot())).into_response(),
        };
    }
    start(service, id, body, &headers).await
}

async fn start(
    service: Arc<PredictionService>,
    id: String,
    body: Option<Body>,
    headers: &HeaderMap,
) -> Response {
    let mode = mode(headers);
    if mode == Mode::Sse && !service.def().streaming {
        return not_streaming();
    }
    let body = body.unwrap_or(Body {
        id: None,
        input: empty_object(),
        webhook: None,
        webhook_events_filter: None,
        context: None,
    });
    let request = PredictionRequest {
        id: id.clone(),
        input: body.input,
        webhook: body.webhook,
        webhook_events_filter: body.webhook_events_filter,
        context: body.context.unwrap_or_default(),
        trace: trace(headers),
    };
    let prediction = match service.submit(request) {
        Ok(p) => p,
        Err(SubmitError::NotReady) => {
            return error_body(
                StatusCode::SERVICE_UNAVAILABLE,
                "Setup has not finished yet. Wait until it has finished, or GET /health-check for status.",
            )
        }
        Err(SubmitError::ShuttingDown) => {
            return error_body(StatusCode::SERVICE_UNAVAILABLE, "The server is shutting down.")
        }
        Err(SubmitError::DuplicateId) => {
            return error_body(
                StatusCode::CONFLICT,
                "A prediction with this id is already running",
            )
        }
        Err(SubmitError::AtCapacity) => {
            return error_body(StatusCode::CONFLICT, "At capacity - all prediction slots busy")
        }
        Err(SubmitError::Invalid(errors)) => {
            let detail: Vec<Value> = errors.iter().map(|e| e.to_json()).collect();
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "detail": detail })),
            )
                .into_response();
        }
    };
    match mode {
        Mode::Async => (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "starting"})),
        )
            .into_response(),
        Mode::Sse => sse_response(prediction, true),
        Mode::Sync => {
            // Dropped when the client goes away: that cancels the prediction.
            let guard = CancelOnDrop(Some(prediction.clone()));
            prediction.wait().await;
            guard.disarm();
            match prediction.invalid_detail() {
                Some(detail) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({ "detail": detail })),
                )
                    .into_response(),
                None => (StatusCode::OK, Json(prediction.snapshot())).into_response(),
            }
        }
    }
}

/// Cancels a prediction whose only client disconnected before it finished.
struct CancelOnDrop(Option<Arc<Prediction>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if !p.status().is_terminal() {
                tracing::info!(prediction_id = %p.id, "client disconnected; cancelling");
                p.cancel.cancel();
            }
        }
    }
}

fn to_event(e: &StreamEvent) -> Event {
    Event::default().event(e.name()).data(e.data().to_string())
}

/// Streams a prediction's events; with `owner`, the stream is the prediction's only client and
/// closing it cancels the prediction.
fn sse_response(prediction: Arc<Prediction>, owner: bool) -> Response {
    let (history, rx) = prediction.subscribe();
    let guard = CancelOnDrop(owner.then(|| prediction.clone()));
    struct St {
        history: std::collections::VecDeque<Arc<StreamEvent>>,
        rx: tokio::sync::broadcast::Receiver<Arc<StreamEvent>>,
        prediction: Arc<Prediction>,
        done: bool,
        _guard: CancelOnDrop,
    }
    let state = St {
        history: history.into(),
        rx,
        prediction,
        done: false,
        _guard: guard,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let event = match st.history.pop_front() {
            Some(e) => e,
            None => match st.rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    st.done = true;
                    let ev = Event::default().event("error").data(
                        json!({"error": "SSE stream lagged; events were dropped", "skipped": skipped})
                            .to_string(),
                    );
                    return Some((Ok::<_, Infallible>(ev), st));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            },
        };
        let sse = match *event {
            StreamEvent::Completed => {
                st.done = true;
                Event::default()
                    .event("completed")
                    .data(st.prediction.snapshot().to_string())
            }
            ref other => to_event(other),
        };
        Some((Ok(sse), st))
    });
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}
