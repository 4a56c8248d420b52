//! The incremental detokenizer on real vocabularies: streamed chunks never contain a broken character and
//! concatenate to the full decode; an unfinished character at the end is flushed, not lost.

use cog_predictors::engine::llm::detok::IncrementalDecoder;
use std::path::Path;
use tokenizers::Tokenizer;

fn stream(t: &Tokenizer, ids: &[u32]) -> (Vec<String>, Option<String>) {
    let mut d = IncrementalDecoder::new(t, false);
    let chunks = ids.iter().filter_map(|&i| d.push(i).unwrap()).collect();
    (chunks, d.finish().unwrap())
}

const TEXT: &str = "Grüße 🦀 世界! naïve café — “quotes” and 12345 <|eot_id|> done";

#[test]
fn llama3_stream_equals_full_decode() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/engine/llama3/tokenizer.json");
    assert!(
        p.exists(),
        "{} is missing: run `scripts/setup` first",
        p.display()
    );
    let t = Tokenizer::from_file(p).unwrap();
    let ids = t.encode(TEXT, false).unwrap().get_ids().to_vec();
    assert!(ids.contains(&128009));
    let (chunks, tail) = stream(&t, &ids);
    assert_eq!(tail, None);
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    assert_eq!(chunks.concat(), TEXT);
    assert!(chunks.len() > 10, "streams piece by piece: {chunks:?}");
}

#[test]
fn byte_tokens_hold_back_partial_characters() {
    let t = Tokenizer::from_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-decoder/tokenizer.json"),
    )
    .unwrap();
    // One token per byte: "🦀" is four tokens, and nothing may be emitted before the fourth.
    let ids: Vec<u32> = "a🦀b".bytes().map(u32::from).collect();
    let mut d = IncrementalDecoder::new(&t, false);
    let out: Vec<Option<String>> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    assert_eq!(
        out,
        [
            Some("a".into()),
            None,
            None,
            None,
            Some("🦀".into()),
            Some("b".into())
        ]
    );
    // Generation ending inside a character: the held bytes come out (lossily) from finish().
    let ids: Vec<u32> = "x世".bytes().take(3).map(u32::from).collect();
    let (chunks, tail) = stream(&t, &ids);
    assert_eq!(chunks, ["x"]);
    assert_eq!(tail.as_deref(), Some("\u{FFFD}"));
}
