//! FLUX's real tokenizers (fetched by scripts/setup.d/diffusion-tokenizers) give the ids
//! transformers' CLIPTokenizer / T5 tokenizer give when called as FluxPipeline calls them
//! (weights/reference/flux_tokenizer_golden.py → predictors/fixtures/diffusion/tokenizers.json).

use cog_predictors::engine::diffusion::tokenize::{
    self, FixedLength, CLIP_BOS, CLIP_EOS, CLIP_LEN, T5_LEN,
};
use serde_json::Value;
use std::path::PathBuf;

fn cache(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/diffusion")
        .join(rel)
}

fn clip() -> FixedLength {
    tokenize::clip(&cache("clip/bpe_simple_vocab_16e6.txt"))
        .expect("CLIP tokenizer (run scripts/setup)")
}

fn t5() -> FixedLength {
    tokenize::t5(&cache("t5/tokenizer.json")).expect("T5 tokenizer (run scripts/setup)")
}

fn golden() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/diffusion/tokenizers.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn clip_ids_equal_transformers() {
    let tok = clip();
    for case in golden() {
        let prompt = case["prompt"].as_str().unwrap();
        let got = tok.encode(prompt).unwrap();
        assert_eq!(got.ids, ids(&case["clip"]), "CLIP ids for {prompt:?}");
        assert_eq!(
            got.truncated,
            case["clip_truncated"].as_bool().unwrap(),
            "{prompt:?}"
        );
    }
}

#[test]
fn t5_ids_equal_transformers() {
    let tok = t5();
    for case in golden() {
        let prompt = case["prompt"].as_str().unwrap();
        let got = tok.encode(prompt).unwrap();
        let want = ids(&case["t5"]);
        assert_eq!(got.ids.len(), T5_LEN);
        assert_eq!(got.ids[..want.len()], want[..], "T5 ids for {prompt:?}");
        assert!(
            got.ids[want.len()..].iter().all(|&i| i == 0),
            "<pad> after {prompt:?}"
        );
        assert_eq!(
            got.truncated,
            case["t5_truncated"].as_bool().unwrap(),
            "{prompt:?}"
        );
    }
}

/// Ids known independently of any golden file: CLIP's "a photo of a cat" and T5's "Hello world".
#[test]
fn well_known_ids() {
    let c = clip().encode("A  Photo of a CAT").unwrap();
    assert_eq!(c.ids[..7], [CLIP_BOS, 320, 1125, 539, 320, 2368, CLIP_EOS]);
    assert!(
        c.ids[7..].iter().all(|&i| i == CLIP_EOS),
        "padded with <|endoftext|>"
    );
    assert_eq!(c.ids.len(), CLIP_LEN);
    let t = t5().encode("Hello world").unwrap();
    assert_eq!(t.ids[..4], [8774, 296, 1, 0], "Hello ▁world </s> <pad>");
    assert_eq!(t5().tokenizer().get_vocab_size(true), 32100);
    assert_eq!(clip().tokenizer().get_vocab_size(true), 49408);
}

#[test]
fn a_missing_file_names_setup() {
    let err = tokenize::clip(&cache("nope.txt"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("scripts/setup"), "{err}");
}
