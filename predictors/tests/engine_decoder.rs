//! The generation loop on a real ONNX graph: `fixtures/tiny-decoder` (made by
//! `fixtures/make_tiny_decoder.py`) has the contract's exact I/O and logits that are a known function of all
//! tokens seen, read back through every layer's KV cache. Greedy decoding must follow
//!     t_{n+1} = S_n mod 260,  S_{n+1} = S_n + t_{n+1},  S_0 = sum of the prompt ids,
//! stopping at an EOS id (256 or 258). A dropped, reordered or misaligned cache, or a wrong attention mask,
//! changes the tokens. Needs ONNX Runtime: run `scripts/setup` (or `scripts/install-ort`) first.

use cog_predictors::engine::llm::{
    ChatMessage, EngineOptions, FinishReason, GenerateRequest, Generator, Prompt, SamplingConfig,
    TemplateOptions,
};
use cog_predictors::engine::ort_env::LoadedFrom;
use std::cell::Cell;
use std::path::{Path, PathBuf};

const V: u64 = 260;
const EOS: [u32; 2] = [256, 258];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-decoder")
}

/// A private copy of the fixture, so the optimised-model cache is written there and not into the repository.
fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "engine.json",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Generator {
    Generator::load(dir, &EngineOptions::default())
        .unwrap_or_else(|e| panic!("loading the tiny decoder failed: {e}"))
}

/// The tokens greedy decoding must produce, computed independently of the graph.
fn expected(prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut s: u64 = prompt.iter().map(|&t| t as u64).sum();
    let mut out = Vec::new();
    while out.len() < max_new {
        let t = (s % V) as u32;
        if EOS.contains(&t) {
            break;
        }
        out.push(t);
        s += t as u64;
    }
    out
}

fn raw(prompt: &str, max_new_tokens: usize, sampling: SamplingConfig) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Raw(prompt.into()),
        max_new_tokens,
        sampling,
        skip_special_tokens: false,
        ignore_eos: false,
    }
}

#[test]
fn greedy_follows_the_cache_recurrence_and_streams_the_same_text() {
    let dir = model_dir();
    let g = load(dir.path());
    for prompt in ["Hi", "héllo, wörld", "日本"] {
        let ids = g.encode(prompt).unwrap();
        assert_eq!(
            ids,
            prompt
                .as_bytes()
                .iter()
                .map(|&b| b as u32)
                .collect::<Vec<_>>(),
            "byte-level ids"
        );
        let mut chunks = Vec::new();
        let out = g
            .generate(
                &raw(prompt, 40, SamplingConfig::default()),
                &mut |c| chunks.push(c.to_string()),
                &|| false,
            )
            .unwrap();
        let want = expected(&ids, 40);
        assert_eq!(out.token_ids, want, "prompt {prompt:?}");
        assert_eq!(
            out.finish_reason,
            if want.len() < 40 {
                FinishReason::Stop
            } else {
                FinishReason::Length
            }
        );
        assert_eq!(chunks.concat(), out.text);
        assert_eq!(out.text, g.tokenizer().decode(&want, false).unwrap());
        assert!(
            chunks.iter().all(|c| !c.contains('\u{FFFD}')) || out.text.contains('\u{FFFD}'),
            "{chunks:?}"
        );
        assert_eq!(out.metrics.input_token_count, ids.len());
        assert_eq!(out.metrics.output_token_count, want.len());
        assert!(out.metrics.time_to_first_token > 0.0);
    }
}

#[test]
fn stops_on_eos() {
    let g = load(model_dir().path());
    // Prompt sum 256 → the first token is EOS: nothing generated, finish = stop.
    let out = g
        .generate(
            &raw("\u{7f}\u{7f}\u{2}", 10, SamplingConfig::default()),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    assert_eq!(out.token_ids, Vec::<u32>::new());
    assert_eq!(out.finish_reason, FinishReason::Stop);
    // ignore_eos runs through it (fixed-length benchmark runs): 256, then (256 + 256) mod 260 = 252, ...
    let req = GenerateRequest {
        ignore_eos: true,
        ..raw("\u{7f}\u{7f}\u{2}", 3, SamplingConfig::default())
    };
    let out = g.generate(&req, &mut |_| {}, &|| false).unwrap();
    assert_eq!(
        (out.token_ids, out.finish_reason),
        (vec![256, 252, 244], FinishReason::Length)
    );
}

#[test]
fn max_new_tokens_is_bounded_by_the_context() {
    let g = load(model_dir().path());
    assert_eq!(g.context_length(), 64);
    // 60 prompt tokens of 'a' (97): sum 5820, then tokens follow the recurrence; only 4 fit in 64.
    let prompt = "a".repeat(60);
    let ids = g.encode(&prompt).unwrap();
    let out = g
        .generate(
            &raw(&prompt, 1000, SamplingConfig::default()),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    let want = expected(&ids, 4);
    assert_eq!(
        want.len(),
        4,
        "the recurrence must not hit EOS for this check to mean anything"
    );
    assert_eq!(out.token_ids, want);
    assert_eq!(out.finish_reason, FinishReason::Length);
    let err = g
        .generate(
            &raw(&"a".repeat(64), 5, SamplingConfig::default()),
            &mut |_| {},
            &|| false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("context is 64"), "{err}");
}

#[test]
fn cancellation_stops_within_one_token() {
    let g = load(model_dir().path());
    let n = Cell::new(0usize);
    let out = g
        .generate(
            &raw("Hi", 40, SamplingConfig::default()),
            &mut |_| {},
            &|| {
                n.set(n.get() + 1);
                n.get() > 3 // three model runs are allowed, the fourth check cancels
            },
        )
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(out.token_ids, expected(&[72, 105], 3));
}

#[test]
fn sampling_is_reproducible_by_seed_and_reports_it() {
    let g = load(model_dir().path());
    // One-hot logits of height 4: at temperature 1.5 the greedy token has only ~12% of the mass.
    let req = |seed| {
        raw(
            "Hi",
            30,
            SamplingConfig {
                temperature: 1.5,
                top_k: None,
                top_p: None,
                seed,
            },
        )
    };
    let a = g.generate(&req(Some(42)), &mut |_| {}, &|| false).unwrap();
    let b = g.generate(&req(Some(42)), &mut |_| {}, &|| false).unwrap();
    let c = g.generate(&req(Some(43)), &mut |_| {}, &|| false).unwrap();
    assert_eq!(a.seed, 42);
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids);
    assert_ne!(
        a.token_ids,
        expected(&[72, 105], 30),
        "sampling at temperature 1.5 should leave the greedy path"
    );
    let d = g.generate(&req(None), &mut |_| {}, &|| false).unwrap();
    let e = g
        .generate(&req(Some(d.seed)), &mut |_| {}, &|| false)
        .unwrap();
    assert_eq!(
        d.token_ids, e.token_ids,
        "the reported seed reproduces the run"
    );
}

#[test]
fn chat_prompt_uses_the_models_template() {
    let g = load(model_dir().path());
    let req = GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", "Hi")],
            template: TemplateOptions::default(),
        },
        max_new_tokens: 8,
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: false,
    };
    let out = g.generate(&req, &mut |_| {}, &|| false).unwrap();
    assert_eq!(
        out.prompt_text,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = g.encode(&out.prompt_text).unwrap();
    assert_eq!(ids[0], 257, "<|im_start|> is one special token");
    assert_eq!(out.token_ids, expected(&ids, 8));
}

#[test]
fn second_load_uses_the_optimised_model_cache() {
    let dir = model_dir();
    let first = load(dir.path());
    let LoadedFrom::Original {
        cache_written: Some(cache),
    } = first.loaded_from().clone()
    else {
        panic!(
            "first load should optimise and write the cache: {:?}",
            first.loaded_from()
        )
    };
    assert!(cache.exists());
    let second = load(dir.path());
    assert_eq!(second.loaded_from(), &LoadedFrom::Cache(cache.clone()));
    let a = first
        .generate(
            &raw("Hi", 20, SamplingConfig::default()),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    let b = second
        .generate(
            &raw("Hi", 20, SamplingConfig::default()),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    // Changing the model invalidates the cache.
    let mut bytes = std::fs::read(dir.path().join("model.onnx")).unwrap();
    bytes.extend_from_slice(b""); // same content, new mtime and a rewritten file
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.path().join("model.onnx"), &bytes).unwrap();
    let third = load(dir.path());
    assert!(
        matches!(third.loaded_from(), LoadedFrom::Original { .. }),
        "{:?}",
        third.loaded_from()
    );
}
