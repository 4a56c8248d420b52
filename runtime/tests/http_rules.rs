//! Every HTTP rule of the Cog protocol, exercised in-process through the real router.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use cog_runtime::http::routes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn json_of(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = send(app, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn app(slots: usize) -> Router {
    routes(common::ready_service(slots).await)
}

#[tokio::test]
async fn index_lists_the_endpoints() {
    let app = app(1).await;
    let (status, body) = json_of(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    for key in [
        "cog_version",
        "docs_url",
        "openapi_url",
        "shutdown_url",
        "healthcheck_url",
        "predictions_url",
        "predictions_idempotent_url",
        "predictions_cancel_url",
    ] {
        assert!(body.get(key).is_some(), "index lacks {key}: {body}");
    }
    assert_eq!(
        body["predictions_cancel_url"],
        "/predictions/{prediction_id}/cancel"
    );
}

#[tokio::test]
async fn health_reports_starting_then_ready_with_setup_logs() {
    let service = common::service(Some("wait:300"), 1);
    let app = routes(service.clone());
    let setup = tokio::spawn({
        let s = service.clone();
        async move { s.run_setup().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["status"], "STARTING");
    assert_eq!(h["setup"]["status"], "starting");
    assert!(h["setup"]["started_at"].is_string());
    let (status, body) = json_of(&app, post("/predictions", json!({"input": {"text": "x"}}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "failed");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("Setup has not finished yet"));
    setup.await.unwrap();
    let (status, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["status"], "READY");
    assert_eq!(h["setup"]["status"], "succeeded");
    assert!(h["setup"]["completed_at"].is_string());
    assert!(h["setup"]["logs"].as_str().unwrap().contains("probe setup"));
}

#[tokio::test]
async fn setup_failure_is_reported_with_its_reason() {
    let service = common::service(Some("fail"), 1);
    service.run_setup().await;
    let app = routes(service);
    let (_, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["status"], "SETUP_FAILED");
    assert_eq!(h["setup"]["status"], "failed");
    assert!(h["setup"]["logs"]
        .as_str()
        .unwrap()
        .contains("weights refused"));
    let (status, _) = json_of(&app, post("/predictions", json!({"input": {"text": "x"}}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn unhealthy_predictor_is_reported() {
    let service = common::service(Some("unhealthy"), 1);
    service.run_setup().await;
    let app = routes(service);
    let (_, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["status"], "UNHEALTHY");
    assert_eq!(h["user_healthcheck_error"], "probe is unwell");
}

#[tokio::test]
async fn openapi_document_has_cogs_layout() {
    let app = app(1).await;
    let (status, doc) = json_of(
        &app,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.2");
    assert_eq!(
        doc["paths"]["/predictions"]["post"]["x-cog-streaming"],
        true
    );
    let input = &doc["components"]["schemas"]["Input"];
    assert_eq!(input["required"], json!(["text"]));
    assert_eq!(input["properties"]["file"]["format"], "uri");
    assert_eq!(input["properties"]["token"]["x-cog-secret"], true);
    assert_eq!(input["properties"]["tag"]["maxLength"], 5);
    assert_eq!(input["properties"]["delay"]["x-order"], 1);
}

#[tokio::test]
async fn sync_prediction_succeeds_with_metrics_timestamps_and_masked_secret() {
    let app = app(1).await;
    let (status, body) = json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "hi", "token": "s3cret", "zzz": 1}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["output"]["text"], "hi");
    assert!(body["id"].as_str().unwrap().starts_with("pred_"));
    assert_eq!(body["input"]["token"], "**********");
    assert!(
        body["input"].get("zzz").is_none(),
        "unknown fields are dropped"
    );
    assert!(body["metrics"]["predict_time"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["metrics"]["chars"], 2);
    assert_eq!(body["logs"], "probe start\nprobe end\n");
    for k in ["created_at", "started_at", "completed_at"] {
        assert!(body[k].as_str().unwrap().ends_with('Z'), "{k}: {body}");
    }
    assert!(!body.to_string().contains("s3cret"));
}

#[tokio::test]
async fn invalid_inputs_get_422_naming_each_field() {
    let app = app(1).await;
    let (status, body) = json_of(
        &app,
        post("/predictions", json!({"input": {"delay": 99, "tag": ""}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = body["detail"].as_array().unwrap();
    let fields: Vec<&str> = detail
        .iter()
        .map(|d| d["loc"][2].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"delay") && fields.contains(&"tag") && fields.contains(&"text"),
        "{body}"
    );
    let missing = detail.iter().find(|d| d["loc"][2] == "text").unwrap();
    assert_eq!(missing["msg"], "Field required");
    assert_eq!(missing["type"], "value_error.missing");
    let delay = detail.iter().find(|d| d["loc"][2] == "delay").unwrap();
    assert_eq!(delay["msg"], "99 is greater than the maximum of 60");

    let (status, body) = json_of(&app, post("/predictions", json!({"input": {"text": 5}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["msg"], "5 is not of type \"string\"");

    let (status, body) = json_of(&app, post("/predictions", json!({"input": "x"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "input", "__root__"])
    );

    // The predictor's own check, before any slot is taken.
    let (status, body) = json_of(
        &app,
        post("/predictions", json!({"input": {"text": "reject"}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "input", "text"]));

    let (status, body) = json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "a", "file": "ftp://h/x"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"][2], "file");
}

#[tokio::test]
async fn malformed_bodies_get_400_415_413() {
    let app = app(1).await;
    let (status, _, body) = send(
        &app,
        Request::post("/predictions")
            .header("content-type", "application/json")
            .body(Body::from("{bad"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("Failed to parse the request body as JSON"));
    let (status, _, _) = send(
        &app,
        Request::post("/predictions")
            .header("content-type", "text/plain")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = vec![b' '; cog_runtime::http::MAX_BODY_BYTES + 16];
    let (status, _, _) = send(
        &app,
        Request::post("/predictions")
            .header("content-type", "application/json")
            .body(Body::from(big))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The server still serves.
    let (status, _) = json_of(&app, post("/predictions", json!({"input": {"text": "ok"}}))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn get_prediction_is_405_with_allow_put() {
    let app = app(1).await;
    let (status, headers, _) = send(
        &app,
        Request::get("/predictions/abc")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "PUT");
}

#[tokio::test]
async fn busy_slots_give_409_and_busy_health_and_cancel_ends_the_sync_request() {
    let app = app(1).await;
    let slow = tokio::spawn({
        let app = app.clone();
        async move {
            json_of(
                &app,
                post(
                    "/predictions",
                    json!({"id": "slow", "input": {"text": "a", "delay": 30}}),
                ),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["status"], "BUSY");
    let (status, body) = json_of(&app, post("/predictions", json!({"input": {"text": "b"}}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({"error": "At capacity - all prediction slots busy", "status": "failed"})
    );
    let (status, body) = json_of(&app, post("/predictions/slow/cancel", json!({}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "canceled");
    let (status, body) = json_of(&app, post("/predictions/slow/cancel", json!({}))).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({})));
}

#[tokio::test]
async fn async_prediction_returns_202_and_put_is_idempotent() {
    let app = app(1).await;
    let req = |body: Value| {
        Request::put("/predictions/p1")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, body) = json_of(&app, req(json!({"input": {"text": "a", "delay": 0.5}}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"id": "p1", "status": "starting"}));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A repeat while running answers with the running prediction, and starts nothing new.
    let (status, body) = json_of(&app, req(json!({"input": {"text": "a", "delay": 0.5}}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["id"], "p1");
    assert_eq!(body["status"], "processing");
    let (status, body) = json_of(&app, req(json!({"id": "other", "input": {"text": "a"}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["detail"][0]["msg"],
        "prediction ID must match the ID supplied in the URL"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    // After it ended the id is forgotten: the same PUT runs a new prediction.
    let (status, _) = json_of(&app, req(json!({"input": {"text": "a"}}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn failures_and_panics_fail_only_that_prediction() {
    let app = app(1).await;
    let (status, body) = json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "a", "fail": true}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"], "probe failed on purpose");
    let (status, body) = json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "a", "panic": true}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "failed");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("probe panicked on purpose"));
    let (_, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["status"], "READY");
    let (_, body) = json_of(
        &app,
        post("/predictions", json!({"input": {"text": "after"}})),
    )
    .await;
    assert_eq!(body["status"], "succeeded");
}

#[tokio::test]
async fn panics_are_reported_in_health_and_enough_in_a_row_make_it_defunct() {
    let app = routes(common::ready_service_with(1, |c| c.defunct_after_panics = 2).await);
    let health = |app: Router| async move {
        json_of(
            &app,
            Request::get("/health-check").body(Body::empty()).unwrap(),
        )
        .await
        .1
    };
    assert!(health(app.clone()).await.get("predictor_panics").is_none());
    let panic = || {
        Request::put("/predictions/p-1")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"input": {"text": "a", "panic": true}}).to_string(),
            ))
            .unwrap()
    };
    let (_, body) = json_of(&app, panic()).await;
    assert_eq!(body["status"], "failed", "{body}");
    let h = health(app.clone()).await;
    assert_eq!(h["status"], "READY");
    assert_eq!(h["predictor_panics"]["count"], 1);
    assert_eq!(h["predictor_panics"]["consecutive"], 1);
    assert_eq!(h["predictor_panics"]["last"]["prediction_id"], "p-1");
    assert!(h["predictor_panics"]["last"]["message"]
        .as_str()
        .unwrap()
        .contains("probe panicked on purpose"));
    // A prediction that returns normally resets the run of panics.
    let (_, body) = json_of(&app, post("/predictions", json!({"input": {"text": "ok"}}))).await;
    assert_eq!(body["status"], "succeeded");
    assert_eq!(
        health(app.clone()).await["predictor_panics"]["consecutive"],
        0
    );
    // Two in a row (the configured limit): DEFUNCT, and no new prediction is accepted.
    json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "a", "panic": true}}),
        ),
    )
    .await;
    assert_eq!(health(app.clone()).await["status"], "READY");
    json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "a", "panic": true}}),
        ),
    )
    .await;
    let h = health(app.clone()).await;
    assert_eq!(h["status"], "DEFUNCT", "{h}");
    assert_eq!(h["predictor_panics"]["count"], 3);
    let (status, _) = json_of(&app, post("/predictions", json!({"input": {"text": "ok"}}))).await;
    assert!(status.is_server_error(), "{status}");
}

#[tokio::test]
async fn file_inputs_and_outputs() {
    let app = app(1).await;
    let (status, body) = json_of(
        &app,
        post("/predictions", json!({"input": {"text": "hey", "file": "data:text/plain;base64,aGVsbG8=", "write_file": true}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["file_bytes"], 5);
    assert_eq!(body["output"]["file"], "data:text/plain;base64,aGV5");
    // The input echo keeps the URL as given, not the local path.
    assert_eq!(body["input"]["file"], "data:text/plain;base64,aGVsbG8=");
    // A file the predictor refuses after download: 422 naming the field.
    let (status, body) = json_of(
        &app,
        post(
            "/predictions",
            json!({"input": {"text": "x", "file": "data:text/plain;base64,YmFk"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"][2], "file");
}

#[tokio::test]
async fn sse_streams_events_and_non_streaming_is_406() {
    let app = app(1).await;
    let (status, headers, body) = send(
        &app,
        Request::post("/predictions")
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(Body::from(json!({"input": {"text": "yo"}}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(body).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        ["start", "log", "output", "metric", "log", "completed"],
        "{text}"
    );
    assert!(text.contains(r#"data: {"chunk":"yo","index":0}"#));
}

#[tokio::test]
async fn setup_timeout_fails_setup() {
    let mut config = cog_runtime::ServiceConfig::from_env(1);
    config.weights = Some("wait:3000".into());
    config.setup_timeout = Some(Duration::from_millis(200));
    let service = cog_runtime::PredictionService::new(common::def(), config).unwrap();
    service.run_setup().await;
    let app = routes(service);
    let (_, h) = json_of(
        &app,
        Request::get("/health-check").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["status"], "SETUP_FAILED");
    assert!(
        h["setup"]["logs"]
            .as_str()
            .unwrap()
            .contains("setup timed out"),
        "{h}"
    );
}

#[tokio::test]
async fn a_running_id_cannot_be_started_twice() {
    let app = app(2).await;
    let req = |text: &str| {
        Request::post("/predictions")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(Body::from(
                json!({"id": "dup", "input": {"text": text, "delay": 2}}).to_string(),
            ))
            .unwrap()
    };
    let (status, _) = json_of(&app, req("a")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = json_of(&app, req("b")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"],
        "A prediction with this id is already running"
    );
    // The first is still the one registered: it can be cancelled.
    let (status, _) = json_of(&app, post("/predictions/dup/cancel", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
}
