//! `flux-txt2img` and `flux-img2img` through the real `cogrs` binary: a tiny random diffusers FLUX
//! pipeline (weights/fixtures/flux_pipeline + flux_encoders, real tokenizers from
//! .cache/diffusion) compiled with `cogrs weights build ... --lora NAME=FILE` in fp32, served on
//! the CPU. Successful predictions return decodable images of the requested size; bad inputs are
//! 422 naming the field; a cancel mid-denoise stops within about one step; the server keeps
//! serving; without weights, setup fails naming --weights / COG_WEIGHTS.

use cog_tests::{cogrs_bin, Receiver, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

/// The compiled tiny pipeline (built once per test binary).
fn compiled() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        let (fix, enc) = (
            root().join("weights/fixtures/flux_pipeline"),
            root().join("weights/fixtures/flux_encoders"),
        );
        let src = work.path().join("pipeline");
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            copy(
                &fix.join("transformer").join(f),
                &src.join("transformer").join(f),
            );
            copy(&enc.join("vae").join(f), &src.join("vae").join(f));
        }
        for c in ["text_encoder", "text_encoder_2"] {
            for f in ["config.json", "model.safetensors"] {
                copy(&enc.join(c).join(f), &src.join(c).join(f));
            }
        }
        copy(&fix.join("model_index.json"), &src.join("model_index.json"));
        copy(
            &fix.join("scheduler_config.json"),
            &src.join("scheduler/scheduler_config.json"),
        );
        let cache = root().join(".cache/diffusion");
        copy(
            &cache.join("clip/bpe_simple_vocab_16e6.txt"),
            &src.join("tokenizer/merges.txt"),
        );
        copy(
            &cache.join("t5/tokenizer.json"),
            &src.join("tokenizer_2/tokenizer.json"),
        );
        let out = work.path().join("compiled");
        let lora = |name: &str, file: &str| format!("{name}={}", fix.join(file).display());
        let status = Command::new(cogrs_bin())
            .args(["weights", "build"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .args(["--dtype", "fp32", "--quant", "none"])
            .args([
                "--lora",
                &lora("open-image-preferences", "lora_a.safetensors"),
            ])
            .args(["--lora", &lora("ghibsky", "lora_b.safetensors")])
            .status()
            .unwrap();
        assert!(status.success(), "cogrs weights build failed");
        (work, out)
    })
    .1
}

async fn serve(predictor: &str) -> Server {
    let dir = compiled().to_str().unwrap().to_string();
    let server = Server::spawn(&cogrs_bin(), &[predictor], &[("COG_WEIGHTS", &dir)]);
    server.wait_status("READY", Duration::from_secs(120)).await;
    server
}

async fn predict(server: &Server, input: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut buf, mut bits) = (Vec::new(), 0u32, 0);
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

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

/// A PNG output (data URI): its (width, height) from the IHDR chunk, after checking the signature.
fn png_size(uri: &str) -> (u32, u32) {
    let (head, b64) = uri.split_once(";base64,").expect("a base64 data URI");
    assert!(head.starts_with("data:image/png"), "{head}");
    let b = base64_decode(b64);
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&b[12..16], b"IHDR");
    let be = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    (be(16), be(20))
}

fn field(body: &Value) -> String {
    body["detail"][0]["loc"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn flux_txt2img_generates_validates_and_cancels() {
    let server = serve("flux-txt2img").await;
    let (code, body) = predict(&server, json!({"prompt": "GHIBSKY style, a Cinematic hill", "width": 256, "height": 320,
        "aspect_ratio": "custom", "num_inference_steps": 2, "num_outputs": 2, "seed": 3, "output_format": "png"})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
    let images = body["output"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for img in images {
        assert_eq!(png_size(img.as_str().unwrap()), (256, 320));
    }
    let logs = body["logs"].as_str().unwrap();
    assert!(
        logs.contains("open-image-preferences") && logs.contains("ghibsky"),
        "{logs}"
    );
    assert!(logs.contains("step 2/2"), "{logs}");
    assert!(
        body["metrics"]["seconds_per_step"].as_f64().unwrap() > 0.0,
        "{body}"
    );
    assert_eq!(
        body["metrics"]["active_loras"],
        json!(["open-image-preferences", "ghibsky"])
    );

    for (input, name) in [
        (
            json!({"prompt": "x", "aspect_ratio": "custom", "width": 100, "height": 256}),
            "width",
        ),
        (
            json!({"prompt": "x", "num_inference_steps": 0}),
            "num_inference_steps",
        ),
        (json!({"prompt": "x", "guidance": 11}), "guidance"),
    ] {
        let (code, body) = predict(&server, input).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(field(&body), name, "{body}");
    }

    // Cancel mid-denoise: 1024×1024 makes each step of the tiny model take a noticeable time.
    let hook = Receiver::start(vec![], None).await;
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .header("prefer", "respond-async")
        .json(&json!({"id": "long", "input": {"prompt": "a long one", "num_inference_steps": 50, "seed": 1},
                      "webhook": format!("{}/hook", hook.base), "webhook_events_filter": ["logs", "completed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let step_of = |logs: &str| {
        logs.lines()
            .filter_map(|l| {
                l.split("step ")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    };
    let got = hook
        .wait_for(Duration::from_secs(120), |g| {
            g.iter()
                .any(|r| r.json()["logs"].as_str().is_some_and(|l| step_of(l) >= 2))
        })
        .await;
    let at_cancel = got
        .iter()
        .map(|r| step_of(r.json()["logs"].as_str().unwrap_or("")))
        .max()
        .unwrap();
    let cancelled_at = Instant::now();
    let resp = reqwest::Client::new()
        .post(server.url("/predictions/long/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = hook
        .wait_for(Duration::from_secs(60), |g| {
            g.iter().any(|r| r.json()["status"] == "canceled")
        })
        .await;
    let done = got
        .iter()
        .find(|r| r.json()["status"] == "canceled")
        .unwrap()
        .json();
    let last = step_of(done["logs"].as_str().unwrap());
    eprintln!(
        "cancel: step {at_cancel} seen, last step started {last}, canceled after {:?}",
        cancelled_at.elapsed()
    );
    // The step running when the cancel came finishes; at most one more may have started before
    // the hook saw the logs.
    assert!(
        last <= at_cancel + 2 && last < 50,
        "steps went on to {last} after cancelling at {at_cancel}"
    );

    // Still serving.
    let (code, body) = predict(
        &server,
        json!({"prompt": "after", "num_inference_steps": 1, "aspect_ratio": "custom",
        "width": 256, "height": 256, "output_format": "png"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(png_size(body["output"][0].as_str().unwrap()), (256, 256));
    assert!(
        body["logs"].as_str().unwrap().contains("base model"),
        "{body}"
    );
}

#[tokio::test]
async fn flux_img2img_generates_and_refuses_bad_inputs() {
    let server = serve("flux-img2img").await;
    let png = std::fs::read(root().join("weights/fixtures/flux_pipeline/init.png")).unwrap();
    let image = format!("data:image/png;base64,{}", base64_encode(&png));
    let (code, body) = predict(
        &server,
        json!({"prompt": "Anime hill", "image": image, "strength": 0.5,
        "num_inference_steps": 4, "seed": 2, "output_format": "png"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // 64×64 input: scaled up to the 256 minimum side.
    assert_eq!(png_size(body["output"][0].as_str().unwrap()), (256, 256));
    assert!(
        body["logs"].as_str().unwrap().contains("step 2/2"),
        "{body}"
    );

    for (input, name) in [
        (
            json!({"prompt": "x", "image": image, "strength": 2}),
            "strength",
        ),
        (
            json!({"prompt": "x", "image": "data:text/plain;base64,aGVsbG8gd29ybGQ="}),
            "image",
        ),
        (
            json!({"prompt": "x", "image": image, "aspect_ratio": "custom", "width": 100, "height": 256}),
            "width",
        ),
    ] {
        let (code, body) = predict(&server, input).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(field(&body), name, "{body}");
    }
}

#[tokio::test]
async fn flux_without_weights_names_weights_and_cog_weights() {
    let mut server = Server::spawn(&cogrs_bin(), &["flux-txt2img"], &[]);
    server
        .wait_status("SETUP_FAILED", Duration::from_secs(30))
        .await;
    let h = server.health().await.unwrap();
    let logs = h["setup"]["logs"].as_str().unwrap();
    assert!(
        logs.contains("--weights") && logs.contains("COG_WEIGHTS"),
        "{h}"
    );
    let _ = &mut server;
}
