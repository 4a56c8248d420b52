//! Both LoRAs packed into fixed-size slots, so switching style only changes a scale vector (issue 6:
//! "ranks concatenated, so both can be active at once", "per-LoRA scale inputs"). Every targeted
//! module gets A (R × in) and B (out × R) with R = the sum of the LoRAs' ranks; LoRA i owns columns
//! `segments[i]` of B and the same rows of A (zero where its layer's rank is smaller or it does not
//! target the module); each layer's alpha/rank is folded into its B columns. The graph computes
//! y += B · (s ⊙ (A · x)) with s = [`Slots::scales`], so ΔW = Σ_i s_i · scale_i · B_i·A_i.

use super::lora::{Lora, Matrix};
use std::collections::BTreeMap;
use std::ops::Range;

/// One module's slot tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotWeights {
    /// R × in_features.
    pub a: Matrix,
    /// out_features × R, alpha/rank folded in.
    pub b: Matrix,
}

impl SlotWeights {
    /// Aᵀ (in_features × R), the layout of the transformer graph's `lora.<module>.a_t` input.
    pub fn a_t(&self) -> Matrix {
        self.a.transpose()
    }

    /// Bᵀ (R × out_features), the layout of the graph's `lora.<module>.b_t` input.
    pub fn b_t(&self) -> Matrix {
        self.b.transpose()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slots {
    /// The slot rank R.
    pub rank: usize,
    /// Columns of B (rows of A) each LoRA owns, in the order the LoRAs were given.
    pub segments: Vec<Range<usize>>,
    pub modules: BTreeMap<String, SlotWeights>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{module}: LoRA {lora} is {got_out}×{got_in}, another LoRA adapts it as {want_out}×{want_in}"
)]
pub struct SlotError {
    pub module: String,
    pub lora: usize,
    pub got_out: usize,
    pub got_in: usize,
    pub want_out: usize,
    pub want_in: usize,
}

impl Slots {
    /// Packs `loras` (each segment as wide as that LoRA's largest rank).
    pub fn pack(loras: &[&Lora]) -> Result<Slots, SlotError> {
        let mut segments = Vec::with_capacity(loras.len());
        let mut start = 0;
        for l in loras {
            segments.push(start..start + l.max_rank());
            start += l.max_rank();
        }
        let rank = start;
        let mut modules: BTreeMap<String, SlotWeights> = BTreeMap::new();
        for (i, l) in loras.iter().enumerate() {
            for (name, layer) in &l.layers {
                let (out_f, in_f) = (layer.up.rows, layer.down.cols);
                let slot = modules.entry(name.clone()).or_insert_with(|| SlotWeights {
                    a: Matrix {
                        rows: rank,
                        cols: in_f,
                        data: vec![0.0; rank * in_f],
                    },
                    b: Matrix {
                        rows: out_f,
                        cols: rank,
                        data: vec![0.0; out_f * rank],
                    },
                });
                if (slot.b.rows, slot.a.cols) != (out_f, in_f) {
                    return Err(SlotError {
                        module: name.clone(),
                        lora: i,
                        got_out: out_f,
                        got_in: in_f,
                        want_out: slot.b.rows,
                        want_in: slot.a.cols,
                    });
                }
                let first = segments[i].start;
                for r in 0..layer.rank() {
                    let row = &layer.down.data[r * in_f..(r + 1) * in_f];
                    slot.a.data[(first + r) * in_f..(first + r + 1) * in_f].copy_from_slice(row);
                    for o in 0..out_f {
                        slot.b.data[o * rank + first + r] =
                            layer.up.data[o * layer.rank() + r] * layer.scale;
                    }
                }
            }
        }
        Ok(Slots {
            rank,
            segments,
            modules,
        })
    }

    /// The per-column scale input: `per_lora[i]` (0 = off, else lora_scale) over LoRA i's columns.
    pub fn scales(&self, per_lora: &[f32]) -> Vec<f32> {
        assert_eq!(per_lora.len(), self.segments.len(), "one scale per LoRA");
        let mut s = vec![0.0; self.rank];
        for (seg, v) in self.segments.iter().zip(per_lora) {
            s[seg.clone()].iter_mut().for_each(|x| *x = *v);
        }
        s
    }

    /// B · diag(scales) · A for `module`: the weight change the graph applies.
    pub fn delta(&self, module: &str, scales: &[f32]) -> Option<Matrix> {
        let w = self.modules.get(module)?;
        let mut a = w.a.clone();
        for (r, s) in scales.iter().enumerate() {
            a.data[r * a.cols..(r + 1) * a.cols]
                .iter_mut()
                .for_each(|x| *x *= s);
        }
        Some(w.b.matmul(&a))
    }
}

/// The value of one LoRA input of the transformer graph (f32; the engine converts to the graph's
/// dtype).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotBinding {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    #[error("{0}: adapted by the LoRAs, but the transformer graph has no slot for it")]
    NoSlot(String),
    #[error(
        "{module}: the graph's slot is {want_out}×{want_in}, the LoRA adapts {got_out}×{got_in}"
    )]
    Shape {
        module: String,
        want_out: usize,
        want_in: usize,
        got_out: usize,
        got_in: usize,
    },
    #[error("{got} LoRA scales for {want} packed LoRAs")]
    Scales { got: usize, want: usize },
}

impl Slots {
    /// Every LoRA input of a transformer graph with slots `io`, filled from these slots: Aᵀ and Bᵀ
    /// of each module (zeros for modules these LoRAs do not adapt), then the scale vector from
    /// `per_lora` (one scale per packed LoRA, 0 = off). The rank dimension is `self.rank`.
    pub fn bindings(
        &self,
        io: &super::config::LoraSlotsIo,
        per_lora: &[f32],
    ) -> Result<Vec<SlotBinding>, BindError> {
        if per_lora.len() != self.segments.len() {
            return Err(BindError::Scales {
                got: per_lora.len(),
                want: self.segments.len(),
            });
        }
        if let Some(m) = self
            .modules
            .keys()
            .find(|m| !io.modules.iter().any(|s| &s.module == *m))
        {
            return Err(BindError::NoSlot(m.clone()));
        }
        let r = self.rank;
        let mut out = Vec::with_capacity(2 * io.modules.len() + 1);
        for m in &io.modules {
            let (a, b) = match self.modules.get(&m.module) {
                Some(w) => {
                    if (w.b.rows, w.a.cols) != (m.out_features, m.in_features) {
                        return Err(BindError::Shape {
                            module: m.module.clone(),
                            want_out: m.out_features,
                            want_in: m.in_features,
                            got_out: w.b.rows,
                            got_in: w.a.cols,
                        });
                    }
                    (w.a_t().data, w.b_t().data)
                }
                None => (vec![0.0; m.in_features * r], vec![0.0; r * m.out_features]),
            };
            out.push(SlotBinding {
                name: m.a_t.clone(),
                shape: vec![m.in_features, r],
                data: a,
            });
            out.push(SlotBinding {
                name: m.b_t.clone(),
                shape: vec![r, m.out_features],
                data: b,
            });
        }
        out.push(SlotBinding {
            name: io.scales.clone(),
            shape: vec![r],
            data: self.scales(per_lora),
        });
        Ok(out)
    }
}
