//! Real tokenizers fetched by `scripts/setup.d/engine-tokenizers` (run `scripts/setup` first): the Llama-3
//! BPE that SmolLM3 reuses, and cl100k ranks converted to a `tokenizers` BPE with Phi-4's specials.

use cog_predictors::engine::llm::tokenizer::{from_tiktoken, CL100K_PATTERN, PHI4_SPECIALS};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

fn cached(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/engine")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/setup` (step scripts/setup.d/engine-tokenizers) first",
        p.display()
    );
    p
}

fn llama3() -> Tokenizer {
    Tokenizer::from_file(cached("llama3/tokenizer.json")).expect("Llama-3 tokenizer.json loads")
}

fn phi4() -> Tokenizer {
    from_tiktoken(
        &cached("cl100k/cl100k_base.tiktoken"),
        PHI4_SPECIALS,
        CL100K_PATTERN,
    )
    .expect("cl100k converts")
}

#[test]
fn llama3_special_tokens_have_their_ids() {
    let t = llama3();
    assert_eq!(t.get_vocab_size(true), 128256);
    for (tok, id) in [
        ("<|begin_of_text|>", 128000),
        ("<|end_of_text|>", 128001),
        ("<|start_header_id|>", 128006),
        ("<|end_header_id|>", 128007),
        ("<|eot_id|>", 128009),
    ] {
        assert_eq!(t.token_to_id(tok), Some(id), "{tok}");
        assert_eq!(
            t.encode(tok, false).unwrap().get_ids(),
            [id],
            "{tok} is matched whole in text"
        );
    }
    assert_eq!(
        t.encode("Hello world", false).unwrap().get_ids(),
        [9906, 1917]
    );
}

#[test]
fn cl100k_conversion_matches_tiktoken() {
    let t = phi4();
    // tiktoken's own documented example for cl100k_base.
    assert_eq!(
        t.encode("hello world", false).unwrap().get_ids(),
        [15339, 1917]
    );
    // Llama-3's first 100256 ids are cl100k's, so the two must agree where Llama-3 adds no longer token.
    assert_eq!(
        t.encode("Hello world", false).unwrap().get_ids(),
        llama3().encode("Hello world", false).unwrap().get_ids()
    );
    for text in [
        "Grüße, 世界! 🦀\n\n  indented\tcode() -> Result<(), E>",
        "I'll say it's 12345 apples",
        "",
    ] {
        let ids = t.encode(text, false).unwrap().get_ids().to_vec();
        assert!(
            ids.iter().all(|&i| i < 100256),
            "plain text maps into the ranks: {ids:?}"
        );
        assert_eq!(t.decode(&ids, false).unwrap(), text, "round trip");
    }
    // Digits are split in groups of at most three, contractions are their own pieces (the cl100k pattern).
    let pieces: Vec<String> = t
        .encode("12345 it's", false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| t.decode(&[i], false).unwrap())
        .collect();
    assert_eq!(pieces, ["123", "45", " it", "'s"]);
}

#[test]
fn phi4_special_tokens_have_their_ids() {
    let t = phi4();
    for (tok, id) in [
        ("<|endoftext|>", 100257),
        ("<|im_start|>", 100264),
        ("<|im_end|>", 100265),
        ("<|im_sep|>", 100266),
    ] {
        assert_eq!(t.token_to_id(tok), Some(id), "{tok}");
        assert_eq!(t.encode(tok, false).unwrap().get_ids(), [id]);
    }
    let ids = t
        .encode("<|im_start|>user<|im_sep|>Hi<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(
        (ids[0], ids[2], *ids.last().unwrap()),
        (100264, 100266, 100265)
    );
    assert_eq!(
        t.decode(&ids, true).unwrap(),
        "userHi",
        "specials are skippable"
    );
}
