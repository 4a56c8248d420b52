//! Text generation: tokenizer and chat template, sampling, incremental detokenizer, the decode loop, and
//! the [`Generator`] the language-model predictors call.

mod cuda_graph;
pub mod decoder;
pub mod detok;
pub mod embed;
pub mod generator;
pub mod reasoning;
pub mod sampling;
pub mod template;
pub mod tokenizer;

pub use decoder::FinishReason;
pub use generator::{
    EngineOptions, GenerateError, GenerateRequest, Generation, Generator, Metrics, Prompt,
};
pub use reasoning::{split_reasoning, ReasoningSplit};
pub use sampling::SamplingConfig;
pub use template::{ChatMessage, TemplateOptions};
