//! Linear layers by diffusers module name: plain MatMul or MatMulNBits, bias, and the LoRA slot
//! branch y += ((x·Aᵀ) ⊙ s)·Bᵀ on modules the slot spec targets. Several linears that read the
//! same input (q/k/v; a single block's q/k/v/MLP) can be emitted as one product over their
//! concatenated rows and split back per module: every output column is the same dot product
//! either way (and row-wise quantisation is unchanged), and each part keeps its own bias and
//! LoRA branch.

use super::config::{lora_input_names, LoraModuleIo, LORA_SCALES};
use super::ctx::Ctx;
use crate::checkpoint::Tensor;
use crate::onnx::Attr;
use crate::quant::{self, Scheme};
use crate::Error;

impl Ctx<'_> {
    /// `x @ W^T + b` for the module (`{module}.weight` [out, in], optional `{module}.bias`).
    pub fn linear(&mut self, module: &str, x: &str, scheme: Scheme) -> Result<String, Error> {
        Ok(self.linears(&[module], x, scheme)?.remove(0))
    }

    /// The modules' outputs for one input `x`, computed as one product when there are several.
    pub fn linears(
        &mut self,
        modules: &[&str],
        x: &str,
        scheme: Scheme,
    ) -> Result<Vec<String>, Error> {
        let mut ws = Vec::with_capacity(modules.len());
        for m in modules {
            let name = format!("{m}.weight");
            let w = self.src.get(&name)?;
            let in_f = ws
                .first()
                .map_or(w.shape.get(1).copied(), |f: &Tensor| Some(f.shape[1]));
            if w.shape.len() != 2 || Some(w.shape[1]) != in_f {
                return Err(Error::ShapeMismatch {
                    file: self.src.file_of(&name),
                    tensor: name,
                    expected: vec![0, in_f.unwrap_or(0)],
                    got: w.shape,
                });
            }
            ws.push(w);
        }
        let outs: Vec<usize> = ws.iter().map(|w| w.shape[0]).collect();
        let in_f = ws[0].shape[1];
        let name = fused_name(modules);
        let w = if ws.len() == 1 {
            ws.pop().expect("one weight")
        } else {
            Tensor::concat_rows(&ws)
        };
        drop(ws);
        let y = match quant::quantize(&w, scheme) {
            None => {
                let wt = self.weight(&format!("{name}.weight"), &w.transpose2())?;
                self.g
                    .op(&format!("/{name}/MatMul"), "MatMul", &[x, &wt], &[])
            }
            Some(q) => {
                self.reports.push(quant::report(&name, scheme, &w, &q));
                quant::emit::matmul_nbits(self.g, &name, x, &q, self.dtype)?
            }
        };
        drop(w);

        // Bias: each module's own, zeros for one without (all of FLUX's linears have one).
        let mut bias = Vec::with_capacity(outs.iter().sum());
        let mut any_bias = false;
        for (m, &o) in modules.iter().zip(&outs) {
            let b = format!("{m}.bias");
            if self.src.contains(&b) {
                bias.extend(self.src.get_shaped(&b, &[o])?.data);
                any_bias = true;
            } else {
                bias.extend(std::iter::repeat_n(0.0, o));
            }
        }
        let y = if any_bias {
            let b = self.weight(
                &format!("{name}.bias"),
                &Tensor::new(vec![bias.len()], bias),
            )?;
            self.g
                .op(&format!("/{name}/Add_bias"), "Add", &[&y, &b], &[])
        } else {
            y
        };

        let parts = if modules.len() == 1 {
            vec![y]
        } else {
            let sizes: Vec<i64> = outs.iter().map(|&o| o as i64).collect();
            let split = self
                .g
                .const_i64(&format!("/{name}/split"), &[sizes.len()], &sizes);
            self.g.node(
                &format!("/{name}/Split"),
                "Split",
                "",
                &[&y, &split],
                modules.len(),
                &[("axis", Attr::Int(-1))],
            )
        };
        let mut out = Vec::with_capacity(parts.len());
        for ((m, y), &o) in modules.iter().zip(parts).zip(&outs) {
            out.push(self.lora_branch(m, x, &y, in_f, o));
        }
        Ok(out)
    }

    /// `y + ((x · Aᵀ) ⊙ s) · Bᵀ` when the slot spec targets `module`, else `y`. The slot tensors
    /// are graph inputs, so another LoRA is another binding.
    fn lora_branch(&mut self, module: &str, x: &str, y: &str, in_f: usize, out_f: usize) -> String {
        if !self.lora.is_some_and(|l| l.modules.contains(module)) {
            return y.to_string();
        }
        let (a, b) = lora_input_names(module);
        let dt = self.dtype.onnx();
        self.g.input(&a, dt, &[in_f.into(), "lora_rank".into()]);
        self.g.input(&b, dt, &["lora_rank".into(), out_f.into()]);
        self.lora_inputs.push(LoraModuleIo {
            module: module.to_string(),
            a_t: a.clone(),
            b_t: b.clone(),
            in_features: in_f,
            out_features: out_f,
        });
        let p = format!("/{module}/lora");
        let down = self.g.op(&format!("{p}/MatMul_a"), "MatMul", &[x, &a], &[]);
        let scaled = self.g.op(
            &format!("{p}/Mul_scales"),
            "Mul",
            &[&down, LORA_SCALES],
            &[],
        );
        let up = self
            .g
            .op(&format!("{p}/MatMul_b"), "MatMul", &[&scaled, &b], &[]);
        self.g.op(&format!("{p}/Add"), "Add", &[y, &up], &[])
    }
}

/// `a.b.to_q` alone; `a.b.{to_q,to_k,to_v}` for several modules under the common prefix `a.b.`.
fn fused_name(modules: &[&str]) -> String {
    if modules.len() == 1 {
        return modules[0].to_string();
    }
    let first = modules[0];
    let mut prefix = first.len();
    for m in &modules[1..] {
        let common = first
            .bytes()
            .zip(m.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        prefix = prefix.min(common);
    }
    // back to a '.' boundary
    let prefix = first[..prefix].rfind('.').map_or(0, |i| i + 1);
    let rest: Vec<&str> = modules.iter().map(|m| &m[prefix..]).collect();
    format!("{}{{{}}}", &first[..prefix], rest.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fused_names() {
        assert_eq!(super::fused_name(&["x_embedder"]), "x_embedder");
        assert_eq!(
            super::fused_name(&["b.0.attn.to_q", "b.0.attn.to_k", "b.0.attn.to_v"]),
            "b.0.attn.{to_q,to_k,to_v}"
        );
        assert_eq!(
            super::fused_name(&["s.1.attn.to_q", "s.1.attn.to_k", "s.1.proj_mlp"]),
            "s.1.{attn.to_q,attn.to_k,proj_mlp}"
        );
    }
}
