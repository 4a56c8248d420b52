//! `engine.json` promises `shared_kv_buffer`: past and present bound to one buffer allocated at
//! the maximum length, grown in place by GroupQueryAttention. Checked here with IoBinding on the
//! CPU: greedy decoding through the shared buffer reproduces transformers' logits and tokens.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::quant::QuantArg;
use common::*;
use ort::memory::{Allocator, MemoryInfo};
use ort::value::Tensor;

#[test]
fn shared_kv_buffer_decodes_like_transformers() {
    let name = "smollm3";
    let g = golden(name);
    let (_tmp, dir) = compile(&fixture(name), Dtype::Fp32, QuantArg::None);
    let engine: cog_weights::format::DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    assert!(engine.io.shared_kv_buffer);
    let max_len = 32i64;
    let mut session = session(&dir.join("model.onnx"));
    let alloc = Allocator::default();
    let shape = vec![
        1i64,
        engine.num_kv_heads as i64,
        max_len,
        engine.head_dim as i64,
    ];
    let mut caches: Vec<Tensor<f32>> = (0..engine.num_layers * 2)
        .map(|_| {
            let mut t = Tensor::<f32>::new(&alloc, shape.clone()).unwrap();
            t.try_extract_tensor_mut::<f32>().unwrap().1.fill(0.0);
            t
        })
        .collect();
    let mut binding = session.create_binding().unwrap();
    for (j, t) in caches.iter_mut().enumerate() {
        let (i, kind) = (j / 2, if j % 2 == 0 { "key" } else { "value" });
        binding
            .bind_input(format!("past_key_values.{i}.{kind}"), &*t)
            .unwrap();
        binding
            .bind_output(format!("present.{i}.{kind}"), &mut *t)
            .unwrap();
    }
    binding
        .bind_output_to_device("logits", &MemoryInfo::default())
        .unwrap();

    let p = g.prompt.len();
    let mut fed = 0usize;
    let mut feed = |session: &mut ort::session::Session,
                    binding: &mut ort::session::IoBinding,
                    ids: &[i64]| {
        fed += ids.len();
        let ids_t = Tensor::from_array((vec![1i64, ids.len() as i64], ids.to_vec())).unwrap();
        let mask = Tensor::from_array((vec![1i64, fed as i64], vec![1i64; fed])).unwrap();
        binding.bind_input("input_ids", &ids_t).unwrap();
        binding.bind_input("attention_mask", &mask).unwrap();
        // Logits change shape between prefill and decode: let ORT allocate them each run.
        binding
            .bind_output_to_device("logits", &MemoryInfo::default())
            .unwrap();
        let out = session.run_binding(binding).unwrap();
        let (_, l) = out["logits"].try_extract_tensor::<f32>().unwrap();
        l.chunks(g.vocab).map(|c| c.to_vec()).collect::<Vec<_>>()
    };
    let rows = feed(&mut session, &mut binding, &g.prompt);
    for (t, (row, want)) in rows.iter().zip(&g.logits).enumerate() {
        let d = max_abs_diff(row, want);
        assert!(d <= 1e-4, "prefill position {t}: {d}");
    }
    let mut next = argmax(&rows[p - 1]) as i64;
    for (t, &want) in g.generated.iter().enumerate() {
        assert_eq!(next, want, "greedy token {t} through the shared buffer");
        if t + 1 == g.generated.len() {
            break;
        }
        let row = feed(&mut session, &mut binding, &[next]).remove(0);
        let d = max_abs_diff(&row, &g.logits[p + t]);
        assert!(d <= 1e-4, "decode step {t}: {d}");
        next = argmax(&row) as i64;
    }
}
