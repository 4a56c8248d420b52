use super::*;
use serde_json::json;

fn parse(v: Value) -> Result<Gemma3Spec, Error> {
    Gemma3Spec::from_json(&v, Path::new("config.json"))
}

/// google/gemma-3-4b-it's config.json (transformers 4.50 layout; vision_config shortened): the text
/// config names only what differs from Gemma3TextConfig's defaults.
#[test]
fn gemma_3_4b_it_multimodal_config() {
    let s = parse(json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
        "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024
        },
        "torch_dtype": "bfloat16",
        "vision_config": {"hidden_size": 1152, "image_size": 896, "model_type": "siglip_vision_model",
                          "num_hidden_layers": 27, "patch_size": 14}
    }))
    .unwrap();
    assert_eq!((s.hidden, s.intermediate, s.layers), (2560, 10240, 34));
    assert_eq!(
        (s.heads, s.kv_heads, s.head_dim, s.vocab),
        (8, 4, 256, 262_208)
    );
    assert_eq!(s.query_pre_attn_scalar, 256.0);
    assert_eq!(s.sliding_window, 1024);
    // 5 sliding layers, then a global one.
    assert_eq!(
        s.layer_types
            .iter()
            .filter(|t| **t == LayerType::Full)
            .count(),
        5
    );
    assert_eq!(s.layer_types[5], LayerType::Full);
    assert_eq!(s.layer_types[6], LayerType::Sliding);
    assert_eq!(s.rope_global.theta, 1e6);
    assert_eq!(
        s.rope_global.scaling,
        Some(RopeScaling::Linear { factor: 8.0 })
    );
    assert_eq!(
        s.rope_local,
        Rope {
            theta: 1e4,
            scaling: None
        }
    );
    assert_eq!(s.image_token_id, Some(262_144));
    assert_eq!(s.eos_token_ids, vec![1, 106]);
    assert_eq!((s.bos_token_id, s.pad_token_id), (Some(2), Some(0)));
    assert!(s.tied);
    assert_eq!(s.final_logit_softcapping, None);
    assert_eq!(s.context_length, 131_072);
}

/// transformers 5 writes `rope_parameters` per layer type and `layer_types` explicitly.
#[test]
fn transformers_5_text_config() {
    let s = parse(json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "query_pre_attn_scalar": 256, "sliding_window": 512, "vocab_size": 262144,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}
        },
        "final_logit_softcapping": 30.0, "eos_token_id": [1, 106]
    }))
    .unwrap();
    assert_eq!(
        s.layer_types,
        vec![LayerType::Sliding, LayerType::Full, LayerType::Sliding]
    );
    assert_eq!(s.rope_global.theta, 5e5);
    assert_eq!(
        s.rope_global.scaling,
        Some(RopeScaling::Linear { factor: 4.0 })
    );
    assert_eq!(s.rope_local.theta, 2e4);
    assert_eq!(s.final_logit_softcapping, Some(30.0));
    assert_eq!(s.image_token_id, None);
    assert_eq!(s.eos_token_ids, vec![1, 106]);
}

#[test]
fn old_sliding_window_pattern() {
    let s = parse(json!({
        "model_type": "gemma3_text", "num_hidden_layers": 8, "sliding_window_pattern": 4,
        "rope_theta": 1e6, "rope_local_base_freq": 1e4
    }))
    .unwrap();
    let full: Vec<usize> = (0..8)
        .filter(|&i| s.layer_types[i] == LayerType::Full)
        .collect();
    assert_eq!(full, vec![3, 7]);
    assert_eq!(s.rope_global.scaling, None);
}

#[test]
fn refuses_what_the_graph_cannot_express() {
    let e = parse(json!({"model_type": "gemma3_text", "attn_logit_softcapping": 50.0}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("attn_logit_softcapping"), "{e}");
    let e = parse(json!({"model_type": "gemma3_text", "hidden_activation": "silu"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gelu_pytorch_tanh"), "{e}");
    let e = parse(json!({"model_type": "gemma3_text", "num_hidden_layers": 2,
                         "layer_types": ["sliding_attention"]}))
    .unwrap_err()
    .to_string();
    assert!(e.contains("layer_types"), "{e}");
    let e = parse(json!({"model_type": "gemma3_text",
                         "rope_parameters": {"full_attention": {"rope_type": "yarn"}}}))
    .unwrap_err()
    .to_string();
    assert!(e.contains("yarn"), "{e}");
}
