//! One transformer evaluation through the persistent IoBinding, and binding the LoRA slot tensors.

use super::{output, run_err, FluxPipeline, Job, PipelineError, Transformer};
use crate::engine::diffusion::denoise;
use crate::engine::diffusion::latents::{self, LatentShape};
use crate::engine::diffusion::tensors::{self, Elem};
use ort::session::IoBinding;
use ort::value::DynTensor;
use std::path::Path;

fn bind(
    binding: &mut IoBinding,
    name: &str,
    t: Result<DynTensor, String>,
) -> Result<(), PipelineError> {
    let err = run_err("transformer");
    binding
        .bind_input(name, &t.map_err(&err)?)
        .map_err(|e| err(e.to_string()))
}

impl FluxPipeline {
    /// Binds what stays fixed for one image: text conditioning, guidance, position ids, and the
    /// output (to host memory).
    pub(super) fn bind_conditioning(
        &self,
        tf: &mut Transformer,
        job: &Job,
        shape: LatentShape,
    ) -> Result<(), PipelineError> {
        let (io, cfg, e) = (&self.engine.io, &self.engine.config, self.elem[0]);
        let (n_img, n_txt, batch) = (shape.seq_len(), job.prompt.n_txt, job.batch);
        let b = &mut tf.binding;
        let embeds = job.prompt.embeds.repeat(batch);
        let t5_dims = [batch, n_txt, cfg.joint_attention_dim];
        bind(
            b,
            &io.encoder_hidden_states,
            tensors::tensor(e, &t5_dims, &embeds),
        )?;
        let pooled = job.prompt.pooled.repeat(batch);
        let pooled_dims = [batch, cfg.pooled_projection_dim];
        bind(
            b,
            &io.pooled_projections,
            tensors::tensor(e, &pooled_dims, &pooled),
        )?;
        if let Some(g) = &io.guidance {
            bind(
                b,
                g,
                tensors::f32_tensor(&[batch], denoise::guidance_input(job.guidance, batch)),
            )?;
        }
        let img_ids = latents::image_ids(shape);
        bind(b, &io.img_ids, tensors::f32_tensor(&[n_img, 3], img_ids))?;
        bind(
            b,
            &io.txt_ids,
            tensors::f32_tensor(&[n_txt, 3], latents::text_ids(n_txt)),
        )?;
        let err = run_err("transformer");
        let host = crate::engine::ort_env::host_memory().map_err(|e| err(e.to_string()))?;
        b.bind_output_to_device(io.sample.as_str(), &host)
            .map_err(|e| err(e.to_string()))
    }

    /// The velocity for packed latents `lat` at `timestep` (only these two are rebound).
    pub(super) fn velocity(
        &self,
        tf: &mut Transformer,
        shape: LatentShape,
        lat: &[f32],
        timestep: f32,
    ) -> Result<Vec<f32>, PipelineError> {
        let err = run_err("transformer");
        let io = &self.engine.io;
        let dims = [shape.batch, shape.seq_len(), shape.token_dim()];
        bind(
            &mut tf.binding,
            &io.hidden_states,
            tensors::tensor(self.elem[0], &dims, lat),
        )?;
        bind(
            &mut tf.binding,
            &io.timestep,
            tensors::f32_tensor(&[shape.batch], vec![timestep; shape.batch]),
        )?;
        let Transformer {
            session, binding, ..
        } = tf;
        let out = session
            .run_binding(binding)
            .map_err(|e| err(e.to_string()))?;
        let (_, v) = tensors::to_f32(output(&out, &io.sample, "transformer")?).map_err(&err)?;
        Ok(v)
    }
}

/// Binds every tensor of the folder's `lora_slots.safetensors` (f32, the graph's input names).
pub(super) fn bind_slots(binding: &mut IoBinding, path: &Path, elem: Elem) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    for (name, view) in st.tensors() {
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let t = tensors::tensor(elem, view.shape(), &data)?;
        binding
            .bind_input(name.as_str(), &t)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}
