//! Black-box tests: the real `hello` binary on 127.0.0.1, driven by a real HTTP client, with real
//! webhook, upload and file servers.

use cog_tests::{hello_bin, Receiver, Server};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn post(server: &Server, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sync_prediction_and_file_output() {
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let (code, body) = post(
        &server,
        json!({"input": {"text": "hi", "repeat": 2, "write_file": true}}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["output"]["text"], "HI HI");
    assert_eq!(body["output"]["file"], "data:text/plain;base64,SEkgSEk=");
    assert!(body["logs"]
        .as_str()
        .unwrap()
        .contains("transforming 2 characters"));
}

#[tokio::test]
async fn async_prediction_sends_webhooks_with_auth_and_trace_headers() {
    let hook = Receiver::start(vec![], None).await;
    let server = Server::start(&hello_bin(), &[], &[("WEBHOOK_AUTH_TOKEN", "tok123")]).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("prefer", "respond-async")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("tracestate", "vendor=1")
        .json(&json!({"id": "wh1", "input": {"text": "hook", "delay": 0.2}, "webhook": format!("{}/hook", hook.base)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"id": "wh1", "status": "starting"})
    );
    let got = hook
        .wait_for(Duration::from_secs(10), |g| {
            g.iter().any(|r| r.json()["status"] == "succeeded")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = hook.received();
    assert_eq!(
        got.len(),
        got_after.len(),
        "nothing arrives after the terminal webhook"
    );
    let first = &got[0];
    assert_eq!(first.json()["status"], "processing");
    assert_eq!(first.headers["authorization"], "Bearer tok123");
    assert_eq!(
        first.headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(first.headers["tracestate"], "vendor=1");
    assert_eq!(first.headers["content-type"], "application/json");
    let terminal: Vec<_> = got_after
        .iter()
        .filter(|r| r.json()["status"] == "succeeded")
        .collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal webhook");
    let last = terminal[0].json();
    assert_eq!(last["output"]["text"], "HOOK");
    assert!(last["metrics"]["predict_time"].is_number());
    assert!(last["completed_at"].is_string());
}

#[tokio::test]
async fn webhook_filter_sends_only_completed() {
    let hook = Receiver::start(vec![], None).await;
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("prefer", "respond-async")
        .json(
            &json!({"input": {"text": "f", "repeat": 3}, "webhook": format!("{}/hook", hook.base),
                      "webhook_events_filter": ["completed"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    hook.wait_for(Duration::from_secs(10), |g| !g.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = hook.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].json()["status"], "succeeded");
}

#[tokio::test]
async fn terminal_webhook_is_retried_until_the_receiver_recovers() {
    let hook = Receiver::start(vec![500, 503, 429], None).await;
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("prefer", "respond-async")
        .json(
            &json!({"input": {"text": "r"}, "webhook": format!("{}/hook", hook.base),
                      "webhook_events_filter": ["completed"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = hook
        .wait_for(Duration::from_secs(10), |g| g.len() >= 4)
        .await;
    assert!(got.iter().all(|r| r.json()["status"] == "succeeded"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hook.received().len(),
        4,
        "retried until the first success, then stopped"
    );
}

#[tokio::test]
async fn uploads_output_files_when_upload_url_is_set() {
    let up = Receiver::start(vec![], Some("https://cdn.example/files".into())).await;
    let upload_url = format!("{}/upload", up.base);
    let server = Server::start(&hello_bin(), &["--upload-url", &upload_url], &[]).await;
    let (code, body) = post(
        &server,
        json!({"id": "up1", "input": {"text": "file me", "write_file": true}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["output"]["file"],
        "https://cdn.example/files/output.txt"
    );
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "PUT");
    assert_eq!(got[0].path, "/upload/output.txt");
    assert_eq!(got[0].headers["x-prediction-id"], "up1");
    assert_eq!(got[0].headers["content-type"], "text/plain");
    assert_eq!(&got[0].body[..], b"FILE ME");
}

#[tokio::test]
async fn upload_without_location_returns_the_put_url() {
    let up = Receiver::start(vec![], None).await;
    let upload_url = format!("{}/upload", up.base);
    let server = Server::start(&hello_bin(), &["--upload-url", &upload_url], &[]).await;
    let (code, body) = post(&server, json!({"input": {"text": "x", "write_file": true}})).await;
    assert_eq!(code, 200);
    assert_eq!(body["output"]["file"], format!("{upload_url}/output.txt"));
}

#[tokio::test]
async fn upload_target_down_fails_the_prediction_clearly() {
    let up = Receiver::start(vec![500], None).await;
    let upload_url = format!("{}/upload", up.base);
    let server = Server::start(&hello_bin(), &["--upload-url", &upload_url], &[]).await;
    let (code, body) = post(&server, json!({"input": {"text": "x", "write_file": true}})).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("failed to upload output file output.txt"),
        "{body}"
    );
}

#[tokio::test]
async fn http_file_inputs_are_fetched_with_limits() {
    let host = Receiver::start(vec![], None).await;
    let url = host.host_file("cat.png", vec![7u8; 1000]);
    let server = Server::start(
        &hello_bin(),
        &[],
        &[("COG_INPUT_MAX_BYTES", "4096"), ("COG_INPUT_TIMEOUT", "1")],
    )
    .await;
    let (_, body) = post(&server, json!({"input": {"text": "x", "image": url}})).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert!(body["logs"]
        .as_str()
        .unwrap()
        .contains("image of 1000 bytes"));
    let big = host.host_file("big.png", vec![0u8; 10_000]);
    let (_, body) = post(&server, json!({"input": {"text": "x", "image": big}})).await;
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("larger than 4096 bytes"),
        "{body}"
    );
    let started = Instant::now();
    let (_, body) = post(
        &server,
        json!({"input": {"text": "x", "image": format!("{}/slow", host.base)}}),
    )
    .await;
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"].as_str().unwrap().contains("longer than 1 s"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, body) = post(
        &server,
        json!({"input": {"text": "x", "image": host.host_file("x", vec![])
        .replace("/files/x", "/files/missing")}}),
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("HTTP 404"),
        "{body}"
    );
}

#[tokio::test]
async fn sse_stream_over_real_http() {
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"text": "ab", "repeat": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let text = resp.text().await.unwrap();
    let (chunks, completed) = cog_tests::sse_output_and_completed(&text);
    assert_eq!(
        chunks, "AB AB AB",
        "SSE chunks concatenate to the final text"
    );
    assert_eq!(completed["output"]["text"], "AB AB AB");
}

#[tokio::test]
async fn client_disconnect_cancels_and_frees_the_slot() {
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = client
        .post(server.url("/predictions"))
        .json(&json!({"input": {"text": "x", "delay": 30}}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    let start = Instant::now();
    loop {
        let (code, _) = post(&server, json!({"input": {"text": "next"}})).await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 409);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "slot not freed after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.log().contains("client disconnected; cancelling"));
}

#[tokio::test]
async fn a_waiting_client_never_sees_409() {
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let client = reqwest::Client::new();
    for i in 0..300 {
        let resp = client
            .post(server.url("/predictions"))
            .json(&json!({"input": {"text": "n"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
}

#[tokio::test]
async fn malformed_burst_then_good_request() {
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let client = reqwest::Client::new();
    let bad_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[1,2]".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00]),
        (
            "application/json",
            b"{\"input\": {\"text\": \"\\ud800\"}}".to_vec(),
        ),
        (
            "application/json",
            b"{\"input\": {\"text\": 1e999}}".to_vec(),
        ),
        ("text/plain", b"hello".to_vec()),
        ("application/json", b"{\"webhook\": 5}".to_vec()),
        (
            "application/json",
            b"{\"input\": {\"text\": \"a\", \"image\": \"data:xx\"}}".to_vec(),
        ),
        (
            "application/json",
            b"{\"input\": {\"text\": \"a\", \"image\": \"file:///etc/passwd\"}}".to_vec(),
        ),
        (
            "application/json",
            b"{\"input\": {\"text\": \"a\", \"repeat\": 1.5}}".to_vec(),
        ),
        (
            "application/json",
            b"{\"input\": {\"text\": \"a\", \"mode\": null}}".to_vec(),
        ),
    ];
    for round in 0..10 {
        for (ct, body) in &bad_bodies {
            let resp = client
                .post(server.url("/predictions"))
                .header("content-type", *ct)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            assert!(
                (400..500).contains(&code),
                "round {round}: {body:?} got {code}"
            );
        }
    }
    let (code, body) = post(&server, json!({"input": {"text": "still here"}})).await;
    assert_eq!(
        (code, body["output"]["text"].as_str()),
        (200, Some("STILL HERE"))
    );
}

#[tokio::test]
async fn sigterm_drains_the_running_prediction() {
    let mut server = Server::start(&hello_bin(), &[], &[]).await;
    let base = server.base.clone();
    let running = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/predictions"))
            .json(&json!({"input": {"text": "drain", "delay": 1}}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, body) = post(&server, json!({"input": {"text": "late"}})).await;
    assert_eq!(code, 503, "no new predictions while draining: {body}");
    let body = running.await.unwrap();
    assert_eq!(
        body["status"], "succeeded",
        "the running prediction finished: {body}"
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exited after draining");
    assert!(status.success());
}

#[tokio::test]
async fn await_explicit_shutdown_ignores_sigterm_until_post_shutdown() {
    let mut server = Server::start(&hello_bin(), &["--await-explicit-shutdown", "true"], &[]).await;
    server.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.health().await.unwrap()["status"], "READY");
    let resp = reqwest::Client::new()
        .post(server.url("/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(server
        .wait_exit(Duration::from_secs(10))
        .expect("exited")
        .success());
}

#[tokio::test]
async fn cancel_endpoint_stops_an_async_prediction() {
    let hook = Receiver::start(vec![], None).await;
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let client = reqwest::Client::new();
    let resp = client
        .put(server.url("/predictions/c1"))
        .header("prefer", "respond-async")
        .json(
            &json!({"input": {"text": "x", "delay": 30}, "webhook": format!("{}/hook", hook.base)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let resp = client
        .post(server.url("/predictions/c1/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = hook
        .wait_for(Duration::from_secs(5), |g| {
            g.iter().any(|r| r.json()["status"] == "canceled")
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        got.iter()
            .filter(|r| r.json()["status"] == "canceled")
            .count(),
        1
    );
}

#[tokio::test]
async fn streaming_log_webhooks_are_throttled() {
    let hook = Receiver::start(vec![], None).await;
    let server = Server::start(
        &hello_bin(),
        &[],
        &[("COG_THROTTLE_RESPONSE_INTERVAL", "10")],
    )
    .await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("prefer", "respond-async")
        .json(
            &json!({"input": {"text": "x"}, "webhook": format!("{}/hook", hook.base),
                      "webhook_events_filter": ["logs", "completed"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = hook
        .wait_for(Duration::from_secs(5), |g| {
            g.iter().any(|r| r.json()["status"] == "succeeded")
        })
        .await;
    // Two log lines within the interval: one logs webhook, then the terminal one.
    assert_eq!(got.len(), 2, "{got:#?}");
}

#[tokio::test]
async fn sse_stream_close_of_owner_cancels() {
    let server = Server::start(&hello_bin(), &[], &[]).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"text": "x", "delay": 30}}))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: start"));
    drop(stream);
    let start = Instant::now();
    loop {
        let (code, _) = post(&server, json!({"input": {"text": "n"}})).await;
        if code == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_temp_files_are_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.path().to_str().unwrap().to_string();
    let up = Receiver::start(vec![500], None).await;
    let upload_url = format!("{}/upload", up.base);
    let server = Server::start(&hello_bin(), &[], &[("TMPDIR", &tmp_path)]).await;
    for body in [
        json!({"input": {"text": "a", "write_file": true}}),
        json!({"input": {"text": "a", "image": "data:image/png;base64,aGVsbG8=", "write_file": true}}),
        json!({"input": {"text": "a", "image": "data:image/png;base64,aGVsbG8=", "fail": true}}),
    ] {
        let (code, _) = post(&server, body).await;
        assert_eq!(code, 200);
    }
    // A failed upload must clean up too.
    let failing = Server::start(
        &hello_bin(),
        &["--upload-url", &upload_url],
        &[("TMPDIR", &tmp_path)],
    )
    .await;
    let (_, body) = post(
        &failing,
        json!({"input": {"text": "a", "write_file": true}}),
    )
    .await;
    assert_eq!(body["status"], "failed");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[tokio::test]
async fn kubernetes_readiness_file_is_written_once_ready() {
    let ready = std::path::Path::new("/var/run/cog/ready");
    let _ = std::fs::remove_file(ready);
    let _server = Server::start(
        &hello_bin(),
        &[],
        &[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("HELLO_SETUP_DELAY", "0.3"),
        ],
    )
    .await;
    assert!(ready.exists(), "/var/run/cog/ready not written");
}
