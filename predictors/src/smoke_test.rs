//! The smoke test of every optimised checkpoint (`cogrs weights build` with quantisation or
//! pruning): the folder just built against the unoptimised model, teacher-forced over a fixed
//! text, on ONNX Runtime. Top-1 agreement and mean KL(reference ‖ optimised) of the next-token
//! distributions ([`cog_weights::smoke`]) go into the folder as `smoke_test.json` (listed in the
//! manifest); below the thresholds the build fails and the folder is removed.
//!
//! - Reference: the same checkpoint compiled with fp32 compute, no quantisation, no pruning, in a
//!   temporary folder. Measured: the output folder itself when it is fp32, else an fp32 twin with
//!   the same quantisation and pruning (ORT's CPU provider has no bf16 kernels for these graphs;
//!   what is gated is what quantisation and pruning do, not the compute dtype).
//! - Text: [`TEXT`] (public domain) through the folder's tokenizer.json, at most [`MAX_TOKENS`]
//!   tokens; folders without a tokenizer get a fixed id sequence instead.
//! - Thresholds ([`default_thresholds`]), from the Gemma-3-270M table in BENCHMARKS.md: int8
//!   (rtn8) measured top-1 0.985 and KL 0.003 there, so quantisation-only builds must reach top-1
//!   ≥ 0.90 and KL ≤ 0.10 (a broken quantiser lands far below; 4-bit keeps some margin). Pruned
//!   builds get top-1 ≥ 0.70 and KL ≤ 0.50: some drift is the price asked for, but 25 %
//!   magnitude pruning of Gemma-3-270M (top-1 0.41, KL 2.2, perplexity ×10) is a broken model
//!   and fails. `--smoke-min-top1` / `--smoke-max-kl` override them; `--no-smoke-test` skips.
//! - Only text-decoder folders (engine.json in the decoder format) are smoke-tested; others are
//!   skipped with a note. With `--force`, a failing build has already replaced the old folder:
//!   nothing is left at the output path.

use crate::engine::ort_env::{runtime, SessionOptions};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, hash_file, BuildRequest};
use cog_weights::format::{DecoderConfig, Manifest};
use cog_weights::quant::QuantArg;
use cog_weights::smoke::{Compare, Measured, Thresholds};
use ort::value::{DynValue, Tensor};
use serde::Serialize;
use std::path::Path;

pub const REPORT: &str = "smoke_test.json";
pub const MAX_TOKENS: usize = 128;
/// The opening of the Gettysburg Address (1863), public domain.
pub const TEXT: &str =
    "Four score and seven years ago our fathers brought forth on this continent, a \
new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal. \
Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived \
and so dedicated, can long endure. We are met on a great battle-field of that war. We have come \
to dedicate a portion of that field, as a final resting place for those who here gave their lives \
that that nation might live. It is altogether fitting and proper that we should do this.";

#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error(transparent)]
    Build(#[from] cog_weights::Error),
    #[error("smoke test: running {graph}: {msg}")]
    Run { graph: String, msg: String },
    #[error("smoke test failed ({why}); {output} removed. Measured: {report}")]
    Failed {
        why: String,
        output: String,
        report: String,
    },
}

/// `smoke_test.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeReport {
    pub passed: bool,
    pub measured: Measured,
    pub thresholds: Thresholds,
    pub reference: String,
    pub optimised: String,
    /// `tokenizer.json` (the fixed text) or `fixed ids`.
    pub prompt: String,
    pub tokens: usize,
}

/// Quantisation only, or pruning (see the module docs).
pub fn default_thresholds(pruned: bool) -> Thresholds {
    match pruned {
        false => Thresholds {
            min_top1_agreement: 0.90,
            max_mean_kl: 0.10,
        },
        true => Thresholds {
            min_top1_agreement: 0.70,
            max_mean_kl: 0.50,
        },
    }
}

/// Whether the folder's manifest records quantisation or pruning.
pub fn is_optimised(m: &Manifest) -> bool {
    m.pruning.is_some()
        || m.quantization
            .iter()
            .any(|(k, v)| k != "embeddings" && v != "none")
}

/// Whether `dir` holds a text decoder (engine.json in the decoder format): the folders the smoke
/// test knows how to run.
pub fn is_decoder(dir: &Path) -> bool {
    std::fs::read(dir.join("engine.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<DecoderConfig>(&b).ok())
        .is_some()
}

/// Smoke-tests `req.output`, just built from `req` (its manifest `m`). Passing: writes
/// smoke_test.json and lists it in the manifest. Failing: removes the folder and says why.
pub fn check(
    req: &BuildRequest,
    m: &Manifest,
    thresholds: Option<Thresholds>,
) -> Result<SmokeReport, SmokeError> {
    let thresholds = thresholds.unwrap_or_else(|| default_thresholds(m.pruning.is_some()));
    let result = measure(req, m).map(|r| SmokeReport { thresholds, ..r });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&req.output);
            return Err(e);
        }
    };
    let why = thresholds.check(&report.measured);
    let report = SmokeReport {
        passed: why.is_ok(),
        ..report
    };
    let json = serde_json::to_string_pretty(&report).expect("serialisable") + "\n";
    if let Err(why) = why {
        let _ = std::fs::remove_dir_all(&req.output);
        return Err(SmokeError::Failed {
            why,
            output: req.output.display().to_string(),
            report: json,
        });
    }
    let path = req.output.join(REPORT);
    let io = |e: std::io::Error| cog_weights::Error::io(&path, e);
    std::fs::write(&path, &json).map_err(io)?;
    let mut m = m.clone();
    m.files.insert(REPORT.into(), hash_file(&path)?);
    let mp = req.output.join("manifest.json");
    let text = serde_json::to_string_pretty(&m).expect("serialisable") + "\n";
    std::fs::write(&mp, text).map_err(|e| cog_weights::Error::io(&mp, e))?;
    Ok(report)
}

fn measure(req: &BuildRequest, m: &Manifest) -> Result<SmokeReport, SmokeError> {
    let tmp = tempfile::tempdir().map_err(|e| cog_weights::Error::io(Path::new("/tmp"), e))?;
    let reference = tmp.path().join("reference");
    build(&BuildRequest {
        output: reference.clone(),
        dtype: Some(Dtype::Fp32),
        quant: Some(QuantArg::None),
        prune: None,
        force: false,
        command: vec!["smoke test reference".into()],
        ..req.clone()
    })?;
    let (optimised, what) = if m.dtype == Dtype::Fp32.name() {
        (req.output.clone(), "the output folder".to_string())
    } else {
        let twin = tmp.path().join("twin");
        build(&BuildRequest {
            output: twin.clone(),
            dtype: Some(Dtype::Fp32),
            force: false,
            command: vec!["smoke test fp32 twin".into()],
            ..req.clone()
        })?;
        (
            twin,
            format!(
                "an fp32 twin (the folder is {}, which ORT's CPU provider cannot run)",
                m.dtype
            ),
        )
    };
    let ep = reference.join("engine.json");
    let bytes = std::fs::read(&ep).map_err(|e| cog_weights::Error::io(&ep, e))?;
    let engine: DecoderConfig = serde_json::from_slice(&bytes).map_err(|e| SmokeError::Run {
        graph: ep.display().to_string(),
        msg: e.to_string(),
    })?;
    let (ids, prompt) = prompt_ids(&req.output, &engine);
    let a = logits(&reference, &engine, &ids)?;
    let b = logits(&optimised, &engine, &ids)?;
    let mut cmp = Compare::default();
    for (t, (ra, rb)) in a.iter().zip(&b).enumerate() {
        cmp.add(ra, rb, ids.get(t + 1).map(|&i| i as u32));
    }
    Ok(SmokeReport {
        passed: false,
        measured: cmp.measured(),
        thresholds: default_thresholds(false),
        reference: "fp32, no quantisation, no pruning".into(),
        optimised: what,
        prompt,
        tokens: ids.len(),
    })
}

/// [`TEXT`] through the folder's tokenizer (with its special tokens), else a fixed sequence
/// spread over the vocabulary; at most [`MAX_TOKENS`] and the context length.
fn prompt_ids(dir: &Path, engine: &DecoderConfig) -> (Vec<i64>, String) {
    let max = MAX_TOKENS.min(engine.context_length);
    if let Ok(tok) = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")) {
        if let Ok(enc) = tok.encode(TEXT, true) {
            let ids: Vec<i64> = enc.get_ids().iter().take(max).map(|&i| i as i64).collect();
            if ids.len() > 1 {
                return (ids, "tokenizer.json".into());
            }
        }
    }
    let v = engine.vocab_size as i64;
    let ids = (0..max as i64).map(|i| (i * 7919 + 13) % v).collect();
    (ids, "fixed ids".into())
}

/// Logits rows of a whole sequence in one call (empty KV cache), fp32 folders only.
fn logits(dir: &Path, engine: &DecoderConfig, ids: &[i64]) -> Result<Vec<Vec<f32>>, SmokeError> {
    let run_err = |graph: &str| {
        let graph = dir.join(graph).display().to_string();
        move |e: &dyn std::fmt::Display| SmokeError::Run {
            graph: graph.clone(),
            msg: e.to_string(),
        }
    };
    let err = run_err(&engine.graph);
    let rt = runtime().map_err(|e| err(&e))?;
    let opts = SessionOptions {
        no_cache: true,
        ..Default::default()
    };
    let seq = ids.len();
    let ids_t = Tensor::from_array((vec![1i64, seq as i64], ids.to_vec())).map_err(|e| err(&e))?;
    let mut inputs: Vec<(String, DynValue)> = Vec::new();
    match (&engine.embed, &engine.io.inputs_embeds) {
        (Some(e), Some(name)) => {
            let eerr = run_err(&e.graph);
            let (mut s, _) = rt
                .session(&dir.join(&e.graph), &opts)
                .map_err(|x| eerr(&x))?;
            let feats = Tensor::<f32>::from_array((vec![0i64, engine.hidden_size as i64], vec![]))
                .map_err(|x| eerr(&x))?;
            let out = s
                .run(vec![
                    (e.input_ids.clone(), ids_t.into_dyn()),
                    (e.image_features.clone(), feats.into_dyn()),
                ])
                .map_err(|x| eerr(&x))?;
            let (shape, data) = out[e.inputs_embeds.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|x| eerr(&x))?;
            let t = Tensor::from_array((shape.to_vec(), data.to_vec())).map_err(|x| eerr(&x))?;
            inputs.push((name.clone(), t.into_dyn()));
        }
        _ => {
            let name = engine.io.input_ids.clone().unwrap_or("input_ids".into());
            inputs.push((name, ids_t.into_dyn()));
        }
    }
    let ones =
        Tensor::from_array((vec![1i64, seq as i64], vec![1i64; seq])).map_err(|e| err(&e))?;
    inputs.push((engine.io.attention_mask.clone(), ones.into_dyn()));
    if let Some(name) = &engine.io.token_type_ids {
        let z =
            Tensor::from_array((vec![1i64, seq as i64], vec![0i64; seq])).map_err(|e| err(&e))?;
        inputs.push((name.clone(), z.into_dyn()));
    }
    let shape = vec![1i64, engine.num_kv_heads as i64, 0, engine.head_dim as i64];
    for i in 0..engine.num_layers {
        for pat in [&engine.io.past_key, &engine.io.past_value] {
            let t = Tensor::<f32>::from_array((shape.clone(), vec![])).map_err(|e| err(&e))?;
            inputs.push((pat.replace("{i}", &i.to_string()), t.into_dyn()));
        }
    }
    let (mut s, _) = rt
        .session(&dir.join(&engine.graph), &opts)
        .map_err(|e| err(&e))?;
    let out = s.run(inputs).map_err(|e| err(&e))?;
    let (_, data) = out[engine.io.logits.as_str()]
        .try_extract_tensor::<f32>()
        .map_err(|e| err(&e))?;
    Ok(data
        .chunks(engine.vocab_size)
        .map(<[f32]>::to_vec)
        .collect())
}

/// `cogrs weights build`'s smoke-test flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SmokeArgs {
    /// Skip the smoke test of a quantised or pruned build.
    #[arg(long)]
    pub no_smoke_test: bool,
    /// Smoke test: the least top-1 agreement with the unoptimised model (default 0.90; 0.70 when
    /// pruned).
    #[arg(long)]
    pub smoke_min_top1: Option<f64>,
    /// Smoke test: the largest mean KL(unoptimised ‖ optimised), nats (default 0.10; 0.50 when
    /// pruned).
    #[arg(long)]
    pub smoke_max_kl: Option<f64>,
}

/// `cogrs weights build`: cog-weights' build, then, when the folder is quantised or pruned, the
/// smoke test.
pub fn build_command(
    args: cog_weights::cli::BuildArgs,
    smoke: SmokeArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let req = BuildRequest {
        input: args.checkpoint.clone(),
        output: args.output.clone(),
        dtype: args.dtype,
        quant: args.quant,
        force: false,
        prune: args.prune_request(),
        command: vec![],
    };
    cog_weights::cli::run(cog_weights::cli::WeightsCommand::Build(args))?;
    let mp = req.output.join("manifest.json");
    let bytes = std::fs::read(&mp).map_err(|e| cog_weights::Error::io(&mp, e))?;
    let m: Manifest = serde_json::from_slice(&bytes)?;
    if smoke.no_smoke_test || !is_optimised(&m) {
        return Ok(());
    }
    if !is_decoder(&req.output) {
        println!("smoke test: skipped (not a text-decoder folder; it compares next-token logits)");
        return Ok(());
    }
    let pruned = m.pruning.is_some();
    let d = default_thresholds(pruned);
    let t = Thresholds {
        min_top1_agreement: smoke.smoke_min_top1.unwrap_or(d.min_top1_agreement),
        max_mean_kl: smoke.smoke_max_kl.unwrap_or(d.max_mean_kl),
    };
    let r = check(&req, &m, Some(t))?;
    println!(
        "smoke test passed: top-1 agreement {:.4} (≥ {}), mean KL {:.4} nats (≤ {}) over {} tokens; see {REPORT}",
        r.measured.top1_agreement,
        t.min_top1_agreement,
        r.measured.mean_kl,
        t.max_mean_kl,
        r.tokens
    );
    Ok(())
}
