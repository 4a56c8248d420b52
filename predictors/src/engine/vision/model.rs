//! The vision graph (`vision.onnx`: SigLIP tower + Gemma 3 projector) on the session's provider:
//! `pixel_values` in, one feature row per image token out, on the host in the model's compute dtype,
//! ready for the embed graph (`Generator::generate_with_images`).

use super::preprocess::PixelValues;
use crate::engine::llm::decoder::{ort_err as err, DecoderError};
use crate::engine::ort_env::{runtime, SessionOptions};
use cog_weights::arch::siglip::VisionGraphConfig;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use std::path::Path;
use std::sync::Mutex;

pub struct VisionModel {
    session: Mutex<Session>,
    pub config: VisionGraphConfig,
}

impl VisionModel {
    pub fn load(
        dir: &Path,
        config: &VisionGraphConfig,
        opts: &SessionOptions,
    ) -> Result<VisionModel, DecoderError> {
        let rt = runtime()?;
        let opts = SessionOptions {
            cuda_graph: false,
            ..opts.clone()
        };
        let (session, _) = rt.session(&dir.join(&config.graph), &opts)?;
        Ok(VisionModel {
            session: Mutex::new(session),
            config: config.clone(),
        })
    }

    /// Feature rows (`[mm_tokens_per_image, text_hidden]`) of one preprocessed image.
    pub fn encode(&self, pixels: &PixelValues) -> Result<DynValue, DecoderError> {
        let c = &self.config;
        let [ch, h, w] = pixels.shape;
        if ch != c.channels || h != c.image_size || w != c.image_size {
            return Err(err(format!(
                "pixel_values {:?}, the vision graph takes [{}, {}, {}]",
                pixels.shape, c.channels, c.image_size, c.image_size
            )));
        }
        let input = Tensor::from_array(([1usize, ch, h, w], pixels.data.clone())).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let mut binding = session.create_binding().map_err(err)?;
        binding.bind_input(&c.pixel_values, &input).map_err(err)?;
        let host = crate::engine::ort_env::host_memory().map_err(err)?;
        binding
            .bind_output_to_device(&c.image_features, &host)
            .map_err(err)?;
        let mut out = session.run_binding(&binding).map_err(err)?;
        let v = out
            .remove(&c.image_features)
            .ok_or_else(|| err("the vision graph gave no image_features"))?;
        // [1, tokens, hidden] → [tokens, hidden], the embed graph's layout.
        let shape = [c.mm_tokens_per_image, c.text_hidden_size];
        if let Ok((_, d)) = v.try_extract_tensor::<f32>() {
            return Ok(Tensor::from_array((shape, d.to_vec()))
                .map_err(err)?
                .into_dyn());
        }
        if let Ok((_, d)) = v.try_extract_tensor::<half::f16>() {
            return Ok(Tensor::from_array((shape, d.to_vec()))
                .map_err(err)?
                .into_dyn());
        }
        let (_, d) = v.try_extract_tensor::<half::bf16>().map_err(err)?;
        Ok(Tensor::from_array((shape, d.to_vec()))
            .map_err(err)?
            .into_dyn())
    }
}
