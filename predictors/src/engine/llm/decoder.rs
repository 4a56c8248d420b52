//! The generation loop over a compiled decoder graph (`engine.json` = [`DecoderConfig`]): one prefill run
//! over the prompt, then one run per token, with the KV cache kept in ONNX Runtime values bound through
//! IoBinding so it never leaves the device between steps:
//! - growing cache (graphs that concatenate past and new keys): each step's `present.*` outputs are
//!   allocated by ORT on the session's device and bound, as they are, as the next step's `past_key_values.*`;
//! - shared buffer (`shared_kv_buffer`, GroupQueryAttention): one buffer per layer and K/V, bound as both
//!   past and present once; the graph grows the cache in place and reads the valid length from the attention
//!   mask. It is sized per request to what the request can use (prompt + budget, rounded up to a power of
//!   two, at most `context_length`), not to the context: a 64k-context model would otherwise hold gigabytes
//!   of cache for a short answer. With a CUDA graph it is allocated once, at `graph_kv_capacity`.
//!
//! Decoders that take `inputs_embeds` (Gemma 3) get them from the embed graph ([`EmbedStage`]), which
//! also places a prompt's image features; their `token_type_ids` (1 at image tokens in the prefill) let
//! an image's tokens attend to each other both ways. CUDA graphs are for `input_ids` decoders only.
//!
//! Only inputs the graph declares are bound (`position_ids` is supplied when declared; any other unknown
//! input is an error naming it). Logits come back to the host; only the last position's row is used.

use super::cuda_graph::{GraphShape, GraphState};
use super::embed::EmbedStage;
use super::sampling::Sampler;
use crate::engine::ort_env::{Ep, LoadedFrom, OrtRuntime, SessionOptions};
use cog_weights::format::{DecoderConfig, DecoderIo, FORMAT_VERSION};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("the graph {what}")]
    Graph { what: String },
    #[error("prompt is {len} tokens; the model's context is {context} (it must leave room for one new token)")]
    PromptTooLong { len: usize, context: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("onnx runtime: {0}")]
    Ort(String),
    #[error(transparent)]
    Env(#[from] crate::engine::ort_env::OrtEnvError),
}

pub(crate) fn ort_err(e: impl std::fmt::Display) -> DecoderError {
    DecoderError::Ort(e.to_string())
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced one of the stop (EOS) ids.
    Stop,
    /// `max_new_tokens` or the end of the context was reached.
    Length,
    Cancelled,
}

/// Per-request limits of the loop.
#[derive(Debug, Clone, Copy)]
pub struct DecodeParams<'a> {
    /// Upper bound on generated tokens; the context bounds it too.
    pub max_new_tokens: usize,
    /// Keep going through EOS ids (fixed-length runs for benchmarks).
    pub ignore_eos: bool,
    /// Image feature rows ([rows, hidden], host, compute dtype) for the prompt's image tokens, in
    /// order; only for decoders with an embed graph.
    pub image_features: Option<&'a DynValue>,
}

/// What one generation produced, with the timestamps metrics are computed from.
#[derive(Debug, Clone)]
pub struct DecodeOutcome {
    /// Generated ids, without the stop id.
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub started: Instant,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
}

pub(super) struct LayerNames {
    pub past: [String; 2],
    pub present: [String; 2],
}

struct State {
    session: Session,
    /// Present when decode steps are replayed as a CUDA graph (see `cuda_graph.rs`).
    graph: Option<GraphState>,
}

pub struct DecoderModel {
    state: Mutex<State>,
    pub config: DecoderConfig,
    layers: Vec<LayerNames>,
    inputs: HashSet<String>,
    kv_type: TensorElementType,
    device: MemoryInfo<'static>,
    pub ep: Ep,
    pub loaded_from: LoadedFrom,
    /// Present for `inputs_embeds` decoders.
    embed: Option<EmbedStage>,
}

impl DecoderModel {
    /// Reads `engine.json` in `dir` and builds the session for its graph.
    pub fn load(
        rt: &OrtRuntime,
        dir: &Path,
        opts: &SessionOptions,
    ) -> Result<DecoderModel, DecoderError> {
        let path = dir.join("engine.json");
        let cerr = |m: String| DecoderError::Config {
            path: path.display().to_string(),
            message: m,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| cerr(e.to_string()))?;
        let config: DecoderConfig = serde_json::from_str(&text).map_err(|e| cerr(e.to_string()))?;
        if config.format_version > FORMAT_VERSION {
            return Err(cerr(format!(
                "format_version {} is newer than this engine's {FORMAT_VERSION}",
                config.format_version
            )));
        }
        let kv_type = match config.kv_dtype.as_str() {
            "float32" => TensorElementType::Float32,
            "float16" => TensorElementType::Float16,
            "bfloat16" => TensorElementType::Bfloat16,
            other => {
                return Err(cerr(format!(
                    "kv_dtype {other:?} is not float32, float16 or bfloat16"
                )))
            }
        };
        let (session, loaded_from) = rt.session(&dir.join(&config.graph), opts)?;
        let io = &config.io;
        let layers: Vec<LayerNames> = (0..config.num_layers)
            .map(|i| LayerNames {
                past: [
                    DecoderIo::layer(&io.past_key, i),
                    DecoderIo::layer(&io.past_value, i),
                ],
                present: [
                    DecoderIo::layer(&io.present_key, i),
                    DecoderIo::layer(&io.present_value, i),
                ],
            })
            .collect();
        let inputs: HashSet<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs: HashSet<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        // Token ids go in as `input_ids`, or through the embed graph as `inputs_embeds`.
        let takes_ids = io.input_ids.as_ref().is_some_and(|n| inputs.contains(n));
        let embeds_name = io.inputs_embeds.clone().filter(|n| inputs.contains(n));
        let (ids_name, embed) =
            match (takes_ids, embeds_name, &config.embed) {
                (true, _, _) => (io.input_ids.clone().unwrap_or_default(), None),
                (false, Some(n), Some(e)) => (
                    n,
                    Some(EmbedStage::load(
                        rt,
                        dir,
                        e,
                        config.hidden_size,
                        kv_type,
                        opts,
                    )?),
                ),
                (false, Some(_), None) => {
                    return Err(cerr(
                        "the graph takes inputs_embeds but names no embed graph".into(),
                    ))
                }
                (false, None, _) => return Err(DecoderError::Graph {
                    what: "takes neither the `input_ids` nor the `inputs_embeds` engine.json names"
                        .into(),
                }),
            };
        let mut known: HashSet<&str> = [
            ids_name.as_str(),
            io.attention_mask.as_str(),
            "position_ids",
        ]
        .into();
        if let Some(t) = &io.token_type_ids {
            known.insert(t.as_str());
        }
        for l in &layers {
            known.extend(l.past.iter().map(String::as_str));
        }
        if let Some(unknown) = inputs.iter().find(|n| !known.contains(n.as_str())) {
            return Err(DecoderError::Graph {
                what: format!("declares input `{unknown}`, which the engine cannot supply"),
            });
        }
        let mut needed: Vec<&str> = vec![io.logits.as_str()];
        for l in &layers {
            needed.extend(l.present.iter().map(String::as_str));
        }
        if let Some(missing) = needed.iter().find(|n| !outputs.contains(**n)) {
            return Err(DecoderError::Graph {
                what: format!("has no output `{missing}` (engine.json names it)"),
            });
        }
        for l in &layers {
            if let Some(missing) = l.past.iter().find(|n| !inputs.contains(*n)) {
                return Err(DecoderError::Graph {
                    what: format!("has no input `{missing}` (engine.json names it)"),
                });
            }
        }
        let device = match rt.ep {
            Ep::Cpu => crate::engine::ort_env::host_memory(),
            Ep::Cuda => MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            ),
        }
        .map_err(ort_err)?;
        tracing::info!(graph = %config.graph, layers = config.num_layers, context = config.context_length, kv = %config.kv_dtype,
            shared_kv = config.io.shared_kv_buffer, ep = rt.ep.name(), "decoder loaded");
        let graph = if opts.cuda_graph
            && rt.ep == Ep::Cuda
            && config.io.shared_kv_buffer
            && embed.is_none()
        {
            let logits_type = session
                .outputs()
                .iter()
                .find(|o| o.name() == io.logits)
                .and_then(|o| o.dtype().tensor_type())
                .ok_or_else(|| DecoderError::Graph {
                    what: "has a non-tensor logits output".into(),
                })?;
            let alloc = Allocator::new(&session, device.clone()).map_err(ort_err)?;
            let shape = GraphShape {
                layers: &layers,
                kv_type,
                logits_type,
                kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
                context: opts
                    .graph_kv_capacity
                    .unwrap_or(config.context_length)
                    .clamp(1, config.context_length),
                vocab: config.vocab_size,
                input_ids: &ids_name,
                attention_mask: &io.attention_mask,
                logits: &io.logits,
            };
            Some(GraphState::new(&session, &alloc, &shape)?)
        } else {
            if opts.cuda_graph {
                tracing::warn!(
                    ep = rt.ep.name(),
                    shared_kv = config.io.shared_kv_buffer,
                    "CUDA graphs need the CUDA provider, a shared KV buffer and input_ids; decoding without"
                );
            }
            None
        };
        Ok(DecoderModel {
            state: Mutex::new(State { session, graph }),
            config,
            layers,
            inputs,
            kv_type,
            device,
            ep: rt.ep,
            loaded_from,
            embed,
        })
    }

    /// Runs prefill and decode. `on_token` sees every generated id (not the stop id) as soon as it is chosen;
    /// `is_cancelled` is checked before every model run.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &DecodeParams,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32),
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<DecodeOutcome, DecoderError> {
        let started = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { session, graph } = &mut *guard;
        // The sequence this request may fill: the model's context, or the captured graph's KV buffer.
        let context = graph
            .as_ref()
            .map_or(self.config.context_length, |g| g.capacity());
        if prompt.is_empty() {
            return Err(DecoderError::EmptyPrompt);
        }
        if prompt.len() >= context {
            return Err(DecoderError::PromptTooLong {
                len: prompt.len(),
                context,
            });
        }
        let budget = params.max_new_tokens.min(context - prompt.len());
        let mut out = DecodeOutcome {
            tokens: Vec::new(),
            finish: FinishReason::Length,
            started,
            first_token_at: None,
            last_token_at: None,
        };
        if budget == 0 {
            return Ok(out);
        }
        let stop: &[u32] = if params.ignore_eos {
            &[]
        } else {
            &self.config.tokens.eos_token_ids
        };
        // One model run: `input` at position `past`, returning the last position's logits.
        let mut run: Box<RunStep<'_>> = match graph {
            Some(g) => Box::new(move |input: &[u32], past: usize| {
                let logits = if past == 0 {
                    g.prefill(session, input)?
                } else {
                    g.step(session, input[0], past)?
                };
                last_row(&logits)
            }),
            None => {
                let mut binding = session.create_binding().map_err(ort_err)?;
                let capacity = (prompt.len() + budget)
                    .next_power_of_two()
                    .max(256)
                    .min(context);
                let mut kv = self.init_cache(session, &mut binding, capacity)?;
                let features = params.image_features;
                Box::new(move |input: &[u32], past: usize| {
                    self.step(session, &mut binding, &mut kv, input, past, features)
                })
            }
        };
        let mut input: Vec<u32> = prompt.to_vec();
        let mut past = 0usize;
        loop {
            if is_cancelled() {
                out.finish = FinishReason::Cancelled;
                break;
            }
            let logits = run(&input, past)?;
            past += input.len();
            let token = sampler.sample(&logits);
            let now = Instant::now();
            out.first_token_at.get_or_insert(now);
            if stop.contains(&token) {
                out.finish = FinishReason::Stop;
                break;
            }
            out.last_token_at = Some(now);
            out.tokens.push(token);
            on_token(token);
            if out.tokens.len() >= budget {
                out.finish = FinishReason::Length;
                break;
            }
            input.clear();
            input.push(token);
        }
        Ok(out)
    }

    /// Ends ONNX Runtime profiling (see `SessionOptions::profile`) and returns the profile file's path.
    pub fn end_profiling(&self) -> Result<String, DecoderError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.session.end_profiling().map_err(ort_err)
    }

    fn init_cache(
        &self,
        session: &Session,
        binding: &mut IoBinding,
        capacity: usize,
    ) -> Result<Kv, DecoderError> {
        let c = &self.config;
        if c.io.shared_kv_buffer {
            let alloc = Allocator::new(session, self.device.clone()).map_err(ort_err)?;
            let mut bufs = Vec::with_capacity(self.layers.len() * 2);
            for l in &self.layers {
                for j in 0..2 {
                    let mut t = DynTensor::new(
                        &alloc,
                        self.kv_type,
                        [1, c.num_kv_heads, capacity, c.head_dim],
                    )
                    .map_err(ort_err)?;
                    binding.bind_input(&l.past[j], &t).map_err(ort_err)?;
                    binding
                        .bind_output(&l.present[j], &mut t)
                        .map_err(ort_err)?;
                    bufs.push(t);
                }
            }
            Ok(Kv::Shared(bufs))
        } else {
            // An empty past ([1, heads, 0, head_dim]) for the prefill; afterwards the presents take its place.
            let empty = (0..self.layers.len() * 2)
                .map(|_| {
                    DynTensor::new(
                        &Allocator::default(),
                        self.kv_type,
                        [1, c.num_kv_heads, 0, c.head_dim],
                    )
                    .map(|t| t.into_dyn())
                })
                .collect::<Result<Vec<DynValue>, _>>()
                .map_err(ort_err)?;
            Ok(Kv::Growing(empty))
        }
    }

    fn step(
        &self,
        session: &mut Session,
        binding: &mut IoBinding,
        kv: &mut Kv,
        ids: &[u32],
        past: usize,
        image_features: Option<&DynValue>,
    ) -> Result<Vec<f32>, DecoderError> {
        let io = &self.config.io;
        let n = ids.len();
        // Kept alive until the run: the binding refers to them.
        let (_ids_value, _type_ids) = match &self.embed {
            Some(embed) => {
                // Image features belong to the prefill (past 0), which holds every image token.
                let features = if past == 0 { image_features } else { None };
                let embeds = embed.run(ids, features)?;
                let name = io.inputs_embeds.as_deref().unwrap_or("inputs_embeds");
                binding.bind_input(name, &embeds).map_err(ort_err)?;
                let types = match io
                    .token_type_ids
                    .as_deref()
                    .filter(|t| self.inputs.contains(*t))
                {
                    Some(name) => {
                        let t: Vec<i64> = ids
                            .iter()
                            .map(|&id| i64::from(past == 0 && embed.is_image_token(id)))
                            .collect();
                        let t = Tensor::from_array(([1usize, n], t)).map_err(ort_err)?;
                        binding.bind_input(name, &t).map_err(ort_err)?;
                        Some(t)
                    }
                    None => None,
                };
                (embeds, types)
            }
            None => {
                let ids64: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
                let input_ids = Tensor::from_array(([1usize, n], ids64)).map_err(ort_err)?;
                binding
                    .bind_input(io.input_ids.as_deref().unwrap_or("input_ids"), &input_ids)
                    .map_err(ort_err)?;
                (input_ids.into_dyn(), None)
            }
        };
        if self.inputs.contains(&io.attention_mask) {
            let mask =
                Tensor::from_array(([1usize, past + n], vec![1i64; past + n])).map_err(ort_err)?;
            binding
                .bind_input(&io.attention_mask, &mask)
                .map_err(ort_err)?;
        }
        if self.inputs.contains("position_ids") {
            let pos = Tensor::from_array((
                [1usize, n],
                (past as i64..(past + n) as i64).collect::<Vec<_>>(),
            ))
            .map_err(ort_err)?;
            binding.bind_input("position_ids", &pos).map_err(ort_err)?;
        }
        if let Kv::Growing(values) = kv {
            for (l, pair) in self.layers.iter().zip(values.chunks(2)) {
                for (j, past) in pair.iter().enumerate() {
                    binding.bind_input(&l.past[j], past).map_err(ort_err)?;
                    binding
                        .bind_output_to_device(&l.present[j], &self.device)
                        .map_err(ort_err)?;
                }
            }
        }
        let host = crate::engine::ort_env::host_memory().map_err(ort_err)?;
        binding
            .bind_output_to_device(&io.logits, &host)
            .map_err(ort_err)?;
        let mut outputs = session.run_binding(binding).map_err(ort_err)?;
        if let Kv::Growing(values) = kv {
            for (i, l) in self.layers.iter().enumerate() {
                for j in 0..2 {
                    values[i * 2 + j] = outputs
                        .remove(&l.present[j])
                        .ok_or_else(|| ort_err(format!("no output {}", l.present[j])))?;
                }
            }
        }
        let logits = outputs
            .remove(&io.logits)
            .ok_or_else(|| ort_err("no logits output"))?;
        last_row(&logits)
    }
}

/// One model run: the new ids at a position, returning the last position's logits.
type RunStep<'a> = dyn FnMut(&[u32], usize) -> Result<Vec<f32>, DecoderError> + 'a;

enum Kv {
    Growing(Vec<DynValue>),
    // The buffers are bound once; kept here so they live as long as the binding uses them.
    #[allow(dead_code)]
    Shared(Vec<DynTensor>),
}

/// The last position's logits as f32 (the graph may return f16/bf16); the row length is the graph's own
/// last dimension (it may be padded beyond the tokenizer's vocabulary).
fn last_row(v: &DynValue) -> Result<Vec<f32>, DecoderError> {
    fn tail<T: Copy>(shape: &[i64], data: &[T]) -> Result<Vec<T>, DecoderError> {
        let row = shape.last().copied().unwrap_or(0).max(0) as usize;
        if row == 0 || data.len() < row {
            return Err(ort_err(format!("logits of shape {shape:?}")));
        }
        Ok(data[data.len() - row..].to_vec())
    }
    if let Ok((s, d)) = v.try_extract_tensor::<f32>() {
        return tail(s, d);
    }
    if let Ok((s, d)) = v.try_extract_tensor::<half::f16>() {
        return Ok(tail(s, d)?.iter().map(|x| x.to_f32()).collect());
    }
    let (s, d) = v.try_extract_tensor::<half::bf16>().map_err(ort_err)?;
    Ok(tail(s, d)?.iter().map(|x| x.to_f32()).collect())
}
