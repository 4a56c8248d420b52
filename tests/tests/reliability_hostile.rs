//! Hostile input against the real `hello` over real HTTP (127.0.0.1): proptest-generated bodies,
//! content types and values for every input field; URL file names that try to leave the temp
//! dir; and a secret that must never appear in the server's log (at trace level), in responses,
//! in webhooks or in SSE streams. `FUZZ_CASES=N` sets the cases per property.

#[path = "reliability_support/mod.rs"]
mod support;

use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;
use support::{hello_with_slots, list_tree, proc_stats, FileHost, HelloServer, Hook};

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

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

static SERVER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn kill_server() {
    let pid = SERVER_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid != 0 {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

struct Fixture {
    server: HelloServer,
    tmp: tempfile::TempDir,
    client: reqwest::Client,
}

/// One hello (TMPDIR of its own) shared by the fuzzing properties of this file.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().to_str().unwrap().to_string();
        let server = rt().block_on(hello_with_slots(
            1,
            &[],
            &[("TMPDIR", &t), ("COG_LOG_LEVEL", "warn")],
        ));
        // A static is never dropped: kill the server when the test process exits.
        SERVER_PID.store(server.child.id(), std::sync::atomic::Ordering::SeqCst);
        // SAFETY: registers a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(kill_server);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Fixture {
            server,
            tmp,
            client,
        }
    })
}

/// Sends a request to the fixture's hello; (status, body bytes). No answer in 30 s is a hang.
fn send(method: &str, path: &str, ct: Option<&str>, body: Vec<u8>) -> (u16, Vec<u8>) {
    let f = fixture();
    rt().block_on(async {
        let mut req = f.client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            f.server.url(path),
        );
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("no answer (hang or crash): {e}\n{}", f.server.log()));
        let code = resp.status().as_u16();
        (code, resp.bytes().await.unwrap().to_vec())
    })
}

/// Properties that have finished (the last test waits for them, as tests run in parallel).
static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const PROPERTIES: usize = 3;

/// Counts a property as finished when the proptest run of it ends (passed or failed).
struct Finished;
impl Drop for Finished {
    fn drop(&mut self) {
        DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn check(code: u16, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(code < 500, "{code}: {}", String::from_utf8_lossy(body));
    if code == 200 {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| TestCaseError::fail(format!("200 without JSON: {e}")))?;
        prop_assert!(
            matches!(
                v["status"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ),
            "{v}"
        );
    }
    if code == 422 {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            prop_assert!(v["detail"].is_array(), "{v}");
        }
    }
    Ok(())
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-100.0f64..100.0).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,30}".prop_map(Value::from),
        "data:[ -~]{0,50}".prop_map(Value::from),
        prop::sample::select(vec!["upper", "lower", "UPPER", ""]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const HELLO_FIELDS: [&str; 8] = [
    "text",
    "repeat",
    "delay",
    "mode",
    "fail",
    "image",
    "token",
    "write_file",
];

/// No long sleeps; no URL that would leave 127.0.0.1.
fn tame(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        if let Some(d) = o.get_mut("delay") {
            if d.as_f64().is_some_and(|f| f > 0.05) {
                *d = json!(0.01);
            }
        }
        if let Some(i) = o.get_mut("image") {
            if i.as_str()
                .is_some_and(|s| !s.starts_with("data:") && s.to_ascii_lowercase().contains("http"))
            {
                *i = json!("data:,x");
            }
        }
    }
    v
}

#[test]
fn hello_inputs() {
    let _f = Finished;
    prop_hello_inputs();
}

#[test]
fn raw_requests() {
    let _f = Finished;
    prop_raw_requests();
}

#[test]
fn deep_nesting() {
    let _f = Finished;
    prop_deep_nesting();
}

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary JSON for every hello field (and unknown ones), over HTTP.
    fn prop_hello_inputs(fields in prop::collection::btree_map(
                        prop_oneof![6 => prop::sample::select(HELLO_FIELDS.to_vec()).prop_map(String::from), 1 => ".{0,8}"],
                        arb_json(), 0..10),
                    with_text in any::<bool>()) {
        let mut input = Value::Object(fields.into_iter().collect());
        if with_text {
            input["text"] = json!("fuzz");
        }
        let input = tame(input);
        let (code, body) = send("POST", "/predictions", Some("application/json"),
                                json!({"input": input}).to_string().into_bytes());
        check(code, &body)?;
        prop_assert!(code == 200 || code == 422, "{code}");
    }

    /// Arbitrary bytes under arbitrary content types, methods and paths.
    fn prop_raw_requests(body in prop::collection::vec(any::<u8>(), 0..2048),
                    ct in prop::option::of("[ -~]{0,40}"),
                    method in prop::sample::select(vec!["POST", "PUT", "GET", "DELETE", "PATCH", "OPTIONS"]),
                    path in prop::sample::select(vec!["/predictions", "/predictions/x", "/predictions/x/cancel", "/", "/health-check", "/openapi.json", "/nope"])) {
        let (code, body) = send(method, path, ct.as_deref(), body);
        if path.starts_with("/predictions") {
            check(code, &body)?;
        } else {
            prop_assert!(code < 500, "{code}");
        }
    }

    /// Deep nesting, up to 50,000 levels, as the body and inside a field.
    fn prop_deep_nesting(depth in 0usize..50_000, inside in any::<bool>()) {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let body = if inside { format!("{{\"input\": {{\"text\": {nested}}}}}") } else { nested };
        let (code, resp) = send("POST", "/predictions", Some("application/json"), body.into_bytes());
        check(code, &resp)?;
    }
}

/// Runs after the properties above: the fuzzed server still serves,
/// left nothing in its TMPDIR, and stayed small.
#[test]
fn zz_fuzzed_server_is_still_healthy() {
    let f = fixture();
    // Wait (bounded) for the properties sharing this server to finish.
    let start = std::time::Instant::now();
    while DONE.load(std::sync::atomic::Ordering::SeqCst) < PROPERTIES
        && start.elapsed() < Duration::from_secs(600)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..32 {
        let (code, body) = send(
            "POST",
            "/predictions",
            Some("application/json"),
            json!({"input": {"text": "x", "image": "data:,x", "write_file": true}})
                .to_string()
                .into_bytes(),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (rss, fds) = proc_stats(f.server.child.id());
    assert!(rss < 256 * 1024, "RSS {rss} KiB after fuzzing");
    assert!(fds < 64, "{fds} open fds after fuzzing");
    let left = list_tree(f.tmp.path());
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// URL paths that try to leave the temp dir: every download lands inside the prediction's
/// folder (hello reads and measures it), and nothing is written outside TMPDIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_from_urls_cannot_escape_the_temp_dir() {
    let sandbox = tempfile::tempdir().unwrap();
    let tmp = sandbox.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let host = FileHost::start(vec![7u8; 321]).await;
    let server = hello_with_slots(1, &[], &[("TMPDIR", tmp.to_str().unwrap())]).await;
    let client = reqwest::Client::new();
    let long_euro = "%E2%82%AC".repeat(300);
    let long_x = "x".repeat(1000);
    let hostile = [
        "..%2F..%2F..%2Fescaped",
        "%2E%2E%2F%2E%2E%2F%2E%2E%2Fescaped",
        "..%5C..%5C..%5Cescaped",
        "..%2f..%2f..%2fescaped.png",
        "a%00b.png",
        "%2e%2e",
        "%2E",
        "..%252F..%252Fescaped",
        "x%2F..%2F..%2F..%2F..%2Fescaped",
        "%FF%FE.bin",
        "a&b=c+d.png",
        &long_euro,
        &long_x,
        "..\\..\\escaped",
        "....//....//escaped",
    ];
    for h in hostile {
        let url = format!("{}/files/{h}", host.base);
        let (code, body) = support::post_json(
            &client,
            &server,
            &json!({"input": {"text": "x", "image": url}}),
            false,
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{h}: {body}");
        assert_eq!(body["status"], "succeeded", "{h}: {body}");
        assert!(
            body["logs"]
                .as_str()
                .unwrap()
                .contains("image of 321 bytes"),
            "{h}: the file was not where hello looked: {body}"
        );
    }
    let outside: Vec<_> = list_tree(sandbox.path())
        .into_iter()
        .filter(|p| !p.starts_with(&tmp))
        .collect();
    assert!(outside.is_empty(), "written outside TMPDIR: {outside:?}");
    assert!(list_tree(&tmp).is_empty(), "left in TMPDIR");
}

/// A secret (hello's `token`) in every kind of request: it never appears in the server's log
/// at trace level, in any response, webhook or SSE stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_responses_or_webhooks() {
    let secret = format!(
        "sk-live-{:x}",
        (std::process::id() as u64).wrapping_mul(0x9e3779b97f4a7c15)
    );
    let hook = Hook::start().await;
    let host = FileHost::start(b"img".to_vec()).await;
    let server = hello_with_slots(
        1,
        &[],
        &[
            ("COG_LOG_LEVEL", "trace"),
            ("WEBHOOK_AUTH_TOKEN", "hooktok"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let inputs = [
        json!({"text": "a", "token": secret}),
        json!({"text": "a", "token": secret, "fail": true}),
        json!({"text": "a", "token": secret, "write_file": true}),
        json!({"text": "a", "token": secret, "repeat": 99}),
        json!({"text": "a\u{0}", "token": secret}),
        json!({"text": "a", "token": secret, "image": format!("{}/img.png", host.base)}),
        json!({"text": "a", "token": secret, "image": format!("{}/missing", host.base.replace("127.0.0.1", "127.0.0.1:1"))}),
        json!({"text": "a", "token": secret, "image": "data:image/png;base64,@@"}),
        json!({"text": "a", "token": secret, "unknown": secret}),
    ];
    for input in &inputs {
        // sync
        let (code, body) = support::post_json(&client, &server, &json!({"input": input}), false)
            .await
            .unwrap();
        assert!(code == 200 || code == 422, "{code} {body}");
        seen.push(body.to_string());
        // async with every webhook event
        let (code, body) = support::post_json(
            &client,
            &server,
            &json!({"input": input, "webhook": hook.url}),
            true,
        )
        .await
        .unwrap();
        seen.push(body.to_string());
        if code == 202 {
            let id = body["id"].as_str().unwrap().to_string();
            let start = std::time::Instant::now();
            while !hook.acked_terminals().contains_key(&id) {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no terminal webhook"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // SSE
        let resp = client
            .post(server.url("/predictions"))
            .header("accept", "text/event-stream")
            .json(&json!({"input": input}))
            .send()
            .await
            .unwrap();
        seen.push(resp.text().await.unwrap());
    }
    let masked = seen.iter().filter(|s| s.contains("**********")).count();
    assert!(
        masked > 0,
        "the mask never appeared: was the token sent at all?"
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(!s.contains(&secret), "response {i} carries the secret: {s}");
    }
    for h in hook.received() {
        assert!(
            !h.body.to_string().contains(&secret),
            "webhook carries the secret: {}",
            h.body
        );
    }
    let log = server.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "not at trace level?"
    );
    assert!(
        !log.contains(&secret),
        "the server log carries the secret:\n{}",
        log.lines()
            .filter(|l| l.contains(&secret))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
