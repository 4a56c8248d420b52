//! The embedding stage of decoders that take `inputs_embeds` (Gemma 3): `embed.onnx` turns token ids,
//! and for a prompt with images the vision graph's feature rows, into the decoder's input (see
//! [`EmbedGraph`] for the merge rule). It runs on the CPU provider: its input and output are small host
//! tensors (one row per decode step), and a GPU session would hold a second copy of the embedding
//! table (262,144 × 2,560 for Gemma-3-4b) beside the decoder's tied head.

use super::decoder::{ort_err, DecoderError};
use crate::engine::ort_env::{OrtRuntime, SessionOptions};
use cog_weights::format::EmbedGraph;
use ort::memory::Allocator;
use ort::session::Session;
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use std::path::Path;
use std::sync::Mutex;

pub struct EmbedStage {
    session: Mutex<Session>,
    pub config: EmbedGraph,
    hidden: usize,
    dtype: TensorElementType,
}

impl EmbedStage {
    pub fn load(
        rt: &OrtRuntime,
        dir: &Path,
        config: &EmbedGraph,
        hidden: usize,
        dtype: TensorElementType,
        opts: &SessionOptions,
    ) -> Result<EmbedStage, DecoderError> {
        let opts = SessionOptions {
            cpu_only: true,
            cuda_graph: false,
            ..opts.clone()
        };
        let (session, _) = rt.session(&dir.join(&config.graph), &opts)?;
        Ok(EmbedStage {
            session: Mutex::new(session),
            config: config.clone(),
            hidden,
            dtype,
        })
    }

    /// `inputs_embeds` ([1, ids.len(), hidden], host) for `ids`; `features` ([rows, hidden] in the
    /// compute dtype) replace the image-token rows, one row per image token, in order.
    pub fn run(&self, ids: &[u32], features: Option<&DynValue>) -> Result<DynValue, DecoderError> {
        let c = &self.config;
        let ids64: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let input_ids = Tensor::from_array(([1usize, ids.len()], ids64)).map_err(ort_err)?;
        let empty;
        let features = match features {
            Some(f) => f,
            None => {
                empty = DynTensor::new(&Allocator::default(), self.dtype, [0usize, self.hidden])
                    .map_err(ort_err)?
                    .into_dyn();
                &empty
            }
        };
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let mut binding = session.create_binding().map_err(ort_err)?;
        binding
            .bind_input(&c.input_ids, &input_ids)
            .map_err(ort_err)?;
        binding
            .bind_input(&c.image_features, features)
            .map_err(ort_err)?;
        let host = crate::engine::ort_env::host_memory().map_err(ort_err)?;
        binding
            .bind_output_to_device(&c.inputs_embeds, &host)
            .map_err(ort_err)?;
        let mut out = session.run_binding(&binding).map_err(ort_err)?;
        out.remove(&c.inputs_embeds)
            .ok_or_else(|| ort_err(format!("embed graph gave no {}", c.inputs_embeds)))
    }

    /// Whether a prompt position holds an image token.
    pub fn is_image_token(&self, id: u32) -> bool {
        self.config.image_token_id == Some(id)
    }
}
