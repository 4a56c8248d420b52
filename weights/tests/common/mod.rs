//! Shared by the integration tests: the ONNX Runtime environment, fixture compilation, a decoder
//! runner with a KV cache, and goldens.

#![allow(dead_code)]

use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::prune::source::PruneRequest;
use cog_weights::quant::QuantArg;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The crate folder with symlinks resolved (the workspace's `.cache/` sits beside it).
pub fn crate_dir() -> PathBuf {
    std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).expect("crate dir")
}

pub fn fixture(name: &str) -> PathBuf {
    crate_dir().join("fixtures").join(name)
}

/// ONNX Runtime's CPU library: `ORT_DYLIB_PATH`, else `.cache/onnxruntime/libonnxruntime.so`
/// as `scripts/install-ort` leaves it. Missing is a failure, not a skip: these tests are the
/// proof that the graphs run.
pub fn ort_env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate_dir().join("../.cache/onnxruntime/libonnxruntime.so"));
        assert!(
            lib.exists(),
            "ONNX Runtime library not found at {} — run scripts/setup (or scripts/install-ort), \
             or set ORT_DYLIB_PATH",
            lib.display()
        );
        ort::init_from(&lib)
            .unwrap_or_else(|e| panic!("loading {}: {e}", lib.display()))
            .with_name("cog-weights-tests")
            .build()
            .expect("ORT environment")
    })
}

pub fn session(model: &Path) -> Session {
    Session::builder(ort_env())
        .expect("session builder")
        .with_intra_threads(1)
        .expect("threads")
        .commit_from_file(model)
        .unwrap_or_else(|e| panic!("loading {}: {e}", model.display()))
}

/// Compiles `input` into a fresh temp folder; returns (guard, output dir).
pub fn compile(input: &Path, dtype: Dtype, quant: QuantArg) -> (tempfile::TempDir, PathBuf) {
    compile_with(input, dtype, quant, None)
}

/// [`compile`] with pruning.
pub fn compile_with(
    input: &Path,
    dtype: Dtype,
    quant: QuantArg,
    prune: Option<PruneRequest>,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    build(&BuildRequest {
        input: input.to_path_buf(),
        output: out.clone(),
        dtype: Some(dtype),
        quant: Some(quant),
        force: false,
        prune,
        command: vec!["test".into()],
    })
    .unwrap_or_else(|e| panic!("building {}: {e}", input.display()));
    (tmp, out)
}

pub struct Golden {
    pub prompt: Vec<i64>,
    pub generated: Vec<i64>,
    pub vocab: usize,
    /// Rows of logits over prompt + generated[..-1].
    pub logits: Vec<Vec<f32>>,
}

pub fn golden(name: &str) -> Golden {
    let p = fixture(name).join("golden.json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("golden.json")).expect("json");
    let ints = |k: &str| -> Vec<i64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let shape = ints("logits_shape");
    let vocab = shape[1] as usize;
    let flat: Vec<f32> = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Golden {
        prompt: ints("prompt"),
        generated: ints("generated"),
        vocab,
        logits: flat.chunks(vocab).map(|c| c.to_vec()).collect(),
    }
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs the compiled decoder with a growing KV cache (batch 1, fp32 graphs).
pub struct Decoder {
    pub session: Session,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// The `token_type_ids` input's name, when the graph has one (Gemma 3 with images).
    pub token_type_ids: Option<String>,
    /// Per layer (key, value), each [1, kv_heads, len, head_dim].
    cache: Vec<(Vec<f32>, Vec<f32>)>,
    pub len: usize,
}

impl Decoder {
    pub fn open(dir: &Path) -> Decoder {
        let engine: cog_weights::format::DecoderConfig =
            serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
        Decoder {
            session: session(&dir.join(&engine.graph)),
            layers: engine.num_layers,
            kv_heads: engine.num_kv_heads,
            head_dim: engine.head_dim,
            vocab: engine.vocab_size,
            token_type_ids: engine.io.token_type_ids.clone(),
            cache: vec![(Vec::new(), Vec::new()); engine.num_layers],
            len: 0,
        }
    }

    /// Feeds `ids` after the cached tokens; returns one logits row per fed token.
    pub fn step(&mut self, ids: &[i64]) -> Vec<Vec<f32>> {
        let input = Tensor::from_array((vec![1i64, ids.len() as i64], ids.to_vec()))
            .unwrap()
            .into_dyn();
        self.run("input_ids", input, &vec![0; ids.len()])
    }

    /// Feeds `seq` rows of `inputs_embeds` ([1, seq, hidden], fp32) after the cached tokens; text
    /// tokens (token_type_ids 0, where the graph takes them).
    pub fn step_embeds(&mut self, embeds: &[f32], seq: usize) -> Vec<Vec<f32>> {
        self.step_embeds_typed(embeds, &vec![0; seq])
    }

    /// [`Decoder::step_embeds`] with `token_type_ids` (1 at image tokens).
    pub fn step_embeds_typed(&mut self, embeds: &[f32], types: &[i64]) -> Vec<Vec<f32>> {
        let seq = types.len();
        let hidden = embeds.len() / seq;
        let input = Tensor::from_array((vec![1i64, seq as i64, hidden as i64], embeds.to_vec()))
            .unwrap()
            .into_dyn();
        self.run("inputs_embeds", input, types)
    }

    fn run(&mut self, first: &str, first_value: DynValue, types: &[i64]) -> Vec<Vec<f32>> {
        let seq = types.len();
        let total = self.len + seq;
        let mut inputs: Vec<(String, DynValue)> = vec![
            (first.into(), first_value),
            (
                "attention_mask".into(),
                Tensor::from_array((vec![1i64, total as i64], vec![1i64; total]))
                    .unwrap()
                    .into_dyn(),
            ),
        ];
        if let Some(name) = &self.token_type_ids {
            let t = Tensor::from_array((vec![1i64, seq as i64], types.to_vec())).unwrap();
            inputs.push((name.clone(), t.into_dyn()));
        }
        let shape = vec![
            1i64,
            self.kv_heads as i64,
            self.len as i64,
            self.head_dim as i64,
        ];
        for (i, (k, v)) in self.cache.iter().enumerate() {
            for (name, data) in [("key", k), ("value", v)] {
                inputs.push((
                    format!("past_key_values.{i}.{name}"),
                    Tensor::from_array((shape.clone(), data.clone()))
                        .unwrap()
                        .into_dyn(),
                ));
            }
        }
        let out = self.session.run(inputs).expect("run");
        let (lshape, logits) = out["logits"].try_extract_tensor::<f32>().unwrap();
        assert_eq!(&**lshape, &[1, seq as i64, self.vocab as i64]);
        let rows = logits.chunks(self.vocab).map(|c| c.to_vec()).collect();
        let mut cache = Vec::new();
        for i in 0..self.layers {
            let get = |n: String| {
                let (s, d) = out[n.as_str()].try_extract_tensor::<f32>().unwrap();
                assert_eq!(
                    &**s,
                    &[1, self.kv_heads as i64, total as i64, self.head_dim as i64]
                );
                d.to_vec()
            };
            cache.push((
                get(format!("present.{i}.key")),
                get(format!("present.{i}.value")),
            ));
        }
        drop(out);
        self.cache = cache;
        self.len = total;
        rows
    }
}

/// Runs a compiled `embed.onnx` (fp32): token ids and image feature rows in, `inputs_embeds` out.
pub struct Embedder {
    pub session: Session,
    pub hidden: usize,
}

impl Embedder {
    pub fn open(dir: &Path) -> Embedder {
        let engine: cog_weights::format::DecoderConfig =
            serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
        let embed = engine.embed.expect("engine.json names an embedding graph");
        Embedder {
            session: session(&dir.join(&embed.graph)),
            hidden: engine.hidden_size,
        }
    }

    /// `inputs_embeds` for one sequence, flattened [seq * hidden]; `features` holds whole rows.
    pub fn embed(&mut self, ids: &[i64], features: &[f32]) -> Result<Vec<f32>, ort::Error> {
        let rows = features.len() / self.hidden;
        let out = self.session.run(ort::inputs![
            "input_ids" => Tensor::from_array((vec![1i64, ids.len() as i64], ids.to_vec()))?,
            "image_features" => Tensor::from_array((vec![rows as i64, self.hidden as i64], features.to_vec()))?,
        ])?;
        let (shape, data) = out["inputs_embeds"].try_extract_tensor::<f32>()?;
        assert_eq!(&**shape, &[1, ids.len() as i64, self.hidden as i64]);
        Ok(data.to_vec())
    }
}

/// A JSON file.
pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A JSON array of integers.
pub fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// A `[rows, cols]` fp32 initializer of a compiled graph, read from its external data file.
pub fn initializer(dir: &Path, graph: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    use cog_weights::onnx::proto::ModelProto;
    use prost::Message;
    let model = ModelProto::decode(&*std::fs::read(dir.join(graph)).unwrap()).unwrap();
    let t = model
        .graph
        .unwrap()
        .initializer
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{graph} has no initializer {name}"));
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .unwrap()
            .value
            .clone()
    };
    let data = std::fs::read(dir.join(get("location"))).unwrap();
    let (off, len): (usize, usize) = (
        get("offset").parse().unwrap(),
        get("length").parse().unwrap(),
    );
    let vals = data[off..off + len]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.dims.iter().map(|&d| d as usize).collect(), vals)
}
