//! LoRA files in both key layouts, written here with the `safetensors` crate, normalise to the same
//! layers; fused kohya projections split as diffusers splits them (their ΔW rows concatenate back
//! to the fused ΔW); alpha/rank becomes the scale; malformed files are refused with the reason.

use cog_predictors::engine::diffusion::lora::{self, Layout, LoraError, Matrix};
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;

/// A deterministic pseudo-random matrix (values in [-1, 1)).
fn mat(rows: usize, cols: usize, seed: u32) -> Matrix {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let data = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Matrix { rows, cols, data }
}

enum Enc {
    F32,
    F16,
    Bf16,
}

/// Serialises named tensors (matrices, or scalars for alpha) as a safetensors file.
fn write(tensors: Vec<(String, Vec<usize>, Vec<f32>)>, enc: Enc) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tensors
        .into_iter()
        .map(|(k, shape, v)| {
            let (b, d) = match enc {
                Enc::F32 => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::F32),
                Enc::F16 => (
                    v.iter()
                        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                        .collect(),
                    Dtype::F16,
                ),
                Enc::Bf16 => (
                    v.iter()
                        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    Dtype::BF16,
                ),
            };
            (k, shape, b, d)
        })
        .collect();
    let views: BTreeMap<String, TensorView> = bytes
        .iter()
        .map(|(k, s, b, d)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn m(key: &str, x: &Matrix) -> (String, Vec<usize>, Vec<f32>) {
    (key.to_string(), vec![x.rows, x.cols], x.data.clone())
}

fn scalar(key: &str, v: f32) -> (String, Vec<usize>, Vec<f32>) {
    (key.to_string(), vec![], vec![v])
}

fn close(a: &Matrix, b: &Matrix, tol: f32) {
    assert_eq!((a.rows, a.cols), (b.rows, b.cols));
    for (x, y) in a.data.iter().zip(&b.data) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

const H: usize = 8; // hidden size of the synthetic transformer

#[test]
fn peft_and_kohya_layouts_give_the_same_layers() {
    let (a_q, b_q) = (mat(4, H, 1), mat(H, 4, 2));
    let (a_ff, b_ff) = (mat(2, H, 3), mat(4 * H, 2, 4));
    let peft = write(
        vec![
            m(
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                &a_q,
            ),
            m(
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
                &b_q,
            ),
            m(
                "transformer.single_transformer_blocks.5.proj_mlp.lora_A.weight",
                &a_ff,
            ),
            m(
                "transformer.single_transformer_blocks.5.proj_mlp.lora_B.weight",
                &b_ff,
            ),
        ],
        Enc::F32,
    );
    // kohya with diffusers module names flattened, alpha = rank/2 and rank → scales 0.5 and 1
    let kohya = write(
        vec![
            m(
                "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight",
                &a_q,
            ),
            m(
                "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight",
                &b_q,
            ),
            scalar("lora_unet_transformer_blocks_0_attn_to_q.alpha", 2.0),
            m(
                "lora_unet_single_transformer_blocks_5_proj_mlp.lora_down.weight",
                &a_ff,
            ),
            m(
                "lora_unet_single_transformer_blocks_5_proj_mlp.lora_up.weight",
                &b_ff,
            ),
        ],
        Enc::F32,
    );
    let p = lora::from_bytes(&peft).unwrap();
    let k = lora::from_bytes(&kohya).unwrap();
    assert_eq!((p.layout, k.layout), (Layout::Peft, Layout::Kohya));
    let names: Vec<&str> = p.layers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "single_transformer_blocks.5.proj_mlp",
            "transformer_blocks.0.attn.to_q"
        ]
    );
    assert_eq!(
        p.layers.keys().collect::<Vec<_>>(),
        k.layers.keys().collect::<Vec<_>>()
    );
    let q = "transformer_blocks.0.attn.to_q";
    assert_eq!((p.layers[q].scale, k.layers[q].scale), (1.0, 0.5));
    assert_eq!(p.layers[q].down, k.layers[q].down);
    assert_eq!(p.layers[q].up, k.layers[q].up);
    assert_eq!(k.layers["single_transformer_blocks.5.proj_mlp"].scale, 1.0);
    assert_eq!((p.max_rank(), k.max_rank()), (4, 4));
    // ΔW = scale · B·A
    let want = b_q.matmul(&a_q);
    close(&p.layers[q].delta(), &want, 0.0);
}

#[test]
fn bfl_fused_projections_split_like_diffusers() {
    let r = 6;
    let (a_qkv, b_qkv) = (mat(r, H, 5), mat(3 * H, r, 6));
    let (a_l1, b_l1) = (mat(r, H, 7), mat(7 * H, r, 8)); // [q; k; v; mlp (4H)]
    let (a_ada, b_ada) = (mat(r, H, 9), mat(2 * H, r, 10));
    let file = write(
        vec![
            m(
                "lora_unet_double_blocks_2_txt_attn_qkv.lora_down.weight",
                &a_qkv,
            ),
            m(
                "lora_unet_double_blocks_2_txt_attn_qkv.lora_up.weight",
                &b_qkv,
            ),
            scalar("lora_unet_double_blocks_2_txt_attn_qkv.alpha", 3.0),
            m("lora_unet_single_blocks_1_linear1.lora_down.weight", &a_l1),
            m("lora_unet_single_blocks_1_linear1.lora_up.weight", &b_l1),
            m(
                "lora_unet_double_blocks_0_img_mod_lin.lora_down.weight",
                &a_qkv,
            ),
            m(
                "lora_unet_double_blocks_0_img_mod_lin.lora_up.weight",
                &b_qkv,
            ),
            m(
                "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight",
                &a_ada,
            ),
            m(
                "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight",
                &b_ada,
            ),
            m(
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &a_qkv,
            ),
            m(
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                &b_qkv,
            ),
        ],
        Enc::F32,
    );
    let l = lora::from_bytes(&file).unwrap();
    assert_eq!(
        l.skipped.len(),
        2,
        "text-encoder keys are reported, not used"
    );
    let fused = b_qkv.matmul(&a_qkv);
    for (i, name) in ["add_q_proj", "add_k_proj", "add_v_proj"]
        .iter()
        .enumerate()
    {
        let layer = &l.layers[&format!("transformer_blocks.2.attn.{name}")];
        assert_eq!(layer.scale, 0.5, "alpha 3 / rank 6");
        assert_eq!(layer.down, a_qkv, "A is shared by the split parts");
        let rows = Matrix {
            rows: H,
            cols: H,
            data: fused.data[i * H * H..(i + 1) * H * H].to_vec(),
        };
        close(&layer.up.matmul(&layer.down), &rows, 1e-6);
    }
    let mut row = 0;
    for (name, n) in [
        ("attn.to_q", H),
        ("attn.to_k", H),
        ("attn.to_v", H),
        ("proj_mlp", 4 * H),
    ] {
        let layer = &l.layers[&format!("single_transformer_blocks.1.{name}")];
        assert_eq!((layer.up.rows, layer.scale), (n, 1.0), "{name}");
        assert_eq!(layer.up.data, b_l1.data[row * r..(row + n) * r], "{name}");
        row += n;
    }
    assert!(l.layers.contains_key("transformer_blocks.0.norm1.linear"));
    // BFL's final modulation is (shift, scale); diffusers' norm_out.linear is (scale, shift).
    let ada = &l.layers["norm_out.linear"];
    assert_eq!(ada.up.data[..H * r], b_ada.data[H * r..]);
    assert_eq!(ada.up.data[H * r..], b_ada.data[..H * r]);
    assert_eq!(l.layers.len(), 3 + 4 + 1 + 1);
}

#[test]
fn half_precision_files_convert_exactly() {
    let (a, b) = (mat(2, H, 11), mat(H, 2, 12));
    for (enc, round) in [
        (
            Enc::F16,
            (|x: f32| f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (Enc::Bf16, |x: f32| bf16::from_f32(x).to_f32()),
    ] {
        let file = write(
            vec![
                m("transformer.proj_out.lora_A.weight", &a),
                m("transformer.proj_out.lora_B.weight", &b),
            ],
            enc,
        );
        let l = lora::from_bytes(&file).unwrap();
        let got = &l.layers["proj_out"];
        assert_eq!(
            got.down.data,
            a.data.iter().map(|x| round(*x)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn malformed_files_are_refused_with_the_reason() {
    let (a, b) = (mat(4, H, 13), mat(H, 4, 14));
    let bad_rank = write(
        vec![
            m("transformer.x_embedder.lora_A.weight", &a),
            m("transformer.x_embedder.lora_B.weight", &mat(H, 3, 1)),
        ],
        Enc::F32,
    );
    assert!(matches!(
        lora::from_bytes(&bad_rank),
        Err(LoraError::Rank { .. })
    ));
    let unknown = write(
        vec![
            m(
                "transformer.transformer_blocks.0.attn.to_qq.lora_A.weight",
                &a,
            ),
            m(
                "transformer.transformer_blocks.0.attn.to_qq.lora_B.weight",
                &b,
            ),
        ],
        Enc::F32,
    );
    assert!(matches!(
        lora::from_bytes(&unknown),
        Err(LoraError::UnknownModule(_))
    ));
    let unpaired = write(
        vec![m("transformer.x_embedder.lora_A.weight", &a)],
        Enc::F32,
    );
    assert!(matches!(
        lora::from_bytes(&unpaired),
        Err(LoraError::Unpaired(_))
    ));
    let mixed = write(
        vec![
            m("transformer.x_embedder.lora_A.weight", &a),
            m("lora_unet_img_in.lora_down.weight", &a),
        ],
        Enc::F32,
    );
    assert!(matches!(
        lora::from_bytes(&mixed),
        Err(LoraError::MixedLayouts)
    ));
    let unsplittable = write(
        vec![
            m(
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                &a,
            ),
            m(
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                &mat(10, 4, 2),
            ),
        ],
        Enc::F32,
    );
    assert!(matches!(
        lora::from_bytes(&unsplittable),
        Err(LoraError::Split { .. })
    ));
    assert!(matches!(
        lora::from_bytes(b"not safetensors"),
        Err(LoraError::Format(_))
    ));
    let empty = write(vec![m("model.weight", &a)], Enc::F32);
    assert!(lora::from_bytes(&empty).is_err());
}

/// A kohya/sd-scripts file converted by diffusers' own `_convert_kohya_flux_lora_to_diffusers`
/// (weights/reference/flux_lora_golden.py): every module's ΔW = scale · B·A equals diffusers' B·A
/// (diffusers folds alpha/rank into the weights; block-sparse fused qkv takes its chunked path).
#[test]
fn kohya_conversion_equals_diffusers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/diffusion/");
    let l = lora::load(std::path::Path::new(&format!(
        "{dir}lora_kohya.safetensors"
    )))
    .unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}lora_kohya.json")).unwrap())
            .unwrap();
    let deltas = golden["deltas"].as_object().unwrap();
    let mut names: Vec<&String> = deltas.keys().collect();
    names.sort();
    assert_eq!(
        l.layers.keys().collect::<Vec<_>>(),
        names,
        "the same target modules"
    );
    for (module, want) in deltas {
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let data = want["delta"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let want = Matrix {
            rows: shape[0],
            cols: shape[1],
            data,
        };
        close(&l.layers[module].delta(), &want, 1e-5);
    }
}
