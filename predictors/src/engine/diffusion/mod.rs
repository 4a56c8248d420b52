//! FLUX.1 pipeline stages that run outside the transformer graph. Each mirrors diffusers'
//! `FluxPipeline` / `FluxImg2ImgPipeline` and is tested against goldens those produced
//! (weights/reference/flux_*.py → predictors/fixtures/diffusion/).
//!
//! One prediction, in order:
//! 1. [`inputs`]: the typed input → [`inputs::Generation`] (size from [`sizes`], schedule from
//!    [`schedule`], LoRAs from [`triggers`]); img2img also checks its image ([`image_io::dimensions`]).
//! 2. [`tokenize`]: CLIP ids (77) for the pooled embedding, T5 ids (512) for the sequence.
//! 3. Text encoders (graphs, not here); text position ids [`latents::text_ids`].
//! 4. Noise [`denoise::gaussian_noise`] over (B, 16, H/8, W/8), packed by [`latents::pack`], image
//!    position ids [`latents::image_ids`]; img2img: [`image_io::load_for_vae`] → VAE encoder →
//!    [`latents::VaeScaling::from_vae`] → pack → [`denoise::initial_latents`].
//! 5. [`denoise::denoise`] calls the transformer once per step (timestep, guidance
//!    [`denoise::guidance_input`], LoRA scale vector [`slots::Slots::scales`] from the LoRA files
//!    read by [`lora`]); its hook checks cancellation and logs progress.
//! 6. [`latents::unpack`] → [`latents::VaeScaling::to_vae`] → VAE decoder → [`image_io::to_rgb8`]
//!    → [`image_io::encode`].
//!
//! [`pipeline::FluxPipeline`] runs steps 2–6 on a folder `cogrs weights build` compiled from a
//! diffusers FLUX pipeline ([`tensors`] converts buffers to the graphs' dtype).

pub mod denoise;
pub mod image_io;
pub mod inputs;
pub mod latents;
pub mod lora;
pub mod pipeline;
pub mod schedule;
pub mod sizes;
pub mod slots;
pub mod tensors;
pub mod tokenize;
pub mod triggers;
