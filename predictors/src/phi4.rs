//! `phi4-reasoning`: Phi-4-reasoning-plus. The model writes `<think>…</think>` then its answer;
//! the two are returned apart. Without a system prompt the model's own template supplies its
//! reasoning system prompt.

use crate::engine::llm::{GenerateRequest, Generator, SamplingConfig, TemplateOptions};
use crate::text;
use cog_runtime::schemars::JsonSchema;
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    /// The question or task
    #[schemars(length(min = 1))]
    pub prompt: String,
    /// Replaces the model's own reasoning system prompt
    pub system_prompt: Option<String>,
    /// Sampling temperature; 0 is greedy
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0, max = 2))]
    pub temperature: f64,
    /// Nucleus sampling threshold
    #[serde(default = "default_top_p")]
    #[schemars(range(min = 0, max = 1))]
    pub top_p: f64,
    /// Sample among this many most likely tokens (0: all)
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 0, max = 1000))]
    pub top_k: i64,
    /// Most tokens to generate (the model's context bounds it too)
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_new_tokens: i64,
    /// Random seed; the same seed and input give the same output. Random when omitted
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
}

fn default_temperature() -> f64 {
    0.8
}
fn default_top_p() -> f64 {
    0.95
}
fn default_top_k() -> i64 {
    50
}
fn default_max_new_tokens() -> i64 {
    4096
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The final answer
    pub answer: String,
    /// The reasoning the model wrote inside <think>…</think>
    pub reasoning: String,
    /// The whole response as a .txt file
    pub file: Path,
}

pub struct Phi4Reasoning {
    generator: Generator,
}

pub struct Valid(GenerateRequest);

impl Predictor for Phi4Reasoning {
    type Input = Input;
    type Valid = Valid;
    type Output = Output;
    const STREAMING: bool = true;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        Ok(Phi4Reasoning {
            generator: text::load(ctx)?,
        })
    }

    fn validate(&self, input: Input) -> Result<Valid, InputError> {
        let request = text::ChatRequest {
            prompt: input.prompt,
            system_prompt: input.system_prompt,
            template: TemplateOptions::default(),
            max_new_tokens: input.max_new_tokens,
            sampling: SamplingConfig {
                temperature: input.temperature as f32,
                top_k: Some(input.top_k as usize),
                top_p: Some(input.top_p as f32),
                seed: input.seed.map(|s| s as u64),
            },
        };
        text::chat(&self.generator, request).map(Valid)
    }

    fn predict(&self, input: Valid, ctx: &PredictContext) -> Result<Output, PredictError> {
        let answer = text::run(&self.generator, &input.0, ctx, "response.txt")?;
        Ok(Output {
            answer: answer.answer,
            reasoning: answer.reasoning,
            file: answer.file,
        })
    }
}
