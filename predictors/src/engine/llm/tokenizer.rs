//! Tokenizers: a model folder's `tokenizer.json` (HF `tokenizers`), and a converter from tiktoken rank
//! files (`<base64 bytes> <rank>` per line) to an equivalent `tokenizer.json`, for vocabularies that are
//! published only in that form (Phi-4 uses cl100k plus its own specials).

use base64::Engine as _;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("loading {path}: {message}")]
    Load { path: String, message: String },
    #[error("tiktoken ranks line {line}: {message}")]
    Ranks { line: usize, message: String },
}

pub fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let path = dir.join("tokenizer.json");
    Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// cl100k_base's pre-tokenisation pattern (tiktoken's `openai_public.py`).
pub const CL100K_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Phi-4's special tokens on top of cl100k (models.md; the remaining ids up to 100351 are unnamed dummies).
pub const PHI4_SPECIALS: &[(&str, u32)] = &[
    ("<|endoftext|>", 100257),
    ("<|im_start|>", 100264),
    ("<|im_end|>", 100265),
    ("<|im_sep|>", 100266),
];

/// Builds a `tokenizer.json` document equivalent to a tiktoken encoding: byte-level BPE whose merges are
/// every split of every token into two tokens, ordered by the merged token's rank — the order in which
/// tiktoken merges — and `ignore_merges` (tiktoken takes a whole pre-token that is in the vocabulary as is).
pub fn tiktoken_to_tokenizer_json(
    ranks: &str,
    specials: &[(&str, u32)],
    pattern: &str,
) -> Result<serde_json::Value, TokenizerError> {
    let b2u = byte_to_unicode();
    let mut by_rank: Vec<(Vec<u8>, u32)> = Vec::new();
    for (i, line) in ranks
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let err = |m: String| TokenizerError::Ranks {
            line: i + 1,
            message: m,
        };
        let (b64, rank) = line
            .split_once(' ')
            .ok_or_else(|| err("expected `<base64> <rank>`".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| err(e.to_string()))?;
        by_rank.push((
            bytes,
            rank.trim()
                .parse()
                .map_err(|e: std::num::ParseIntError| err(e.to_string()))?,
        ));
    }
    let rank_of: HashMap<&[u8], u32> = by_rank.iter().map(|(b, r)| (b.as_slice(), *r)).collect();
    // (merged rank, left rank, right rank, left, right): sorting orders merges as tiktoken applies them.
    type Merge<'a> = (u32, u32, u32, &'a [u8], &'a [u8]);
    let mut merges: Vec<Merge> = Vec::new();
    for (tok, rank) in &by_rank {
        for split in 1..tok.len() {
            let (l, r) = tok.split_at(split);
            if let (Some(&rl), Some(&rr)) = (rank_of.get(l), rank_of.get(r)) {
                merges.push((*rank, rl, rr, l, r));
            }
        }
    }
    merges.sort_unstable();
    let unicode = |b: &[u8]| b.iter().map(|x| b2u[*x as usize]).collect::<String>();
    // Specials go into the model's vocabulary too: `tokenizers` gives an added token that the model does not
    // know the next free id, ignoring the id in the file (cl100k leaves 100256 unused, so ids would shift).
    let vocab: serde_json::Map<String, serde_json::Value> = by_rank
        .iter()
        .map(|(b, r)| (unicode(b), (*r).into()))
        .chain(specials.iter().map(|(s, id)| (s.to_string(), (*id).into())))
        .collect();
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| serde_json::json!([unicode(m.3), unicode(m.4)]))
        .collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .map(|(s, id)| serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    Ok(serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges}
    }))
}

/// Loads a tokenizer from a tiktoken rank file (see [`tiktoken_to_tokenizer_json`]).
pub fn from_tiktoken(
    path: &Path,
    specials: &[(&str, u32)],
    pattern: &str,
) -> Result<Tokenizer, TokenizerError> {
    let load_err = |m: String| TokenizerError::Load {
        path: path.display().to_string(),
        message: m,
    };
    let ranks = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
    let json = tiktoken_to_tokenizer_json(&ranks, specials, pattern)?;
    json.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| load_err(e.to_string()))
}

/// GPT-2's reversible map from bytes to printable characters (the alphabet of byte-level BPE vocabularies).
fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid")
        };
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        let m = byte_to_unicode();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn tiktoken_conversion_merges_by_rank() {
        // A toy encoding: bytes a, b, c; then "ab" (rank 3), "abc" (4), "bc" (5).
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ranks = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} {i}", b64(s)))
            .collect::<Vec<_>>()
            .join("\n");
        let json = tiktoken_to_tokenizer_json(&ranks, &[("<|end|>", 6)], CL100K_PATTERN).unwrap();
        let tok: Tokenizer = json.to_string().parse().unwrap();
        let ids = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
        assert_eq!(ids("abc"), [4]);
        assert_eq!(ids("bca"), [5, 0]);
        // "abcbc": a+b merges first (rank 3 < 5), then ab+c (4), leaving b+c (5).
        assert_eq!(ids("abcbc"), [4, 5]);
        assert_eq!(ids("ab<|end|>"), [3, 6]);
        assert_eq!(tok.decode(&[4, 5], false).unwrap(), "abcbc");
    }
}
