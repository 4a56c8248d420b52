//! FLUX.1 pipeline stages that run outside the transformer graph: the FlowMatch Euler schedule,
//! packed latents and their position ids, image sizes, tokenisation, LoRA files and trigger words,
//! image encoding, and the predictors' inputs. Each stage mirrors diffusers' `FluxPipeline` /
//! `FluxImg2ImgPipeline` and is tested against goldens those pipelines produced.

pub mod denoise;
pub mod image_io;
pub mod inputs;
pub mod latents;
pub mod lora;
pub mod schedule;
pub mod sizes;
pub mod slots;
pub mod tokenize;
pub mod triggers;
