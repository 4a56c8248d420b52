//! Inputs of `flux-txt2img` and `flux-img2img` (the fields, defaults and bounds of issue 6) and
//! their validation into what the pipeline runs. The runtime checks the schema's bounds before
//! `validate`; these checks repeat them (the types are also used outside HTTP) and add the rules a
//! schema cannot say: sizes in multiples of 16, width/height only with `custom`, a readable image,
//! a strength that leaves at least one step.

use super::image_io;
use super::schedule::{Schedule, ShiftConfig};
use super::sizes::{self, AspectRatio};
use super::triggers::{self, Style};
use cog_runtime::{InputError, Path};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Webp,
    Png,
    Jpg,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Webp => "webp",
            OutputFormat::Png => "png",
            OutputFormat::Jpg => "jpg",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Txt2ImgInput {
    /// What to draw. Style words (Cinematic, Photographic, Anime, Manga, Digital art, Pixel art,
    /// Fantasy art, Neonpunk, 3D Model, Painting, Animation, Illustration) switch on the
    /// open-image-preferences LoRA; GHIBSKY switches on the Ghibsky illustration LoRA
    #[schemars(length(min = 1))]
    pub prompt: String,
    /// Aspect ratio of the image (about one megapixel); `custom` uses width and height
    #[serde(default = "square")]
    pub aspect_ratio: AspectRatio,
    /// Width in pixels with aspect_ratio `custom`: a multiple of 16
    #[schemars(range(min = 256, max = 2048))]
    pub width: Option<i64>,
    /// Height in pixels with aspect_ratio `custom`: a multiple of 16
    #[schemars(range(min = 256, max = 2048))]
    pub height: Option<i64>,
    /// How many images to generate
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 4))]
    pub num_outputs: i64,
    /// Denoising steps
    #[serde(default = "default_steps")]
    #[schemars(range(min = 1, max = 50))]
    pub num_inference_steps: i64,
    /// Guidance for the guidance-distilled model (FLUX.1-dev's guidance embedding)
    #[serde(default = "default_guidance")]
    #[schemars(range(min = 0, max = 10))]
    pub guidance: f64,
    /// Random seed; the same seed and input give the same images. Random when omitted
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
    /// Image file format
    #[serde(default = "webp")]
    pub output_format: OutputFormat,
    /// Quality of webp and jpg images, 0 to 100 (png is lossless)
    #[serde(default = "default_quality")]
    #[schemars(range(min = 0, max = 100))]
    pub output_quality: i64,
    /// Strength of the LoRAs the prompt switches on
    #[serde(default = "one_f")]
    #[schemars(range(min = 0, max = 2))]
    pub lora_scale: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Img2ImgInput {
    /// What to turn the image into; style words and GHIBSKY switch LoRAs on as in flux-txt2img
    #[schemars(length(min = 1))]
    pub prompt: String,
    /// The image to start from
    pub image: Path,
    /// How much to change the image: 0 keeps it, 1 redraws it entirely
    #[serde(default = "default_strength")]
    #[schemars(range(min = 0, max = 1))]
    pub strength: f64,
    /// Output aspect ratio; omitted, the input's own (resized to multiples of 16, at most about a
    /// megapixel). Given, the input is resized to that size
    pub aspect_ratio: Option<AspectRatio>,
    /// Width in pixels with aspect_ratio `custom`: a multiple of 16
    #[schemars(range(min = 256, max = 2048))]
    pub width: Option<i64>,
    /// Height in pixels with aspect_ratio `custom`: a multiple of 16
    #[schemars(range(min = 256, max = 2048))]
    pub height: Option<i64>,
    /// How many images to generate
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 4))]
    pub num_outputs: i64,
    /// Denoising steps (img2img runs the last `strength` share of them)
    #[serde(default = "default_steps")]
    #[schemars(range(min = 1, max = 50))]
    pub num_inference_steps: i64,
    /// Guidance for the guidance-distilled model (FLUX.1-dev's guidance embedding)
    #[serde(default = "default_guidance")]
    #[schemars(range(min = 0, max = 10))]
    pub guidance: f64,
    /// Random seed; the same seed and input give the same images. Random when omitted
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
    /// Image file format
    #[serde(default = "webp")]
    pub output_format: OutputFormat,
    /// Quality of webp and jpg images, 0 to 100 (png is lossless)
    #[serde(default = "default_quality")]
    #[schemars(range(min = 0, max = 100))]
    pub output_quality: i64,
    /// Strength of the LoRAs the prompt switches on
    #[serde(default = "one_f")]
    #[schemars(range(min = 0, max = 2))]
    pub lora_scale: f64,
}

fn square() -> AspectRatio {
    AspectRatio::Square
}
fn one() -> i64 {
    1
}
fn default_steps() -> i64 {
    28
}
fn default_guidance() -> f64 {
    3.5
}
fn webp() -> OutputFormat {
    OutputFormat::Webp
}
fn default_quality() -> i64 {
    80
}
fn one_f() -> f64 {
    1.0
}
fn default_strength() -> f64 {
    0.6
}

/// What both predictors run, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub num_outputs: usize,
    pub schedule: Schedule,
    pub guidance: f32,
    pub seed: Option<u64>,
    pub output_format: OutputFormat,
    pub output_quality: u8,
    pub lora_scale: f32,
    /// The LoRAs the prompt's trigger words switch on (empty: the base model).
    pub styles: Vec<Style>,
}

/// A valid img2img request: the generation and the image to start from.
#[derive(Debug, Clone, PartialEq)]
pub struct Img2Img {
    pub generation: Generation,
    pub image: std::path::PathBuf,
}

fn in_range(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), InputError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(InputError::new(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ))
    }
}

/// The fields both predictors share; the schedule's `strength` is None for txt2img.
struct Common {
    prompt: String,
    num_outputs: i64,
    num_inference_steps: i64,
    guidance: f64,
    seed: Option<i64>,
    output_format: OutputFormat,
    output_quality: i64,
    lora_scale: f64,
}

fn check_common(
    c: Common,
    (width, height): (u32, u32),
    strength: Option<f64>,
) -> Result<Generation, InputError> {
    if c.prompt.trim().is_empty() {
        return Err(InputError::new("prompt", "must not be empty"));
    }
    in_range("num_outputs", c.num_outputs as f64, 1.0, 4.0)?;
    in_range(
        "num_inference_steps",
        c.num_inference_steps as f64,
        1.0,
        50.0,
    )?;
    in_range("guidance", c.guidance, 0.0, 10.0)?;
    in_range("output_quality", c.output_quality as f64, 0.0, 100.0)?;
    in_range("lora_scale", c.lora_scale, 0.0, 2.0)?;
    if let Some(s) = c.seed.filter(|s| *s < 0) {
        return Err(InputError::new(
            "seed",
            format!("must be at least 0, got {s}"),
        ));
    }
    let steps = c.num_inference_steps as usize;
    let seq_len = (width / 16) as usize * (height / 16) as usize;
    let cfg = ShiftConfig::default();
    let schedule = match strength {
        None => Schedule::flux(steps, seq_len, &cfg),
        Some(s) => {
            in_range("strength", s, 0.0, 1.0)?;
            Schedule::img2img(steps, seq_len, s, &cfg)
        }
    }
    .map_err(|e| {
        InputError::new(
            if strength.is_some() {
                "strength"
            } else {
                "num_inference_steps"
            },
            e.to_string(),
        )
    })?;
    Ok(Generation {
        styles: triggers::active_styles(&c.prompt),
        prompt: c.prompt,
        width,
        height,
        num_outputs: c.num_outputs as usize,
        schedule,
        guidance: c.guidance as f32,
        seed: c.seed.map(|s| s as u64),
        output_format: c.output_format,
        output_quality: c.output_quality as u8,
        lora_scale: c.lora_scale as f32,
    })
}

/// The size an aspect ratio (or custom width/height) asks for; None when neither is given.
fn requested_size(
    aspect_ratio: Option<AspectRatio>,
    width: Option<i64>,
    height: Option<i64>,
) -> Result<Option<(u32, u32)>, InputError> {
    match aspect_ratio {
        Some(AspectRatio::Custom) => {
            let side = |field: &str, v: Option<i64>| {
                let v = v.ok_or_else(|| {
                    InputError::new(field, "is required with aspect_ratio custom")
                })?;
                if sizes::valid_side(v) {
                    Ok(v as u32)
                } else {
                    Err(InputError::new(
                        field,
                        format!("must be a multiple of 16 from 256 to 2048, got {v}"),
                    ))
                }
            };
            Ok(Some((side("width", width)?, side("height", height)?)))
        }
        other => {
            if width.is_some() {
                return Err(InputError::new(
                    "width",
                    "applies only with aspect_ratio custom",
                ));
            }
            if height.is_some() {
                return Err(InputError::new(
                    "height",
                    "applies only with aspect_ratio custom",
                ));
            }
            Ok(other.and_then(AspectRatio::size))
        }
    }
}

impl Txt2ImgInput {
    pub fn validate(self) -> Result<Generation, InputError> {
        let size = requested_size(Some(self.aspect_ratio), self.width, self.height)?
            .expect("a named ratio or custom always has a size");
        let common = Common {
            prompt: self.prompt,
            num_outputs: self.num_outputs,
            num_inference_steps: self.num_inference_steps,
            guidance: self.guidance,
            seed: self.seed,
            output_format: self.output_format,
            output_quality: self.output_quality,
            lora_scale: self.lora_scale,
        };
        check_common(common, size, None)
    }
}

impl Img2ImgInput {
    /// Also reads the image's header: a file that is not a decodable image is refused here.
    pub fn validate(self) -> Result<Img2Img, InputError> {
        let requested = requested_size(self.aspect_ratio, self.width, self.height)?;
        let (w, h) =
            image_io::dimensions(self.image.as_path()).map_err(|e| InputError::new("image", e))?;
        let size = requested.unwrap_or_else(|| sizes::img2img_size(w, h));
        let common = Common {
            prompt: self.prompt,
            num_outputs: self.num_outputs,
            num_inference_steps: self.num_inference_steps,
            guidance: self.guidance,
            seed: self.seed,
            output_format: self.output_format,
            output_quality: self.output_quality,
            lora_scale: self.lora_scale,
        };
        let generation = check_common(common, size, Some(self.strength))?;
        Ok(Img2Img {
            generation,
            image: self.image.as_path().to_path_buf(),
        })
    }
}
