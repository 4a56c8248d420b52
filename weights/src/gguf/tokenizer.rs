//! Rebuilds a Hugging Face `tokenizer.json` (byte-level BPE) and the chat template from GGUF
//! `tokenizer.*` metadata, so a GGUF-built folder looks like one built from a checkpoint folder.

use super::reader::{Gguf, Value};
use crate::arch::DecoderSpec;
use crate::Error;
use serde_json::{json, Map};

/// llama.cpp token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// (file name, bytes) for tokenizer.json, tokenizer_config.json, chat_template.jinja (when the
/// GGUF has one) and generation_config.json.
pub fn files(g: &Gguf, spec: &DecoderSpec) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let bad = |msg: String| super::metadata_error(g, msg);
    super::require_tokenizer_model(g, "", "gpt2", "byte-level BPE")?;
    let strings = |k: &str| -> Result<Vec<String>, Error> {
        g.metadata
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("metadata {k} is missing")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{k} holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match g
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(a) => a
            .iter()
            .map(|v| match v {
                Value::Int(i) => *i,
                Value::UInt(u) => *u as i64,
                _ => 1,
            })
            .collect(),
        None => vec![1; tokens.len()],
    };

    let pre = g
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "default" | "gpt2" => byte_level,
        // SmolLM (StarCoder-style): every digit is its own pre-token, then GPT-2's byte-level split.
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        other => {
            return Err(Error::Unsupported(format!(
                "{}: pre-tokenizer {other:?} (supported: gpt2, smollm)",
                g.path.display()
            )))
        }
    };

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == CONTROL || ty == USER_DEFINED {
            added.push(
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == CONTROL}),
            );
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });

    let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
    let template = g
        .metadata
        .get("tokenizer.chat_template")
        .and_then(Value::as_str);
    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("GPT2Tokenizer"));
    cfg.insert("bos_token".into(), json!(name_of(spec.bos_token_id)));
    cfg.insert(
        "eos_token".into(),
        json!(name_of(spec.eos_token_ids.first().copied())),
    );
    cfg.insert("pad_token".into(), json!(name_of(spec.pad_token_id)));
    // Whether encoding prepends BOS/EOS is the engine's call; pass the GGUF's flags on.
    for (k, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(Value::Bool(b)) = g.metadata.get(key) {
            cfg.insert(k.into(), json!(b));
        }
    }
    if let Some(t) = template {
        cfg.insert("chat_template".into(), json!(t));
    }
    let generation = json!({
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_ids,
        "pad_token_id": spec.pad_token_id,
    });

    let pretty = |v: &serde_json::Value| {
        let mut s = serde_json::to_string_pretty(v).expect("serialisable");
        s.push('\n');
        s.into_bytes()
    };
    let mut out = vec![
        ("tokenizer.json".to_string(), pretty(&tokenizer)),
        (
            "tokenizer_config.json".to_string(),
            pretty(&serde_json::Value::Object(cfg)),
        ),
        ("generation_config.json".to_string(), pretty(&generation)),
    ];
    if let Some(t) = template {
        out.push(("chat_template.jinja".to_string(), t.as_bytes().to_vec()));
    }
    Ok(out)
}
