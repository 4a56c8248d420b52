//! The shared KV buffer mode on a real GroupQueryAttention graph (`fixtures/tiny-decoder-gqa`, made by
//! `fixtures/make_tiny_gqa_decoder.py`): past and present are one buffer of context_length per layer, grown in
//! place by the operator. The same graph also runs in growing-cache mode; both must follow the greedy
//! recurrence t_{n+1} = S_n mod 260. Needs ONNX Runtime: run `scripts/setup` first.

use cog_predictors::engine::llm::{
    EngineOptions, FinishReason, GenerateRequest, Generator, Prompt, SamplingConfig,
};
use std::path::Path;

fn model_dir(shared: bool) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-decoder-gqa");
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut engine: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("engine.json")).unwrap()).unwrap();
    engine["io"]["shared_kv_buffer"] = shared.into();
    std::fs::write(dir.path().join("engine.json"), engine.to_string()).unwrap();
    dir
}

fn expected(prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut s: u64 = prompt.iter().map(|&t| t as u64).sum();
    let mut out = Vec::new();
    while out.len() < max_new {
        let t = (s % 260) as u32;
        if t == 256 || t == 258 {
            break;
        }
        out.push(t);
        s += t as u64;
    }
    out
}

fn greedy(g: &Generator, prompt: &str, max_new_tokens: usize) -> (Vec<u32>, FinishReason) {
    let req = GenerateRequest {
        prompt: Prompt::Raw(prompt.into()),
        max_new_tokens,
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: false,
    };
    let out = g
        .generate(&req, &mut |_| {}, &|| false)
        .unwrap_or_else(|e| panic!("generate: {e}"));
    (out.token_ids, out.finish_reason)
}

#[test]
fn shared_and_growing_caches_follow_the_recurrence() {
    for shared in [true, false] {
        let dir = model_dir(shared);
        let g = Generator::load(dir.path(), &EngineOptions::default())
            .unwrap_or_else(|e| panic!("load (shared={shared}): {e}"));
        for prompt in ["Hi", "The quick brown fox"] {
            let ids = g.encode(prompt).unwrap();
            let (tokens, _) = greedy(&g, prompt, 30);
            assert_eq!(
                tokens,
                expected(&ids, 30),
                "shared={shared} prompt={prompt:?}"
            );
        }
        // Two requests in a row reuse nothing stale: the buffer is rebuilt per request.
        assert_eq!(
            greedy(&g, "Hi", 30).0,
            expected(&[72, 105], 30),
            "shared={shared}, second request"
        );
        // Up to the last slot of the context.
        let prompt = "a".repeat(60);
        let (tokens, finish) = greedy(&g, &prompt, 100);
        assert_eq!(
            tokens,
            expected(&[97; 60], 4),
            "shared={shared} at the context end"
        );
        assert_eq!(finish, FinishReason::Length);
    }
}
