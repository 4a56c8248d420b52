//! `smollm3`: SmolLM3-3B text generation with `think` / `no_think` modes (HQQ-quantized when
//! compiled with `--quant hqq8`/`hqq4`). Without weights it serves the default small model.

use crate::engine::llm::{GenerateRequest, Generator, SamplingConfig, TemplateOptions};
use crate::text;
use cog_runtime::schemars::JsonSchema;
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Think,
    NoThink,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    /// The user's message
    #[schemars(length(min = 1))]
    pub prompt: String,
    /// An optional system message
    pub system_prompt: Option<String>,
    /// `think` reasons step by step before answering; `no_think` answers directly
    #[serde(default = "think")]
    pub mode: Mode,
    /// Most tokens to generate (the model's context bounds it too)
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1, max = 16384))]
    pub max_new_tokens: i64,
    /// Sampling temperature; 0 is greedy
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0, max = 2))]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this
    #[serde(default = "default_top_p")]
    #[schemars(range(min = 0, max = 1))]
    pub top_p: f64,
    /// Random seed; the same seed and input give the same output. Random when omitted
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
}

fn think() -> Mode {
    Mode::Think
}
fn default_max_new_tokens() -> i64 {
    512
}
fn default_temperature() -> f64 {
    0.6
}
fn default_top_p() -> f64 {
    0.95
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The answer, without the reasoning
    pub text: String,
    /// The reasoning (empty in no_think mode)
    pub reasoning: String,
    /// The whole response as a .txt file
    pub file: Path,
}

pub struct SmolLM3 {
    generator: Generator,
}

/// The request a valid input becomes.
pub struct Valid(GenerateRequest);

impl Predictor for SmolLM3 {
    type Input = Input;
    type Valid = Valid;
    type Output = Output;
    const STREAMING: bool = true;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        Ok(SmolLM3 {
            generator: text::load(ctx)?,
        })
    }

    fn validate(&self, input: Input) -> Result<Valid, InputError> {
        let request = text::ChatRequest {
            prompt: input.prompt,
            system_prompt: input.system_prompt,
            template: TemplateOptions {
                // SmolLM3's template reads `enable_thinking`; templates without a think mode
                // ignore it.
                enable_thinking: Some(input.mode == Mode::Think),
                ..Default::default()
            },
            max_new_tokens: input.max_new_tokens,
            sampling: SamplingConfig {
                temperature: input.temperature as f32,
                top_k: None,
                top_p: Some(input.top_p as f32),
                seed: input.seed.map(|s| s as u64),
            },
        };
        text::chat(&self.generator, request).map(Valid)
    }

    fn predict(&self, input: Valid, ctx: &PredictContext) -> Result<Output, PredictError> {
        let answer = text::run(&self.generator, &input.0, ctx, "response.txt")?;
        Ok(Output {
            text: answer.answer,
            reasoning: answer.reasoning,
            file: answer.file,
        })
    }
}
