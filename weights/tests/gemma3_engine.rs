//! Gemma 3's decoder as the engine drives it: batched, and through the shared KV buffer (`shared_kv_buffer`: past and present bound to
//! one buffer allocated at the maximum length, grown in place by GroupQueryAttention), with an image
//! prompt: the bidirectional image attention reads the cache GQA wrote (sliced to the mask's width),
//! so prefill and greedy decoding reproduce transformers' logits and tokens (golden
//! `embeds_bidirectional`, weights/reference/gemma3_text_golden.py). A batch of two sequences, one
//! with image rows, one right-padded. And fp16 graphs (the half-precision paths bf16 shares, which
//! the CPU cannot run in bf16).

mod common;

use cog_weights::arch::Dtype;
use cog_weights::format::DecoderConfig;
use cog_weights::quant::QuantArg;
use common::*;
use ort::memory::{Allocator, MemoryInfo};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

#[test]
fn image_prompt_through_the_shared_buffer() {
    let name = "gemma3_text";
    let v = json(&fixture(name).join("golden.json"));
    let (e, b) = (&v["embeds"], &v["embeds_bidirectional"]);
    let ids = ints(&e["input_ids"]);
    let feats = floats(&e["image_features"]);
    let types = ints(&b["token_type_ids"]);
    let generated = ints(&b["generated"]);
    let vocab = ints(&b["logits_shape"])[1] as usize;
    let want: Vec<Vec<f32>> = floats(&b["logits"])
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect();

    let (_tmp, dir) = compile(&fixture(name), Dtype::Fp32, QuantArg::None);
    let engine: DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    assert!(engine.io.shared_kv_buffer);
    let mut emb = Embedder::open(&dir);
    let mut session = session(&dir.join(&engine.graph));
    let alloc = Allocator::default();
    let shape = vec![1i64, engine.num_kv_heads as i64, 32, engine.head_dim as i64];
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

    let mut fed = 0usize;
    let mut feed = |session: &mut Session, binding: &mut IoBinding, x: Vec<f32>, types: &[i64]| {
        let s = types.len();
        fed += s;
        let xt = Tensor::from_array((vec![1i64, s as i64, engine.hidden_size as i64], x)).unwrap();
        let tt = Tensor::from_array((vec![1i64, s as i64], types.to_vec())).unwrap();
        let mask = Tensor::from_array((vec![1i64, fed as i64], vec![1i64; fed])).unwrap();
        binding.bind_input("inputs_embeds", &xt).unwrap();
        binding.bind_input("token_type_ids", &tt).unwrap();
        binding.bind_input("attention_mask", &mask).unwrap();
        binding
            .bind_output_to_device("logits", &MemoryInfo::default())
            .unwrap();
        let out = session.run_binding(binding).unwrap();
        let (_, l) = out["logits"].try_extract_tensor::<f32>().unwrap();
        l.chunks(vocab).map(<[f32]>::to_vec).collect::<Vec<_>>()
    };
    let p = ids.len();
    let rows = feed(
        &mut session,
        &mut binding,
        emb.embed(&ids, &feats).unwrap(),
        &types,
    );
    for (t, (row, want)) in rows.iter().zip(&want).enumerate() {
        let d = max_abs_diff(row, want);
        assert!(d <= 1e-4, "prefill position {t}: {d}");
    }
    let mut next = argmax(&rows[p - 1]) as i64;
    for (t, &tok) in generated.iter().enumerate() {
        assert_eq!(next, tok, "greedy token {t} through the shared buffer");
        if t + 1 == generated.len() {
            break;
        }
        let x = emb.embed(&[next], &[]).unwrap();
        let row = feed(&mut session, &mut binding, x, &[0]).remove(0);
        let d = max_abs_diff(&row, &want[p + t]);
        assert!(d <= 1e-4, "decode step {t}: {d}");
        next = argmax(&row) as i64;
    }
}

/// Two sequences in one batch: the image prompt (with its token_type_ids), and the token prompt
/// right-padded. The image rows land in row 0 (masked_scatter's row-major order), image blocks are
/// found per row, and each row's logits match its own golden.
#[test]
fn batched_prefill_with_image_rows() {
    use ort::value::Tensor as OrtTensor;
    const NAME: &str = "gemma3_text";
    const TOL: f32 = 1e-4;
    let g = golden(NAME);
    let v = json(&fixture(NAME).join("golden.json"));
    let e = &v["embeds"];
    let ids0 = ints(&e["input_ids"]);
    let feats = floats(&e["image_features"]);
    // Row 0 with its token_type_ids: the bidirectional golden.
    let want0 = floats(&v["embeds_bidirectional"]["logits"]);
    let mut types = ints(&v["embeds_bidirectional"]["token_type_ids"]);
    let (s, p, h) = (ids0.len(), g.prompt.len(), 48usize);
    let mut ids = ids0.clone();
    ids.extend(
        g.prompt
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, s - p)),
    );
    let mut mask = vec![1i64; s];
    mask.extend(std::iter::repeat_n(1, p).chain(std::iter::repeat_n(0, s - p)));

    let (_tmp, dir) = compile(&fixture(NAME), Dtype::Fp32, QuantArg::None);
    let mut emb = session(&dir.join("embed.onnx"));
    let out = emb
        .run(ort::inputs![
            "input_ids" => OrtTensor::from_array((vec![2i64, s as i64], ids)).unwrap(),
            "image_features" => OrtTensor::from_array((vec![(feats.len() / h) as i64, h as i64], feats)).unwrap(),
        ])
        .unwrap();
    let (_, x) = out["inputs_embeds"].try_extract_tensor::<f32>().unwrap();
    let x = x.to_vec();
    drop(out);
    let dec = Decoder::open(&dir);
    let mut session = dec.session;
    let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
        (
            "inputs_embeds".into(),
            OrtTensor::from_array((vec![2i64, s as i64, h as i64], x))
                .unwrap()
                .into_dyn(),
        ),
        (
            "attention_mask".into(),
            OrtTensor::from_array((vec![2i64, s as i64], mask))
                .unwrap()
                .into_dyn(),
        ),
    ];
    inputs.push((
        "token_type_ids".into(),
        OrtTensor::from_array((vec![2i64, s as i64], {
            types.resize(2 * s, 0);
            types
        }))
        .unwrap()
        .into_dyn(),
    ));
    for i in 0..dec.layers {
        for n in ["key", "value"] {
            let shape = vec![2i64, dec.kv_heads as i64, 0, dec.head_dim as i64];
            inputs.push((
                format!("past_key_values.{i}.{n}"),
                OrtTensor::from_array((shape, Vec::<f32>::new()))
                    .unwrap()
                    .into_dyn(),
            ));
        }
    }
    let out = session.run(inputs).unwrap();
    let (_, logits) = out["logits"].try_extract_tensor::<f32>().unwrap();
    let vocab = g.vocab;
    for t in 0..s {
        let d = max_abs_diff(
            &logits[t * vocab..(t + 1) * vocab],
            &want0[t * vocab..(t + 1) * vocab],
        );
        assert!(d <= TOL, "row 0 (image rows) position {t}: {d}");
    }
    for t in 0..p {
        let row = &logits[(s + t) * vocab..(s + t + 1) * vocab];
        let d = max_abs_diff(row, &g.logits[t]);
        assert!(d <= TOL, "row 1 (padded) position {t}: {d}");
    }
}

/// fp16 graphs run on the CPU (bf16 ones need CUDA), so the half-precision paths (the embedding's
/// f32 multiply rounded once, the image attention's f32 softmax between casts) are checked here:
/// one prefill each of the token prompt and of the image prompt with its token_type_ids, against
/// transformers' fp32 logits, within 0.05 (fp16 activations: ~1e-3 relative error per op over
/// 6 layers), with the same top-1 wherever the fp32 top-two margin exceeds 0.1.
#[test]
fn fp16_prefill_close_to_fp32() {
    use half::f16;
    use ort::value::{DynValue, Tensor as OrtTensor};
    const NAME: &str = "gemma3_text";
    let g = golden(NAME);
    let v = json(&fixture(NAME).join("golden.json"));
    let (_tmp, dir) = compile(&fixture(NAME), Dtype::Fp16, QuantArg::None);
    let engine: DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    assert_eq!(engine.kv_dtype, "float16");
    let h = engine.hidden_size;
    let mut emb = session(&dir.join("embed.onnx"));
    let mut dec = session(&dir.join("decoder.onnx"));
    let mut run = |ids: &[i64], feats: &[f32], types: &[i64]| -> Vec<f32> {
        let s = ids.len();
        let f: Vec<f16> = feats.iter().map(|&x| f16::from_f32(x)).collect();
        let out = emb
            .run(ort::inputs![
                "input_ids" => OrtTensor::from_array((vec![1i64, s as i64], ids.to_vec())).unwrap(),
                "image_features" => OrtTensor::from_array((vec![(f.len() / h) as i64, h as i64], f)).unwrap(),
            ])
            .unwrap();
        let (_, x) = out["inputs_embeds"].try_extract_tensor::<f16>().unwrap();
        let x = x.to_vec();
        drop(out);
        let mut inputs: Vec<(String, DynValue)> = vec![
            (
                "inputs_embeds".into(),
                OrtTensor::from_array((vec![1i64, s as i64, h as i64], x))
                    .unwrap()
                    .into_dyn(),
            ),
            (
                "attention_mask".into(),
                OrtTensor::from_array((vec![1i64, s as i64], vec![1i64; s]))
                    .unwrap()
                    .into_dyn(),
            ),
            (
                "token_type_ids".into(),
                OrtTensor::from_array((vec![1i64, s as i64], types.to_vec()))
                    .unwrap()
                    .into_dyn(),
            ),
        ];
        for i in 0..engine.num_layers {
            for n in ["key", "value"] {
                let shape = vec![1i64, engine.num_kv_heads as i64, 0, engine.head_dim as i64];
                let t = OrtTensor::from_array((shape, Vec::<f16>::new())).unwrap();
                inputs.push((format!("past_key_values.{i}.{n}"), t.into_dyn()));
            }
        }
        let out = dec.run(inputs).unwrap();
        let (_, l) = out["logits"].try_extract_tensor::<f16>().unwrap();
        l.iter().map(|x| x.to_f32()).collect()
    };
    let vocab = g.vocab;
    let check = |what: &str, got: &[f32], want: &[f32]| {
        let mut worst = 0f32;
        for (t, (r, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
            let d = max_abs_diff(r, w);
            worst = worst.max(d);
            assert!(d <= 0.05, "{what} position {t}: fp16 logits differ by {d}");
            let mut top = w.to_vec();
            top.sort_by(|a, b| b.total_cmp(a));
            if top[0] - top[1] > 0.1 {
                assert_eq!(argmax(r), argmax(w), "{what} position {t}: top-1");
            }
        }
        eprintln!("gemma3_text fp16 {what}: worst logit diff {worst:e}");
    };
    let p = g.prompt.len();
    let got = run(&g.prompt, &[], &vec![0; p]);
    check("token prompt", &got, &g.logits[..p].concat());
    let (e, b) = (&v["embeds"], &v["embeds_bidirectional"]);
    let ids = ints(&e["input_ids"]);
    let got = run(
        &ids,
        &floats(&e["image_features"]),
        &ints(&b["token_type_ids"]),
    );
    check(
        "image prompt",
        &got,
        &floats(&b["logits"])[..ids.len() * vocab],
    );
}
