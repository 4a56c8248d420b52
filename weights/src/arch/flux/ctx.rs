//! The emission context shared by the transformer's parts: weights by diffusers name and the small
//! ops every block repeats (SiLU, GELU-tanh, LayerNorm, RMSNorm, reshapes); linear layers are in
//! linear.rs.

use super::config::{LoraModuleIo, LoraSlotSpec, LORA_SCALES, NORM_EPS};
use crate::arch::{graph, Dtype};
use crate::checkpoint::{Tensor, TensorSource};
use crate::onnx::{Attr, DataType, GraphBuilder};
use crate::quant::TensorReport;
use crate::Error;

pub(super) struct Ctx<'a> {
    pub g: &'a mut GraphBuilder,
    pub src: &'a dyn TensorSource,
    pub dtype: Dtype,
    pub lora: Option<&'a LoraSlotSpec>,
    pub reports: Vec<TensorReport>,
    /// Slot inputs added so far, in graph order.
    pub lora_inputs: Vec<LoraModuleIo>,
    /// Ones of the hidden width: LayerNormalization's scale (diffusers' norms have no affine).
    ln_ones: Option<(usize, String)>,
    one: Option<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        g: &'a mut GraphBuilder,
        src: &'a dyn TensorSource,
        dtype: Dtype,
        lora: Option<&'a LoraSlotSpec>,
    ) -> Self {
        if lora.is_some() {
            g.input(LORA_SCALES, dtype.onnx(), &["lora_rank".into()]);
        }
        Ctx {
            g,
            src,
            dtype,
            lora,
            reports: Vec::new(),
            lora_inputs: Vec::new(),
            ln_ones: None,
            one: None,
        }
    }

    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, Error> {
        graph::weight(self.g, self.dtype, name, t)
    }

    /// A constant in the compute dtype (stored like a weight; a few bytes).
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[f32],
    ) -> Result<String, Error> {
        self.weight(name, &Tensor::new(shape.to_vec(), values.to_vec()))
    }

    pub fn op(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.g.op(name, op, inputs, attrs)
    }

    /// Casts `x` to `to` unless the graph already computes in it.
    pub fn cast(&mut self, name: &str, x: &str, to: DataType) -> String {
        self.g
            .op(name, "Cast", &[x], &[("to", Attr::Int(to as i64))])
    }

    pub fn silu(&mut self, name: &str, x: &str) -> String {
        graph::silu(self.g, name, x)
    }

    pub fn gelu_tanh(&mut self, name: &str, x: &str) -> String {
        self.g.op(
            &format!("{name}/Gelu"),
            "Gelu",
            &[x],
            &[("approximate", Attr::Str("tanh".into()))],
        )
    }

    /// LayerNorm over the last axis without affine parameters (eps 1e-6), statistics in f32.
    pub fn layer_norm(&mut self, name: &str, x: &str, width: usize) -> Result<String, Error> {
        let ones = match &self.ln_ones {
            Some((w, n)) if *w == width => n.clone(),
            _ => {
                let n = self.constant(
                    &format!("/constants/ln_ones_{width}"),
                    &[width],
                    &vec![1.0; width],
                )?;
                self.ln_ones = Some((width, n.clone()));
                n
            }
        };
        let node = format!("{name}/LayerNorm");
        Ok(graph::layer_norm(self.g, &node, x, &[&ones], NORM_EPS))
    }

    /// torch.nn.RMSNorm over the last axis with the weight `{module}.weight`.
    pub fn rms_norm(&mut self, module: &str, x: &str, width: usize) -> Result<String, Error> {
        let w = self.src.get_shaped(&format!("{module}.weight"), &[width])?;
        let w = self.weight(&format!("{module}.weight"), &w)?;
        let node = format!("/{module}/RMSNorm");
        Ok(graph::rms_norm(self.g, &node, x, &w, NORM_EPS))
    }

    /// `norm(x) * (1 + scale) + shift` with `scale`, `shift` of shape [batch, 1, width].
    pub fn modulate(
        &mut self,
        name: &str,
        x: &str,
        width: usize,
        shift: &str,
        scale: &str,
    ) -> Result<String, Error> {
        let one = match &self.one {
            Some(o) => o.clone(),
            None => {
                let o = self.constant("/constants/one", &[], &[1.0])?;
                self.one = Some(o.clone());
                o
            }
        };
        let n = self.layer_norm(name, x, width)?;
        let s1 = self
            .g
            .op(&format!("{name}/Add_one"), "Add", &[&one, scale], &[]);
        let m = self
            .g
            .op(&format!("{name}/Mul_scale"), "Mul", &[&n, &s1], &[]);
        Ok(self
            .g
            .op(&format!("{name}/Add_shift"), "Add", &[&m, shift], &[]))
    }

    /// Splits a modulation vector [batch, k·width] into k chunks of [batch, 1, width].
    pub fn chunks(&mut self, name: &str, emb: &str, k: usize) -> Vec<String> {
        let parts = self.g.node(
            &format!("{name}/Split"),
            "Split",
            "",
            &[emb],
            k,
            &[("axis", Attr::Int(1)), ("num_outputs", Attr::Int(k as i64))],
        );
        let axes = self.g.const_i64(&format!("{name}/axes_1"), &[1], &[1]);
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                self.g.op(
                    &format!("{name}/Unsqueeze_{i}"),
                    "Unsqueeze",
                    &[p, &axes],
                    &[],
                )
            })
            .collect()
    }

    /// Reshape with a constant target shape (0 keeps a dim, -1 infers one).
    pub fn reshape(&mut self, name: &str, x: &str, shape: &[i64]) -> String {
        let s = self
            .g
            .const_i64(&format!("{name}/shape"), &[shape.len()], shape);
        self.g
            .op(&format!("{name}/Reshape"), "Reshape", &[x, &s], &[])
    }
}
