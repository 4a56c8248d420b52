//! Graph building blocks shared by the pipeline components (CLIP, T5, the VAE): linear layers
//! (optionally weight-only quantised), norms, convolutions, attention, and the folder plumbing
//! that writes one `<name>.onnx` + `<name>.onnx.data` pair.
//!
//! Every float tensor of a graph is in its compute dtype; statistics that lose too much in half
//! precision are computed in fp32 inside the op (LayerNormalization's `stash_type`) or after an
//! explicit cast (group norm).

use super::Dtype;
use crate::checkpoint::{Tensor, TensorSource};
use crate::format::FileEntry;
use crate::onnx::{Attr, DataType, GraphBuilder, MS_DOMAIN, MS_OPSET, ONNX_OPSET};
use crate::quant::{Scheme, TensorReport};
use crate::Error;
use std::path::Path;

/// A graph under construction, its compute dtype and the quantisation reports so far.
pub struct Net<'a> {
    pub g: &'a mut GraphBuilder,
    pub dtype: Dtype,
    pub reports: Vec<TensorReport>,
}

impl<'a> Net<'a> {
    pub fn new(g: &'a mut GraphBuilder, dtype: Dtype) -> Self {
        Net {
            g,
            dtype,
            reports: Vec::new(),
        }
    }

    pub fn dt(&self) -> DataType {
        self.dtype.onnx()
    }

    /// A weight in the compute dtype, written to the data file.
    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, Error> {
        super::graph::weight(self.g, self.dtype, name, t)
    }

    /// An inline constant in the compute dtype.
    pub fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let bytes = self.dtype.encode(values);
        self.g.const_raw(name, self.dtype.onnx(), dims, bytes)
    }

    /// A scalar in the compute dtype.
    pub fn scalar(&mut self, name: &str, v: f32) -> String {
        self.constant(name, &[], &[v])
    }

    pub fn op(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.g.op(name, op, inputs, attrs)
    }

    pub fn ms_op(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        self.g.node(name, op, MS_DOMAIN, inputs, 1, attrs).remove(0)
    }

    /// `x @ W^T (+ b)` for `W[N, K]` as transformers stores it: MatMul on the transposed weight,
    /// or MatMulNBits when `scheme` quantises it. Weights are named `{name}.*`, nodes `/{name}/*`.
    pub fn linear(
        &mut self,
        name: &str,
        x: &str,
        w: &Tensor,
        bias: Option<&Tensor>,
        scheme: Scheme,
    ) -> Result<String, Error> {
        let y = super::graph::linear(self.g, self.dtype, &mut self.reports, name, x, w, scheme)?;
        match bias {
            None => Ok(y),
            Some(b) => {
                let b = self.weight(&format!("{name}.bias"), b)?;
                Ok(self.op(&format!("/{name}/Add"), "Add", &[&y, &b], &[]))
            }
        }
    }

    /// LayerNormalization over the last axis, statistics in fp32.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: &str,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<String, Error> {
        let g = self.weight(&format!("{name}.weight"), gamma)?;
        let b = self.weight(&format!("{name}.bias"), beta)?;
        let node = format!("/{name}/LayerNorm");
        Ok(super::graph::layer_norm(self.g, &node, x, &[&g, &b], eps))
    }

    /// RMS norm without mean or bias (T5LayerNorm), statistics in fp32.
    pub fn rms_norm(
        &mut self,
        name: &str,
        x: &str,
        gamma: &Tensor,
        eps: f32,
    ) -> Result<String, Error> {
        let g = self.weight(&format!("{name}.weight"), gamma)?;
        let node = format!("/{name}/SimplifiedLayerNorm");
        Ok(super::graph::rms_norm(self.g, &node, x, &g, eps))
    }

    /// `x · sigmoid(x)`.
    pub fn silu(&mut self, name: &str, x: &str) -> String {
        super::graph::silu(self.g, name, x)
    }

    /// 2-D convolution with PyTorch's `[out, in, kh, kw]` weight and bias. `pads` is ONNX's
    /// `[top, left, bottom, right]`, so the asymmetric padding of diffusers' Downsample2D is one op.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: &str,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        pads: [usize; 4],
    ) -> Result<String, Error> {
        let (kh, kw) = (w.shape[2], w.shape[3]);
        let wn = self.weight(&format!("{name}.weight"), w)?;
        let bn = self.weight(&format!("{name}.bias"), b)?;
        Ok(self.op(
            &format!("/{name}/Conv"),
            "Conv",
            &[x, &wn, &bn],
            &[
                ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
                ("pads", Attr::Ints(pads.iter().map(|&p| p as i64).collect())),
            ],
        ))
    }

    /// GroupNorm over `[b, C, ...]` with per-channel affine `gamma`, `beta` (`[C]`). The group
    /// statistics are computed in fp32 (InstanceNormalization over `[b, groups, -1]`): a
    /// decoder level at 1024² averages millions of elements per group, too many for half sums.
    pub fn group_norm(
        &mut self,
        name: &str,
        x: &str,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<String, Error> {
        let c = gamma.shape[0];
        let half = self.dtype != Dtype::Fp32;
        let xf = if half {
            self.op(
                &format!("/{name}/CastIn"),
                "Cast",
                &[x],
                &[("to", Attr::Int(DataType::Float as i64))],
            )
        } else {
            x.to_string()
        };
        let grouped = self.g.const_i64(
            &format!("/{name}/grouped_shape"),
            &[3],
            &[0, groups as i64, -1],
        );
        let r = self.op(
            &format!("/{name}/Reshape"),
            "Reshape",
            &[&xf, &grouped],
            &[],
        );
        let f32_bytes = |v: f32, n: usize| v.to_le_bytes().repeat(n);
        let ones = self.g.const_raw(
            &format!("/{name}/ones"),
            DataType::Float,
            &[groups],
            f32_bytes(1.0, groups),
        );
        let zeros = self.g.const_raw(
            &format!("/{name}/zeros"),
            DataType::Float,
            &[groups],
            f32_bytes(0.0, groups),
        );
        let n = self.op(
            &format!("/{name}/InstanceNorm"),
            "InstanceNormalization",
            &[&r, &ones, &zeros],
            &[("epsilon", Attr::Float(eps))],
        );
        let shape = self.op(&format!("/{name}/Shape"), "Shape", &[x], &[]);
        let back = self.op(
            &format!("/{name}/Reshape_back"),
            "Reshape",
            &[&n, &shape],
            &[],
        );
        let back = if half {
            self.op(
                &format!("/{name}/CastOut"),
                "Cast",
                &[&back],
                &[("to", Attr::Int(self.dt() as i64))],
            )
        } else {
            back
        };
        let per_channel = |t: &Tensor| Tensor::new(vec![c, 1, 1], t.data.clone());
        let g = self.weight(&format!("{name}.weight"), &per_channel(gamma))?;
        let b = self.weight(&format!("{name}.bias"), &per_channel(beta))?;
        let m = self.op(&format!("/{name}/Mul"), "Mul", &[&back, &g], &[]);
        Ok(self.op(&format!("/{name}/Add"), "Add", &[&m, &b], &[]))
    }

    /// Scaled dot-product attention over `[b, s, heads * d]` q/k/v: softmax(q·kᵀ·scale + bias)·v,
    /// back in `[b, s, heads * d]`. `bias` broadcasts to `[b, heads, s, s]` (a causal mask, T5's
    /// position bias); `scale` 1 is skipped (T5 does not scale).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        name: &str,
        q: &str,
        k: &str,
        v: &str,
        heads: usize,
        head_dim: usize,
        scale: f32,
        bias: Option<&str>,
    ) -> String {
        let split = self.g.const_i64(
            &format!("/{name}/heads_shape"),
            &[4],
            &[0, 0, heads as i64, head_dim as i64],
        );
        let merged = self.g.const_i64(
            &format!("/{name}/merged_shape"),
            &[3],
            &[0, 0, (heads * head_dim) as i64],
        );
        let mut heads_of = |t: &str, tag: &str, perm: Vec<i64>| {
            let r = self.op(
                &format!("/{name}/{tag}/Reshape"),
                "Reshape",
                &[t, &split],
                &[],
            );
            self.op(
                &format!("/{name}/{tag}/Transpose"),
                "Transpose",
                &[&r],
                &[("perm", Attr::Ints(perm))],
            )
        };
        let qh = heads_of(q, "q", vec![0, 2, 1, 3]);
        let kt = heads_of(k, "k", vec![0, 2, 3, 1]);
        let vh = heads_of(v, "v", vec![0, 2, 1, 3]);
        let qh = if scale != 1.0 {
            let s = self.scalar(&format!("/{name}/scale"), scale);
            self.op(&format!("/{name}/q/Scale"), "Mul", &[&qh, &s], &[])
        } else {
            qh
        };
        let mut scores = self.op(&format!("/{name}/QK"), "MatMul", &[&qh, &kt], &[]);
        if let Some(b) = bias {
            scores = self.op(&format!("/{name}/AddBias"), "Add", &[&scores, b], &[]);
        }
        let p = self.op(
            &format!("/{name}/Softmax"),
            "Softmax",
            &[&scores],
            &[("axis", Attr::Int(-1))],
        );
        let ctx = self.op(&format!("/{name}/PV"), "MatMul", &[&p, &vh], &[]);
        let t = self.op(
            &format!("/{name}/out/Transpose"),
            "Transpose",
            &[&ctx],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        self.op(
            &format!("/{name}/out/Reshape"),
            "Reshape",
            &[&t, &merged],
            &[],
        )
    }
}

/// One graph written into an output folder.
#[derive(Debug, Clone)]
pub struct BuiltGraph {
    /// File name of the graph in the folder, e.g. `t5.onnx`.
    pub graph: String,
    /// File name of its weights, `<graph>.data`, and its manifest entry (hashed while written).
    pub data: String,
    pub data_entry: FileEntry,
    pub dtype: Dtype,
    /// Per-tensor quantisation errors (empty when nothing was quantised).
    pub reports: Vec<TensorReport>,
}

/// Writes `<out_dir>/<file>` and `<out_dir>/<file>.data` from what `body` adds to the graph, at
/// the default ONNX opset.
pub fn write_graph(
    out_dir: &Path,
    file: &str,
    dtype: Dtype,
    body: impl FnOnce(&mut Net) -> Result<(), Error>,
) -> Result<BuiltGraph, Error> {
    write_graph_at(out_dir, file, dtype, ONNX_OPSET, body)
}

/// [`write_graph`] at a given ONNX opset.
pub fn write_graph_at(
    out_dir: &Path,
    file: &str,
    dtype: Dtype,
    opset: i64,
    body: impl FnOnce(&mut Net) -> Result<(), Error>,
) -> Result<BuiltGraph, Error> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let data = format!("{file}.data");
    let mut g = GraphBuilder::new("main_graph", &out_dir.join(&data), &data)?;
    let reports = {
        let mut net = Net::new(&mut g, dtype);
        body(&mut net)?;
        net.reports
    };
    let data_entry = g.finish(&out_dir.join(file), &[("", opset), (MS_DOMAIN, MS_OPSET)])?;
    Ok(BuiltGraph {
        graph: file.to_string(),
        data,
        data_entry,
        dtype,
        reports,
    })
}

/// `get_shaped` for a weight that may sit under one of several names (checkpoints saved by
/// different library versions); the error names the first.
pub fn get_any(src: &dyn TensorSource, names: &[String], shape: &[usize]) -> Result<Tensor, Error> {
    let name = names.iter().find(|n| src.contains(n)).unwrap_or(&names[0]);
    src.get_shaped(name, shape)
}
