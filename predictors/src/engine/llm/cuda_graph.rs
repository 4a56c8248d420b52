//! Decode steps replayed as a CUDA graph (ONNX Runtime's `enable_cuda_graph`). A decode step of a 3B
//! model is hundreds of small kernels, so launching them costs more than running them; a captured graph
//! launches them at once. Capture needs every bound input and output at a fixed address and shape, so:
//! - the KV cache is the shared, context-sized buffer (only `shared_kv_buffer` graphs qualify) and lives as
//!   long as the session, not one request;
//! - `input_ids` [1, 1] and `attention_mask` [1, context] are device buffers overwritten before each step
//!   (the mask is zero-padded: GroupQueryAttention reads the valid length from its sum, not its width);
//! - the logits [1, 1, vocab] land in a device buffer and are copied to the host after the step.
//!
//! The prefill (any length) runs with `gpu_graph_id = -1`, which tells ORT not to capture it; decode runs
//! use graph id 1, captured by ORT on its first runs and replayed after.

use super::decoder::{ort_err, DecoderError, LayerNames};
use ort::memory::{AllocationDevice, Allocator};
use ort::session::{IoBinding, NoSelectedOutputs, RunOptions, Session};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};

pub(super) struct GraphState {
    // Kept alive while the bindings refer to them.
    _kv: Vec<DynTensor>,
    ids: Tensor<i64>,
    mask: Tensor<i64>,
    logits: DynTensor,
    decode: IoBinding,
    prefill: IoBinding,
    decode_run: RunOptions<NoSelectedOutputs>,
    prefill_run: RunOptions<NoSelectedOutputs>,
    host_mask: Vec<i64>,
    names: [String; 3],
}

pub(super) struct GraphShape<'a> {
    pub layers: &'a [LayerNames],
    pub kv_type: TensorElementType,
    pub logits_type: TensorElementType,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub vocab: usize,
    pub input_ids: &'a str,
    pub attention_mask: &'a str,
    pub logits: &'a str,
}

impl GraphState {
    /// Sequence positions the captured KV buffer holds.
    pub(super) fn capacity(&self) -> usize {
        self.host_mask.len()
    }

    pub(super) fn new(
        session: &Session,
        alloc: &Allocator,
        s: &GraphShape,
    ) -> Result<GraphState, DecoderError> {
        let mut decode = session.create_binding().map_err(ort_err)?;
        let mut prefill = session.create_binding().map_err(ort_err)?;
        let mut kv = Vec::with_capacity(s.layers.len() * 2);
        for l in s.layers {
            for j in 0..2 {
                let mut t =
                    DynTensor::new(alloc, s.kv_type, [1, s.kv_heads, s.context, s.head_dim])
                        .map_err(ort_err)?;
                for b in [&mut decode, &mut prefill] {
                    b.bind_input(&l.past[j], &t).map_err(ort_err)?;
                    b.bind_output(&l.present[j], &mut t).map_err(ort_err)?;
                }
                kv.push(t);
            }
        }
        let ids = Tensor::<i64>::new(alloc, [1usize, 1]).map_err(ort_err)?;
        let mask = Tensor::<i64>::new(alloc, [1usize, s.context]).map_err(ort_err)?;
        let mut logits = DynTensor::new(alloc, s.logits_type, [1, 1, s.vocab]).map_err(ort_err)?;
        decode.bind_input(s.input_ids, &ids).map_err(ort_err)?;
        decode
            .bind_input(s.attention_mask, &mask)
            .map_err(ort_err)?;
        decode.bind_output(s.logits, &mut logits).map_err(ort_err)?;
        let mut decode_run = RunOptions::new().map_err(ort_err)?;
        decode_run.set("gpu_graph_id", "1").map_err(ort_err)?;
        let mut prefill_run = RunOptions::new().map_err(ort_err)?;
        prefill_run.set("gpu_graph_id", "-1").map_err(ort_err)?;
        Ok(GraphState {
            _kv: kv,
            ids,
            mask,
            logits,
            decode,
            prefill,
            decode_run,
            prefill_run,
            host_mask: vec![0; s.context],
            names: [
                s.input_ids.to_string(),
                s.attention_mask.to_string(),
                s.logits.to_string(),
            ],
        })
    }

    /// The prompt, uncaptured (its length varies), into the persistent cache. Returns the logits.
    pub(super) fn prefill(
        &mut self,
        session: &mut Session,
        prompt: &[u32],
    ) -> Result<DynValue, DecoderError> {
        let n = prompt.len();
        let ids = Tensor::from_array((
            [1usize, n],
            prompt.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        ))
        .map_err(ort_err)?;
        let mask = Tensor::from_array(([1usize, n], vec![1i64; n])).map_err(ort_err)?;
        self.prefill
            .bind_input(&self.names[0], &ids)
            .map_err(ort_err)?;
        self.prefill
            .bind_input(&self.names[1], &mask)
            .map_err(ort_err)?;
        let host = crate::engine::ort_env::host_memory().map_err(ort_err)?;
        self.prefill
            .bind_output_to_device(&self.names[2], &host)
            .map_err(ort_err)?;
        let mut out = session
            .run_binding_with_options(&self.prefill, &self.prefill_run)
            .map_err(ort_err)?;
        out.remove(&self.names[2])
            .ok_or_else(|| ort_err("no logits output"))
    }

    /// One decode step through the captured graph: `token` at position `past`. Returns the logits row.
    pub(super) fn step(
        &mut self,
        session: &mut Session,
        token: u32,
        past: usize,
    ) -> Result<DynValue, DecoderError> {
        Tensor::from_array(([1usize, 1], vec![token as i64]))
            .map_err(ort_err)?
            .copy_into(&mut self.ids)
            .map_err(ort_err)?;
        self.host_mask[..=past].fill(1);
        self.host_mask[past + 1..].fill(0);
        Tensor::from_array(([1usize, self.host_mask.len()], self.host_mask.clone()))
            .map_err(ort_err)?
            .copy_into(&mut self.mask)
            .map_err(ort_err)?;
        session
            .run_binding_with_options(&self.decode, &self.decode_run)
            .map_err(ort_err)?;
        Ok(self
            .logits
            .to(AllocationDevice::CPU, 0)
            .map_err(ort_err)?
            .into_dyn())
    }
}
