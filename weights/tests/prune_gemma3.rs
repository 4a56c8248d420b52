//! The Gemma 3 filter map (weights/recipes/gemma3.prune.json) decides on real Gemma 3 tensor names,
//! and a pass through it touches only what it allows and reports the rest as skipped.

use cog_weights::checkpoint::Tensor;
use cog_weights::prune::{self, Decision, FilterMap, Method};
use std::path::Path;

fn map() -> FilterMap {
    FilterMap::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/gemma3.prune.json"))
        .expect("the Gemma 3 filter map loads")
}

/// Both the multimodal checkpoint's names (transformers ≥ 4.52) and the text-only ones (Gemma3ForCausalLM,
/// as the GGUF reader names Gemma-3-270M's tensors).
const PREFIXES: [&str; 2] = ["model.language_model.layers", "model.layers"];

#[test]
fn allows_qkv_up_down_of_the_language_model() {
    let m = map();
    for p in PREFIXES {
        for layer in [0, 5, 33] {
            for t in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                let name = format!("{p}.{layer}.{t}.weight");
                assert!(m.decide(&name).allowed(), "{name}: {:?}", m.decide(&name));
            }
        }
    }
}

fn denied_by(m: &FilterMap, name: &str) -> String {
    match m.decide(name) {
        Decision::Denied { pattern, .. } => pattern,
        other => panic!("{name} should be denied, got {other:?}"),
    }
}

#[test]
fn denies_embeddings_lm_head_norms_o_proj_gate_and_vision() {
    let m = map();
    let cases = [
        ("model.language_model.embed_tokens.weight", "*embed_tokens*"),
        ("model.embed_tokens.weight", "*embed_tokens*"),
        ("lm_head.weight", "*lm_head*"),
        ("model.language_model.norm.weight", "*norm*"),
        (
            "model.language_model.layers.0.input_layernorm.weight",
            "*norm*",
        ),
        (
            "model.language_model.layers.0.post_attention_layernorm.weight",
            "*norm*",
        ),
        (
            "model.language_model.layers.0.pre_feedforward_layernorm.weight",
            "*norm*",
        ),
        (
            "model.language_model.layers.0.post_feedforward_layernorm.weight",
            "*norm*",
        ),
        (
            "model.language_model.layers.0.self_attn.q_norm.weight",
            "*norm*",
        ),
        (
            "model.language_model.layers.0.self_attn.k_norm.weight",
            "*norm*",
        ),
        (
            "model.language_model.layers.0.self_attn.o_proj.weight",
            "*.self_attn.o_proj.*",
        ),
        (
            "model.layers.17.self_attn.o_proj.weight",
            "*.self_attn.o_proj.*",
        ),
        (
            "model.language_model.layers.0.mlp.gate_proj.weight",
            "*.mlp.gate_proj.*",
        ),
        // The vision tower has q/k/v projections too: the deny wins over the q/k/v allow rules.
        (
            "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "*vision_tower*",
        ),
        (
            "model.vision_tower.vision_model.encoder.layers.26.self_attn.v_proj.weight",
            "*vision_tower*",
        ),
        (
            "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
            "*vision_tower*",
        ),
        (
            "model.vision_tower.vision_model.embeddings.patch_embedding.weight",
            "*vision_tower*",
        ),
        (
            "model.multi_modal_projector.mm_input_projection_weight",
            "*multi_modal_projector*",
        ),
    ];
    for (name, pattern) in cases {
        assert_eq!(denied_by(&m, name), pattern, "{name}");
    }
}

#[test]
fn names_outside_the_map_are_not_in_map() {
    let m = map();
    for name in [
        "model.language_model.layers.0.self_attn.q_proj.bias",
        "model.language_model.rotary_emb.inv_freq",
        "something.else",
    ] {
        assert_eq!(m.decide(name), Decision::NotInMap, "{name}");
    }
}

#[test]
fn a_pass_touches_only_allowed_tensors_and_reports_every_one() {
    let m = map();
    let values = |n: usize| (1..=n).map(|i| i as f32 * 0.25 - 3.1).collect::<Vec<_>>();
    let names = [
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.layers.0.self_attn.o_proj.weight",
        "model.language_model.embed_tokens.weight",
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "model.language_model.layers.0.mlp.down_proj.weight",
        "unmapped.weight",
    ];
    let original: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| (n.to_string(), Tensor::new(vec![4, 6], values(24))))
        .collect();
    for method in [
        Method::Magnitude { sparsity: 0.5 },
        Method::Structured { sparsity: 0.5 },
    ] {
        let mut ts = original.clone();
        let reports = prune::prune(&mut ts, &m, method).unwrap();
        assert_eq!(reports.len(), names.len());
        for ((r, (name, t)), (_, before)) in reports.iter().zip(&ts).zip(&original) {
            assert_eq!(&r.name, name);
            if r.decision.allowed() {
                assert!(r.skipped.is_none(), "{name}");
                assert_eq!(r.sparsity, 0.5, "{name} {method:?}");
                assert_eq!(r.zeroed, 12, "{name} {method:?}");
            } else {
                assert_eq!(t, before, "{name} must be untouched");
                assert_eq!(r.zeroed, 0);
                let why = r.skipped.as_deref().unwrap();
                if name == "unmapped.weight" {
                    assert!(why.contains("not in the filter map"), "{why}");
                } else {
                    assert!(why.starts_with("denied by"), "{why}");
                }
            }
        }
    }
}

#[test]
fn the_builtin_map_is_the_recipe_file() {
    assert_eq!(FilterMap::builtin("gemma3"), Some(map()));
    assert_eq!(FilterMap::builtin("no-such-model"), None);
}

#[test]
fn a_summary_totals_the_pass() {
    let m = map();
    let mut ts = vec![
        (
            "model.layers.0.mlp.up_proj.weight".to_string(),
            Tensor::new(vec![4, 5], (1..=20).map(|i| i as f32).collect()),
        ),
        (
            "model.layers.0.self_attn.o_proj.weight".to_string(),
            Tensor::new(vec![2, 5], vec![1.0; 10]),
        ),
    ];
    let reports = prune::prune(&mut ts, &m, Method::Magnitude { sparsity: 0.25 }).unwrap();
    let s = prune::summarize(&reports);
    assert_eq!((s.tensors, s.pruned_tensors, s.skipped_tensors), (2, 1, 1));
    assert_eq!(
        (s.pruned_params, s.pruned_zeros, s.total_params),
        (20, 5, 30)
    );
    assert_eq!(s.sparsity_of_pruned, 0.25);
    assert_eq!(s.zeroed_fraction_of_total, 5.0 / 30.0);
}

#[test]
fn bad_maps_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.json");
    std::fs::write(&p, r#"{"model": "x", "allow": [], "deny": []}"#).unwrap();
    let e = FilterMap::load(&p).unwrap_err().to_string();
    assert!(e.contains("m.json") && e.contains("no allow rules"), "{e}");
    std::fs::write(
        &p,
        r#"{"model": "x", "allow": [{"pattern": "*"}], "deny": []}"#,
    )
    .unwrap();
    let e = FilterMap::load(&p).unwrap_err().to_string();
    assert!(e.contains("m.json") && e.contains("why"), "{e}");
}

/// Every tensor name of a Gemma-3-4b-it checkpoint (34 text layers, 27 SigLIP layers), in the Hub
/// file's naming (`language_model.model.…`) and in transformers ≥ 4.52's (`model.language_model.…`).
fn gemma3_4b_names(text: &str, vision: &str, projector: &str, lm_head: &str) -> Vec<String> {
    let mut n = vec![
        format!("{text}.embed_tokens.weight"),
        format!("{text}.norm.weight"),
        lm_head.to_string(),
        format!("{projector}.mm_input_projection_weight"),
        format!("{projector}.mm_soft_emb_norm.weight"),
        format!("{vision}.embeddings.patch_embedding.weight"),
        format!("{vision}.embeddings.patch_embedding.bias"),
        format!("{vision}.embeddings.position_embedding.weight"),
        format!("{vision}.post_layernorm.weight"),
        format!("{vision}.post_layernorm.bias"),
    ];
    for i in 0..34 {
        for t in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            n.push(format!("{text}.layers.{i}.{t}.weight"));
        }
    }
    for j in 0..27 {
        for t in [
            "layer_norm1",
            "layer_norm2",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "mlp.fc1",
            "mlp.fc2",
        ] {
            for p in ["weight", "bias"] {
                n.push(format!("{vision}.encoder.layers.{j}.{t}.{p}"));
            }
        }
    }
    n
}

#[test]
fn every_gemma3_4b_tensor_has_an_explicit_decision() {
    let m = map();
    for (text, vision, projector, lm_head) in [
        (
            "language_model.model",
            "vision_tower.vision_model",
            "multi_modal_projector",
            "language_model.lm_head.weight",
        ),
        (
            "model.language_model",
            "model.vision_tower.vision_model",
            "model.multi_modal_projector",
            "lm_head.weight",
        ),
    ] {
        let names = gemma3_4b_names(text, vision, projector, lm_head);
        let mut allowed = Vec::new();
        for name in &names {
            match m.decide(name) {
                Decision::Allowed { .. } => allowed.push(name.clone()),
                Decision::Denied { .. } => {}
                Decision::NotInMap => panic!("{name} is in no rule of the Gemma 3 map"),
            }
        }
        // q, k, v, up, down of each of the 34 text layers, and nothing else.
        assert_eq!(allowed.len(), 34 * 5, "{text}");
        assert!(allowed.iter().all(|n| n.starts_with(text)), "{allowed:?}");
        for suffix in [
            "q_proj.weight",
            "k_proj.weight",
            "v_proj.weight",
            "up_proj.weight",
            "down_proj.weight",
        ] {
            assert_eq!(
                allowed.iter().filter(|n| n.ends_with(suffix)).count(),
                34,
                "{suffix}"
            );
        }
    }
}
