//! FLUX's two tokenizers, built from the real vocabularies setup fetches
//! (scripts/setup.d/diffusion-tokenizers), encoding prompts as diffusers' `FluxPipeline` does:
//! CLIP-L byte-level BPE padded/truncated to 77 ids (`<|startoftext|>` … `<|endoftext|>`, padded
//! with `<|endoftext|>`), and T5 v1.1 Unigram to 512 ids (`</s>` appended, padded with `<pad>`).

use serde_json::json;
use std::path::Path;
use std::str::FromStr;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// CLIP-L's context (FluxPipeline's `tokenizer_max_length`).
pub const CLIP_LEN: usize = 77;
/// FluxPipeline's `max_sequence_length` for T5 (its default and its maximum).
pub const T5_LEN: usize = 512;
pub const CLIP_BOS: u32 = 49406;
pub const CLIP_EOS: u32 = 49407;
pub const CLIP_VOCAB: usize = 49408;
/// CLIP uses the first 48894 merges of bpe_simple_vocab_16e6 (49152 − 256 − 2, as its
/// SimpleTokenizer reads `merges[1:49152-256-2+1]`).
const CLIP_MERGES: usize = 49152 - 256 - 2;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error(
        "{path}: {err} (run scripts/setup, which fetches FLUX's tokenizers into .cache/diffusion/)"
    )]
    Missing { path: String, err: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
    #[error("tokenizing: {0}")]
    Encode(String),
}

/// A prompt's ids, padded to the encoder's length, and whether the prompt was cut to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// A tokenizer set to pad and truncate to one fixed length.
pub struct FixedLength {
    inner: Tokenizer,
    len: usize,
}

impl FixedLength {
    fn new(mut inner: Tokenizer, len: usize, pad_id: u32, pad_token: &str) -> Result<Self, String> {
        inner
            .with_truncation(Some(TruncationParams {
                max_length: len,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(|e| e.to_string())?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.to_string(),
        }));
        Ok(FixedLength { inner, len })
    }

    /// The prompt's ids (with the special tokens), exactly `len` of them.
    pub fn encode(&self, prompt: &str) -> Result<Tokens, TokenizeError> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        debug_assert_eq!(ids.len(), self.len);
        Ok(Tokens {
            ids,
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// The underlying tokenizer (vocabulary lookups, decoding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }
}

/// GPT-2/CLIP's reversible byte → printable-character table, in CLIP's vocabulary order.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter()
        .map(|c| char::from_u32(c).expect("valid char"))
        .collect()
}

/// CLIP-L's tokenizer from open_clip's `bpe_simple_vocab_16e6.txt` (the merges list): the vocabulary
/// is the 256 byte characters, the same with `</w>`, one entry per merge, then the two specials —
/// the construction of CLIP's SimpleTokenizer and of Hugging Face's `vocab.json` for CLIP. The
/// normaliser, pre-tokeniser and post-processor are those transformers' CLIPTokenizer builds.
pub fn clip(bpe_path: &Path) -> Result<FixedLength, TokenizeError> {
    let shown = bpe_path.display().to_string();
    let text = std::fs::read_to_string(bpe_path).map_err(|err| TokenizeError::Missing {
        path: shown.clone(),
        err,
    })?;
    let merges: Vec<&str> = text.split('\n').skip(1).take(CLIP_MERGES).collect();
    let invalid = |msg: String| TokenizeError::Invalid {
        path: shown.clone(),
        msg,
    };
    if merges.len() != CLIP_MERGES || merges.iter().any(|m| m.split(' ').count() != 2) {
        return Err(invalid(format!(
            "expected {CLIP_MERGES} merges of two symbols"
        )));
    }
    let byte_chars = bytes_to_unicode();
    let mut vocab: Vec<String> = byte_chars.iter().map(|c| c.to_string()).collect();
    vocab.extend(byte_chars.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    if vocab.len() != CLIP_VOCAB {
        return Err(invalid(format!(
            "vocabulary of {} entries, not {CLIP_VOCAB}",
            vocab.len()
        )));
    }
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, v)| (v.clone(), json!(i)))
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(CLIP_BOS, "<|startoftext|>"), special(CLIP_EOS, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", CLIP_EOS],
            "cls": ["<|startoftext|>", CLIP_BOS], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab_map, "merges": merges},
    });
    let tok = Tokenizer::from_str(&spec.to_string()).map_err(|e| invalid(e.to_string()))?;
    FixedLength::new(tok, CLIP_LEN, CLIP_EOS, "<|endoftext|>").map_err(invalid)
}

/// T5 v1.1's tokenizer.json (Unigram; its post-processor appends `</s>`), padded with `<pad>` (0).
pub fn t5(tokenizer_json: &Path) -> Result<FixedLength, TokenizeError> {
    let shown = tokenizer_json.display().to_string();
    let text = std::fs::read_to_string(tokenizer_json).map_err(|err| TokenizeError::Missing {
        path: shown.clone(),
        err,
    })?;
    let invalid = |msg: String| TokenizeError::Invalid {
        path: shown.clone(),
        msg,
    };
    let tok = Tokenizer::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let pad = tok
        .token_to_id("<pad>")
        .ok_or_else(|| invalid("no <pad> token".into()))?;
    FixedLength::new(tok, T5_LEN, pad, "<pad>").map_err(invalid)
}
