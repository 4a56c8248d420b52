//! `gemma3-vision`: Gemma-3-4b-it, image + text → text (int8 weight-only when compiled with
//! `--quant rtn8`, optionally pruned under the Gemma 3 filter map). The image is decoded and
//! preprocessed as Gemma3Processor does it, encoded by the vision graph, and its feature rows replace
//! the prompt's image soft tokens; the text streams like the text predictors'.

use crate::engine::llm::{GenerateRequest, Generator, Prompt, SamplingConfig};
use crate::engine::ort_env::SessionOptions;
use crate::engine::vision::prompt::Gemma3Prompter;
use crate::engine::vision::{Gemma3ImageConfig, ImageLimits, PixelValues, VisionModel};
use crate::text;
use cog_runtime::schemars::JsonSchema;
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    /// The image: PNG, JPEG, WebP or GIF (its first frame); EXIF orientation is applied
    pub image: Path,
    /// What to ask about the image
    #[serde(default = "default_prompt")]
    #[schemars(length(min = 1))]
    pub prompt: String,
    /// Most tokens to generate (the model's context bounds it too)
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1, max = 8192))]
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

fn default_prompt() -> String {
    "Describe this image.".into()
}
fn default_max_new_tokens() -> i64 {
    256
}
fn default_temperature() -> f64 {
    0.7
}
fn default_top_p() -> f64 {
    0.9
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The model's answer
    pub text: String,
    /// The answer as a .txt file
    pub file: Path,
}

pub struct Gemma3Vision {
    generator: Generator,
    vision: VisionModel,
    prompter: Gemma3Prompter,
    image: Gemma3ImageConfig,
}

/// A checked input: the prompt's token ids (image tokens expanded) and the image's pixel values.
pub struct Valid {
    request: GenerateRequest,
    pixels: PixelValues,
}

impl Predictor for Gemma3Vision {
    type Input = Input;
    type Valid = Valid;
    type Output = Output;
    const STREAMING: bool = true;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        let dir = text::required_model_dir(ctx, "a Gemma3ForConditionalGeneration checkpoint")?;
        let generator = text::load_dir(ctx, &dir)?;
        let vcfg = generator.config().vision.clone().ok_or_else(|| {
            SetupError::new(format!(
                "{} has no vision graph: build it from a Gemma3ForConditionalGeneration checkpoint",
                dir.display()
            ))
        })?;
        let vision =
            VisionModel::load(&dir, &vcfg, &SessionOptions::default()).map_err(SetupError::new)?;
        let prompter = Gemma3Prompter::from_dir(&dir)
            .map_err(SetupError::new)?
            .with_tokens_per_image(vcfg.mm_tokens_per_image);
        ctx.log(format!(
            "vision graph: {}×{} px in, {} tokens of width {} out ({})",
            vcfg.image_size,
            vcfg.image_size,
            vcfg.mm_tokens_per_image,
            vcfg.text_hidden_size,
            vcfg.dtype
        ));
        Ok(Gemma3Vision {
            generator,
            vision,
            prompter,
            image: Gemma3ImageConfig {
                size: vcfg.image_size,
                ..Default::default()
            },
        })
    }

    fn validate(&self, input: Input) -> Result<Valid, InputError> {
        let bytes = std::fs::read(input.image.as_path())
            .map_err(|e| InputError::new("image", format!("cannot read the file: {e}")))?;
        let pixels = self
            .image
            .preprocess(&bytes, &ImageLimits::default())
            .map_err(|e| InputError::new("image", e.to_string()))?;
        if input.prompt.trim().is_empty() {
            return Err(InputError::new("prompt", "must not be empty"));
        }
        let built = self
            .prompter
            .build(None, &input.prompt, 1)
            .map_err(|e| InputError::new("prompt", e.to_string()))?;
        let request = GenerateRequest {
            prompt: Prompt::Tokens {
                text: built.text,
                ids: built.ids,
            },
            max_new_tokens: input.max_new_tokens.max(1) as usize,
            sampling: SamplingConfig {
                temperature: input.temperature as f32,
                top_k: None,
                top_p: Some(input.top_p as f32),
                seed: input.seed.map(|s| s as u64),
            },
            skip_special_tokens: true,
            ignore_eos: false,
        };
        let request = text::fit(&self.generator, request, "prompt")?;
        Ok(Valid { request, pixels })
    }

    fn predict(&self, input: Valid, ctx: &PredictContext) -> Result<Output, PredictError> {
        let t = Instant::now();
        let features = self
            .vision
            .encode(&input.pixels)
            .map_err(PredictError::failed)?;
        let encode_s = t.elapsed().as_secs_f64();
        ctx.metric("image_encode_time", encode_s);
        ctx.log(format!("image encoded in {:.1} ms", encode_s * 1e3));
        ctx.check_cancelled()?;
        let answer = text::run_with_images(
            &self.generator,
            &input.request,
            Some(&features),
            ctx,
            "response.txt",
        )?;
        Ok(Output {
            text: answer.generation.text,
            file: answer.file,
        })
    }
}
