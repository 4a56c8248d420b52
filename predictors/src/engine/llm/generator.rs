//! The API the language-model predictors call: load a compiled decoder folder once, then render the chat,
//! tokenize, generate with streaming text chunks, and report the text, why it stopped, the seed and metrics.

use super::decoder::{DecodeParams, DecoderError, DecoderModel, FinishReason};
use super::detok::IncrementalDecoder;
use super::sampling::{Sampler, SamplingConfig};
use super::template::{ChatMessage, ChatTemplate, TemplateError, TemplateOptions};
use super::tokenizer::{self, TokenizerError};
use crate::engine::ort_env::{self, LoadedFrom, SessionOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Decoder(#[from] DecoderError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("{0} has no chat template; pass a raw prompt")]
    NoTemplate(PathBuf),
    #[error(transparent)]
    Env(#[from] ort_env::OrtEnvError),
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub session: SessionOptions,
    /// Run a short generation at load, so the first request does not pay for lazy device setup
    /// (cuBLAS handles, kernel selection, arena growth): about a second on CUDA.
    pub warm_up: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            session: SessionOptions::default(),
            warm_up: true,
        }
    }
}

/// The prompt: chat messages rendered through the model's template, or text used as is.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat {
        messages: Vec<ChatMessage>,
        template: TemplateOptions,
    },
    Raw(String),
    /// Already tokenized (a multimodal prompt whose image tokens the caller expanded); `text` is
    /// what the ids encode, for logs and `prompt_text`.
    Tokens {
        text: String,
        ids: Vec<u32>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Upper bound on generated tokens; the context length bounds it too.
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Drop special tokens from the text (false keeps e.g. `<think>` when the vocabulary marks it special).
    pub skip_special_tokens: bool,
    /// Generate through EOS ids until `max_new_tokens` (fixed-length benchmark runs).
    pub ignore_eos: bool,
}

/// Token counts and timings of one generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub input_token_count: usize,
    /// Generated tokens, not counting the stop token.
    pub output_token_count: usize,
    /// Seconds from the call to the first generated token (template, tokenizer and prefill included).
    pub time_to_first_token: f64,
    /// Decode rate: tokens after the first divided by the time since the first (0 with fewer than two).
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The RNG seed used (chosen at random when the request gave none).
    pub seed: u64,
    pub metrics: Metrics,
    /// The exact prompt text the model saw.
    pub prompt_text: String,
}

pub struct Generator {
    dir: PathBuf,
    decoder: DecoderModel,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
}

impl Generator {
    /// Loads `engine.json`, the graph (through the optimised-model cache), `tokenizer.json` and the chat
    /// template (optional: without one only raw prompts work).
    pub fn load(dir: &Path, opts: &EngineOptions) -> Result<Generator, GenerateError> {
        let rt = ort_env::runtime()?;
        let tokenizer = tokenizer::load(dir)?;
        let template = match ChatTemplate::from_dir(dir) {
            Ok(t) => Some(t),
            Err(TemplateError::Missing(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let decoder = DecoderModel::load(rt, dir, &opts.session)?;
        let g = Generator {
            dir: dir.to_path_buf(),
            decoder,
            tokenizer,
            template,
        };
        if opts.warm_up {
            g.warm_up()?;
        }
        Ok(g)
    }

    /// Prefill of a two-token prompt plus one decode step, greedy, output discarded.
    pub fn warm_up(&self) -> Result<(), GenerateError> {
        let t = std::time::Instant::now();
        let params = DecodeParams {
            max_new_tokens: 2,
            ignore_eos: true,
            image_features: None,
        };
        let mut sampler = Sampler::new(&SamplingConfig::default());
        self.decoder
            .generate(&[0, 0], &params, &mut sampler, &mut |_| {}, &|| false)?;
        tracing::info!(ms = t.elapsed().as_millis() as u64, "decoder warmed up");
        Ok(())
    }

    /// Ends ONNX Runtime profiling (enabled by `SessionOptions::profile`); returns the profile's path.
    pub fn end_profiling(&self) -> Result<String, GenerateError> {
        Ok(self.decoder.end_profiling()?)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The folder's `engine.json`, as loaded.
    pub fn config(&self) -> &cog_weights::format::DecoderConfig {
        &self.decoder.config
    }

    pub fn context_length(&self) -> usize {
        self.decoder.config.context_length
    }

    pub fn loaded_from(&self) -> &LoadedFrom {
        &self.decoder.loaded_from
    }

    /// The prompt text the request renders to.
    pub fn render(&self, prompt: &Prompt) -> Result<String, GenerateError> {
        match prompt {
            Prompt::Raw(s) => Ok(s.clone()),
            Prompt::Tokens { text, .. } => Ok(text.clone()),
            Prompt::Chat { messages, template } => {
                let t = self
                    .template
                    .as_ref()
                    .ok_or_else(|| GenerateError::NoTemplate(self.dir.clone()))?;
                Ok(t.render(messages, template)?)
            }
        }
    }

    /// Token ids of the rendered prompt. Templates write their own BOS, so no special tokens are added
    /// (as transformers' `apply_chat_template` does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| GenerateError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Generates. `on_chunk` receives the text as it becomes complete (the chunks concatenate to
    /// `Generation::text`); `is_cancelled` is polled before every model run.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_chunk: &mut dyn FnMut(&str),
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, GenerateError> {
        self.generate_with_images(req, None, on_chunk, is_cancelled)
    }

    /// [`Generator::generate`] for a prompt with image tokens: `image_features` ([rows, hidden],
    /// host, the model's compute dtype, e.g. from [`crate::engine::vision::VisionModel`]) fill them in
    /// order. Only models with an embed graph take images.
    pub fn generate_with_images(
        &self,
        req: &GenerateRequest,
        image_features: Option<&ort::value::DynValue>,
        on_chunk: &mut dyn FnMut(&str),
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, GenerateError> {
        let start = Instant::now();
        let prompt_text = self.render(&req.prompt)?;
        let ids = match &req.prompt {
            Prompt::Tokens { ids, .. } => ids.clone(),
            _ => self.encode(&prompt_text)?,
        };
        let mut sampler = Sampler::new(&req.sampling);
        let mut detok = IncrementalDecoder::new(&self.tokenizer, req.skip_special_tokens);
        let mut text = String::new();
        let mut detok_err = None;
        let mut emit = |id: u32| match detok.push(id) {
            Ok(Some(chunk)) => {
                on_chunk(&chunk);
                text.push_str(&chunk);
            }
            Ok(None) => {}
            Err(e) => detok_err = Some(e.to_string()),
        };
        let out = self.decoder.generate(
            &ids,
            &DecodeParams {
                max_new_tokens: req.max_new_tokens,
                ignore_eos: req.ignore_eos,
                image_features,
            },
            &mut sampler,
            &mut emit,
            is_cancelled,
        )?;
        if let Some(e) = detok_err {
            return Err(GenerateError::Tokenize(e));
        }
        if let Some(rest) = detok
            .finish()
            .map_err(|e| GenerateError::Tokenize(e.to_string()))?
        {
            on_chunk(&rest);
            text.push_str(&rest);
        }
        let ttft = out.first_token_at.map(|t| t - start).unwrap_or_default();
        let decode_time = match (out.first_token_at, out.last_token_at) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => Duration::ZERO,
        };
        let after_first = out.tokens.len().saturating_sub(1);
        let metrics = Metrics {
            input_token_count: ids.len(),
            output_token_count: out.tokens.len(),
            time_to_first_token: ttft.as_secs_f64(),
            tokens_per_second: if after_first > 0 && !decode_time.is_zero() {
                after_first as f64 / decode_time.as_secs_f64()
            } else {
                0.0
            },
        };
        Ok(Generation {
            text,
            token_ids: out.tokens,
            finish_reason: out.finish,
            seed: sampler.seed(),
            metrics,
            prompt_text,
        })
    }
}

#[cfg(test)]
mod tests {
    /// Predictors keep one Generator and call it from the runtime's worker threads.
    #[test]
    fn generator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Generator>();
    }
}
