//! Property test (proptest): arbitrary sequences of predictions that succeed, fail, panic inside
//! the predictor, or are cancelled, some of them two at a time. A panic fails only its own
//! prediction; the slot comes back; the server stays READY and keeps serving.
//! `FUZZ_CASES=N` runs N sequences.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use cog_runtime::http::routes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;
use tower::ServiceExt;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

#[derive(Debug, Clone, Copy)]
enum Act {
    Ok,
    Fail,
    Panic,
    /// Async with a delay, cancelled through the endpoint.
    Cancel,
    /// Two panicking predictions at once (both slots).
    PanicPair,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        3 => Just(Act::Ok),
        1 => Just(Act::Fail),
        3 => Just(Act::Panic),
        1 => Just(Act::Cancel),
        1 => Just(Act::PanicPair),
    ]
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = tokio::time::timeout(Duration::from_secs(20), app.clone().oneshot(req))
        .await
        .expect("request hung")
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(uri: &str, body: Value, prefer_async: bool) -> Request<Body> {
    let mut b = Request::post(uri).header("content-type", "application/json");
    if prefer_async {
        b = b.header("prefer", "respond-async");
    }
    b.body(Body::from(body.to_string())).unwrap()
}

async fn health(app: &Router) -> Value {
    call(
        app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await
    .1
}

/// Waits (bounded) until no prediction runs: health READY.
async fn wait_ready(app: &Router) -> Result<(), String> {
    for _ in 0..500 {
        if health(app).await["status"] == "READY" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("not READY after 5 s: {}", health(app).await))
}

async fn run(acts: Vec<Act>) -> Result<(), String> {
    // Panics in a row would make the server DEFUNCT by design (http_rules tests that); here every
    // panic must leave it serving.
    let service = common::ready_service_with(2, |c| c.defunct_after_panics = 0).await;
    let app = routes(service.clone());
    for (i, a) in acts.iter().enumerate() {
        let sync = |input: Value| post("/predictions", json!({ "input": input }), false);
        match a {
            Act::Ok => {
                let (c, b) = call(&app, sync(json!({"text": format!("ok{i}")}))).await;
                if c != StatusCode::OK || b["status"] != "succeeded" {
                    return Err(format!("step {i} ok: {c} {b}"));
                }
            }
            Act::Fail => {
                let (c, b) = call(&app, sync(json!({"text": "f", "fail": true}))).await;
                if c != StatusCode::OK || b["status"] != "failed" {
                    return Err(format!("step {i} fail: {c} {b}"));
                }
            }
            Act::Panic => {
                let (c, b) = call(&app, sync(json!({"text": "p", "panic": true}))).await;
                let err = b["error"].as_str().unwrap_or("");
                if c != StatusCode::OK
                    || b["status"] != "failed"
                    || !err.contains("probe panicked on purpose")
                {
                    return Err(format!("step {i} panic: {c} {b}"));
                }
            }
            Act::PanicPair => {
                let a1 = call(
                    &app,
                    sync(json!({"text": "p", "panic": true, "delay": 0.05})),
                );
                let a2 = call(
                    &app,
                    sync(json!({"text": "p", "panic": true, "delay": 0.05})),
                );
                let ((c1, b1), (c2, b2)) = tokio::join!(a1, a2);
                for (c, b) in [(c1, b1), (c2, b2)] {
                    // Both slots are free before the pair, so neither may be refused.
                    if c != StatusCode::OK || b["status"] != "failed" {
                        return Err(format!("step {i} panic pair: {c} {b}"));
                    }
                }
            }
            Act::Cancel => {
                let id = format!("c{i}");
                let (c, _) = call(
                    &app,
                    post(
                        "/predictions",
                        json!({"id": id, "input": {"text": "c", "delay": 10}}),
                        true,
                    ),
                )
                .await;
                if c != StatusCode::ACCEPTED {
                    return Err(format!("step {i} cancel start: {c}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let (c, _) = call(
                    &app,
                    Request::post(format!("/predictions/{id}/cancel"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
                if c != StatusCode::OK {
                    return Err(format!("step {i} cancel: {c}"));
                }
                // The cancel is asynchronous: wait (bounded) until the prediction has ended and
                // given its slot back (READY only says that one slot is free).
                let mut n = 0;
                while service.get(&id).is_some() {
                    n += 1;
                    if n > 500 {
                        return Err(format!(
                            "step {i}: cancelled prediction still running after 5 s"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        wait_ready(&app)
            .await
            .map_err(|e| format!("after step {i} ({a:?}): {e}"))?;
    }
    let (c, b) = call(
        &app,
        post("/predictions", json!({"input": {"text": "last"}}), false),
    )
    .await;
    if c != StatusCode::OK || b["output"]["text"] != "last" {
        return Err(format!("final prediction: {c} {b}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn panics_fail_only_their_prediction(acts in prop::collection::vec(act(), 1..16)) {
        rt().block_on(run(acts)).map_err(TestCaseError::fail)?;
    }
}
