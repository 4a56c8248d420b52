//! The FLUX transformer graph against diffusers (weights/reference/flux_transformer_golden.py):
//! a tiny random FluxTransformer2DModel, fixed inputs, LoRA off / LoRA 1 / LoRA 2 / both.
//!
//! Tolerances: fp32 graphs ≤ 1e-4 max abs on `sample` (|sample| ≤ ~8 here) when built with torch's
//! timestep frequency table (measured ≤ 1.3e-5: float32 summation order). With the graph's own,
//! correctly rounded table (3 of 128 entries 1 ulp from torch's vectorised expf, at arguments up
//! to 1000·guidance = 3500) the difference grows: measured 4e-5 without LoRA and 1.65e-4 with the
//! LoRAs (larger activations), so those runs are bounded by 5e-5 × peak |sample|. Switching LoRAs in
//! one session must give bit-identical results to the first run of the same binding (CPU, one
//! thread). Quantised, fp16 and bf16 graphs: flux_transformer_dtypes.rs.

mod common;
mod flux_common;

use cog_weights::arch::flux::slots::{BindError, Slots};
use cog_weights::arch::flux::{
    build_transformer, embed, AttentionKind, LoraSlotSpec, RopeKind, TransformerOptions,
};
use cog_weights::arch::Dtype;
use cog_weights::quant::Scheme;
use common::{fixture, max_abs_diff, session};
use flux_common::*;
use std::collections::BTreeMap;

#[test]
fn fp32_matches_diffusers_without_lora() {
    let g = Golden::load();
    for kind in [
        AttentionKind::Plain,
        AttentionKind::MultiHead,
        AttentionKind::Onnx23,
    ] {
        for torch_table in [true, false] {
            for rope in [RopeKind::Exact, RopeKind::Fused] {
                let opts = TransformerOptions {
                    attention: kind,
                    rope,
                    time_frequencies: torch_table.then(|| g.torch_frequencies()),
                    ..TransformerOptions::new(Dtype::Fp32)
                };
                let (_tmp, dir, engine) = compile(&opts);
                assert!(engine.lora.is_none());
                let mut s = session(&dir.join(&engine.graph));
                assert!(s.inputs().iter().all(|i| !i.name().starts_with("lora")));
                let got = run(&mut s, model_inputs(&g), vec![]);
                let what = format!("fp32 {kind:?} {rope:?}, torch's table {torch_table}, LoRA off");
                check(&what, &got, &g.sample("off"), TOL);
            }
        }
    }
}

#[test]
fn time_frequencies_within_one_ulp_of_torch() {
    let g = Golden::load();
    let ours = embed::time_frequencies(256);
    let torch = g.torch_frequencies();
    assert_eq!(ours.len(), torch.len());
    let mut off = 0;
    for (j, (a, b)) in ours.iter().zip(&torch).enumerate() {
        let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
        assert!(ulps <= 1, "frequency {j}: {a} vs torch {b} ({ulps} ulp)");
        off += (ulps != 0) as usize;
    }
    eprintln!("{off} of {} frequencies 1 ulp from torch's", ours.len());
}

#[test]
fn lora_slots_switch_in_one_session() {
    let g = Golden::load();
    let (l1, l2) = (
        load_lora("lora_peft.safetensors"),
        load_lora("lora_kohya.safetensors"),
    );
    assert_eq!((l1.max_rank(), l2.max_rank()), (4, 2));
    let both = Slots::pack(&[&l1, &l2]).expect("packing");
    let only1 = Slots::pack(&[&l1]).expect("packing");
    let spec = LoraSlotSpec::from_slots(&both);
    let fix = fixture("flux_transformer");
    let from_files = LoraSlotSpec::from_lora_files(&[
        &fix.join("lora_peft.safetensors"),
        &fix.join("lora_kohya.safetensors"),
    ])
    .unwrap();
    assert_eq!(from_files, spec);
    let opts = TransformerOptions {
        lora: Some(spec.clone()),
        time_frequencies: Some(g.torch_frequencies()),
        ..TransformerOptions::new(Dtype::Fp32)
    };
    let (_tmp, dir, engine) = compile(&opts);
    let io = engine
        .lora
        .as_ref()
        .expect("LoRA slots in transformer.json");
    assert_eq!(io.rank, 6);
    let names: Vec<&str> = io.modules.iter().map(|m| m.module.as_str()).collect();
    assert_eq!(
        names
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        spec.modules.iter().map(String::as_str).collect()
    );
    let mut s = session(&dir.join(&engine.graph));

    // (label, slots bound, per-LoRA scales, golden case)
    let sequence: Vec<(&str, &Slots, Vec<f32>, &str)> = vec![
        ("both packed, off", &both, vec![0.0, 0.0], "off"),
        ("both packed, LoRA 1", &both, g.scales("lora1"), "lora1"),
        ("both packed, LoRA 2", &both, g.scales("lora2"), "lora2"),
        ("both packed, both", &both, g.scales("both"), "both"),
        (
            "LoRA 1 alone (rank 4)",
            &only1,
            vec![g.scales("lora1")[0]],
            "lora1",
        ),
        ("both packed, off", &both, vec![0.0, 0.0], "off"),
        ("both packed, both", &both, g.scales("both"), "both"),
        ("both packed, LoRA 1", &both, g.scales("lora1"), "lora1"),
        (
            "LoRA 1 alone (rank 4)",
            &only1,
            vec![g.scales("lora1")[0]],
            "lora1",
        ),
        ("both packed, LoRA 2", &both, g.scales("lora2"), "lora2"),
    ];
    let mut first: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (label, slots, scales, case) in sequence {
        let got = run(
            &mut s,
            model_inputs(&g),
            slot_inputs(&engine, slots, &scales),
        );
        check(label, &got, &g.sample(case), TOL);
        match first.get(label) {
            None => {
                first.insert(label.to_string(), got);
            }
            Some(prev) => assert!(
                prev == &got,
                "{label}: differs from its first run after switching (max {:e})",
                max_abs_diff(prev, &got)
            ),
        }
    }

    // A fresh session gives the same numbers as the switched one.
    let mut fresh = session(&dir.join(&engine.graph));
    let got = run(
        &mut fresh,
        model_inputs(&g),
        slot_inputs(&engine, &both, &g.scales("both")),
    );
    assert!(got == first["both packed, both"], "fresh session differs");

    // With the graph's own frequency table (see the header for the bound).
    let opts = TransformerOptions {
        time_frequencies: None,
        ..opts
    };
    let (_tmp2, dir, engine) = compile(&opts);
    let mut s = session(&dir.join(&engine.graph));
    for case in ["off", "lora1", "lora2", "both"] {
        let want = g.sample(case);
        let got = run(
            &mut s,
            model_inputs(&g),
            slot_inputs(&engine, &both, &g.scales(case)),
        );
        let what = format!("own table, {case} (peak {:.2})", peak(&want));
        check(&what, &got, &want, 5e-5 * peak(&want));
    }
}

/// q/k/v (and a single block's MLP input) as one product give what separate products give, with
/// LoRA branches on parts of the fused product and with 8-bit weights.
#[test]
fn fused_projections_match_separate() {
    let g = Golden::load();
    let (l1, l2) = (
        load_lora("lora_peft.safetensors"),
        load_lora("lora_kohya.safetensors"),
    );
    let both = Slots::pack(&[&l1, &l2]).unwrap();
    for scheme in [Scheme::None, Scheme::Rtn { bits: 8, block: 32 }] {
        let mut outs = Vec::new();
        for fuse in [true, false] {
            let opts = TransformerOptions {
                lora: Some(LoraSlotSpec::from_slots(&both)),
                blocks: scheme,
                fuse_projections: fuse,
                ..TransformerOptions::new(Dtype::Fp32)
            };
            let (_tmp, dir, engine) = compile(&opts);
            let mut s = session(&dir.join(&engine.graph));
            let slots = slot_inputs(&engine, &both, &g.scales("both"));
            outs.push(run(&mut s, model_inputs(&g), slots));
        }
        check(
            &format!("fused vs separate projections, {}", scheme.label()),
            &outs[0],
            &outs[1],
            1e-5,
        );
    }
}

/// LoRAs that adapt a module the graph has no slot for are refused at binding time, not ignored.
#[test]
fn bindings_refuse_modules_without_slots() {
    let (l1, l2) = (
        load_lora("lora_peft.safetensors"),
        load_lora("lora_kohya.safetensors"),
    );
    let only1 = Slots::pack(&[&l1]).unwrap();
    let both = Slots::pack(&[&l1, &l2]).unwrap();
    let opts = TransformerOptions {
        lora: Some(LoraSlotSpec::from_slots(&only1)),
        ..TransformerOptions::new(Dtype::Fp32)
    };
    let (_tmp, _dir, engine) = compile(&opts);
    let io = engine.lora.as_ref().unwrap();
    assert_eq!(io.modules.len(), l1.layers.len());
    let err = both.bindings(io, &[1.0, 1.0]).unwrap_err();
    assert!(matches!(err, BindError::NoSlot(_)), "{err}");
    assert!(matches!(
        only1.bindings(io, &[1.0, 1.0]).unwrap_err(),
        BindError::Scales { got: 2, want: 1 }
    ));
    let ok = only1.bindings(io, &[0.5]).unwrap();
    assert_eq!(ok.len(), 2 * io.modules.len() + 1);
    assert_eq!(ok.last().unwrap().data, vec![0.5; 4]);
}

#[test]
fn slot_spec_must_name_linears_of_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = LoraSlotSpec {
        rank: 2,
        ..Default::default()
    };
    // The tiny model has 2 double blocks; block 5 is not there.
    spec.modules.insert("transformer_blocks.5.attn.to_q".into());
    let opts = TransformerOptions {
        lora: Some(spec),
        ..TransformerOptions::new(Dtype::Fp32)
    };
    let err = build_transformer(&fixture("flux_transformer"), tmp.path(), &opts).unwrap_err();
    assert!(
        err.to_string().contains("transformer_blocks.5.attn.to_q"),
        "{err}"
    );
}
