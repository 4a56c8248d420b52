//! Builds a graph node by node and writes `model.onnx` plus its external data file.
//!
//! Every weight goes to the data file as it is added (so a multi-GB model never sits in memory
//! twice); only tiny shape constants stay inline. Output is deterministic: names come from the
//! caller, nodes keep insertion order, and prost encodes fields in tag order.

use super::proto::{self, attribute_type, DataType};
use crate::format::FileEntry;
use crate::Error;
use prost::Message;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor dimension in a graph input/output: fixed or symbolic (`batch`, `sequence`).
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}
impl From<usize> for Dim {
    fn from(v: usize) -> Self {
        Dim::Fixed(v as i64)
    }
}
impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Sym(v.to_string())
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Str(String),
    Ints(Vec<i64>),
    /// A subgraph, made by [`GraphBuilder::subgraph`].
    Graph(proto::GraphProto),
}

/// Where an initializer's bytes are in an external data file, so that another graph of the same
/// folder can point at them instead of writing a second copy (Gemma 3's embedding table serves both
/// the embedding graph and the tied lm_head of the decoder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// The data file's name, relative to the folder.
    pub location: String,
    pub offset: u64,
    pub length: usize,
    pub dtype: DataType,
    pub dims: Vec<usize>,
}

/// Large tensors are aligned to a page so ONNX Runtime can map them instead of copying.
const PAGE_ALIGN_FROM: usize = 64 * 1024;

pub struct GraphBuilder {
    name: String,
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
    inputs: Vec<proto::ValueInfoProto>,
    outputs: Vec<proto::ValueInfoProto>,
    data: BufWriter<File>,
    data_path: PathBuf,
    data_location: String,
    offset: u64,
    /// sha256 of the data file as it is written, so the manifest need not read it back.
    hasher: Sha256,
    /// Bytes of weights written, for reports.
    pub weight_bytes: u64,
}

impl GraphBuilder {
    /// `data_path` is created now; `location` is how the model refers to it (a file name beside it).
    pub fn new(name: &str, data_path: &Path, location: &str) -> Result<Self, Error> {
        let file = File::create(data_path).map_err(|e| Error::io(data_path, e))?;
        Ok(GraphBuilder {
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            data: BufWriter::with_capacity(1 << 20, file),
            data_path: data_path.to_path_buf(),
            data_location: location.to_string(),
            offset: 0,
            hasher: Sha256::new(),
            weight_bytes: 0,
        })
    }

    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.inputs.push(value_info(name, dtype, dims));
    }

    pub fn output(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.outputs.push(value_info(name, dtype, dims));
    }

    /// Adds an initializer whose bytes go to the external data file. `bytes` is little-endian
    /// raw data of `dtype` with shape `dims`.
    pub fn weight(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[usize],
        bytes: &[u8],
    ) -> Result<String, Error> {
        let count: usize = dims.iter().product();
        if count * dtype.size() != bytes.len() {
            return Err(Error::Internal(format!(
                "initializer {name}: {} bytes for shape {dims:?} of {dtype:?}",
                bytes.len()
            )));
        }
        let align = if bytes.len() >= PAGE_ALIGN_FROM {
            4096
        } else {
            64
        };
        let pad = (align - (self.offset % align)) % align;
        let io = |e| Error::io(&self.data_path, e);
        let zeros = vec![0u8; pad as usize];
        self.data.write_all(&zeros).map_err(io)?;
        self.hasher.update(&zeros);
        self.offset += pad;
        self.data.write_all(bytes).map_err(io)?;
        self.hasher.update(bytes);
        let entry = |k: &str, v: String| proto::StringStringEntryProto {
            key: k.to_string(),
            value: v,
        };
        self.initializers.push(proto::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dtype as i32,
            name: name.to_string(),
            raw_data: Vec::new(),
            external_data: vec![
                entry("location", self.data_location.clone()),
                entry("offset", self.offset.to_string()),
                entry("length", bytes.len().to_string()),
            ],
            data_location: proto::DATA_LOCATION_EXTERNAL,
        });
        self.offset += bytes.len() as u64;
        self.weight_bytes += bytes.len() as u64;
        Ok(name.to_string())
    }

    /// Where the external initializer `name` was written.
    pub fn external_ref(&self, name: &str) -> Option<ExternalRef> {
        let t = self.initializers.iter().find(|t| t.name == name)?;
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        Some(ExternalRef {
            location: get("location")?,
            offset: get("offset")?.parse().ok()?,
            length: get("length")?.parse().ok()?,
            dtype: DataType::from_i32(t.data_type)?,
            dims: t.dims.iter().map(|&d| d as usize).collect(),
        })
    }

    /// An initializer whose bytes are already in another graph's data file (nothing is written).
    pub fn weight_shared(&mut self, name: &str, r: &ExternalRef) -> String {
        let entry = |k: &str, v: String| proto::StringStringEntryProto {
            key: k.to_string(),
            value: v,
        };
        self.initializers.push(proto::TensorProto {
            dims: r.dims.iter().map(|&d| d as i64).collect(),
            data_type: r.dtype as i32,
            name: name.to_string(),
            raw_data: Vec::new(),
            external_data: vec![
                entry("location", r.location.clone()),
                entry("offset", r.offset.to_string()),
                entry("length", r.length.to_string()),
            ],
            data_location: proto::DATA_LOCATION_EXTERNAL,
        });
        name.to_string()
    }

    /// A small inline float constant (a scale), not a weight.
    pub fn const_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(proto::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            name: name.to_string(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// A small inline int64 constant (shape arithmetic, axes), not a weight.
    pub fn const_i64(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(proto::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            name: name.to_string(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// A small inline constant of any type (scalars, masks of a few elements), not a weight.
    /// `bytes` is little-endian raw data of `dtype` with shape `dims`.
    pub fn const_raw(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[usize],
        bytes: Vec<u8>,
    ) -> String {
        debug_assert_eq!(dims.iter().product::<usize>() * dtype.size(), bytes.len());
        self.initializers.push(proto::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dtype as i32,
            name: name.to_string(),
            raw_data: bytes,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node with explicit output names.
    pub fn node_with(
        &mut self,
        name: &str,
        op: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[String],
        attrs: &[(&str, Attr)],
    ) {
        self.nodes.push(proto::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name: name.to_string(),
            op_type: op.to_string(),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            doc_string: String::new(),
            domain: domain.to_string(),
        });
    }

    /// Copies `x` into the tensor named `output` with an Identity node `name`: how a graph gives
    /// an intermediate value its fixed output name (e.g. `logits`) whatever op produced it.
    pub fn identity_output(&mut self, name: &str, x: &str, output: &str) {
        self.node_with(name, "Identity", "", &[x], &[output.to_string()], &[]);
    }

    /// Adds a node whose outputs are named `{name}/output_{k}`; returns those names.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        domain: &str,
        inputs: &[&str],
        n_outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..n_outputs)
            .map(|k| format!("{name}/output_{k}"))
            .collect();
        self.node_with(name, op, domain, inputs, &outputs, attrs);
        outputs
    }

    /// Single-output convenience over [`GraphBuilder::node`].
    pub fn op(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.node(name, op, "", inputs, 1, attrs).remove(0)
    }

    /// A subgraph (an `If` branch): the nodes `build` adds go into it rather than the main graph;
    /// `build` returns its outputs (name, element type). Constants and weights it adds stay in the
    /// main graph, which subgraphs may read, as they may read any outer value.
    pub fn subgraph(
        &mut self,
        name: &str,
        build: impl FnOnce(&mut Self) -> Vec<(String, DataType)>,
    ) -> proto::GraphProto {
        let outer = std::mem::take(&mut self.nodes);
        let outputs = build(self);
        let nodes = std::mem::replace(&mut self.nodes, outer);
        proto::GraphProto {
            node: nodes,
            name: name.to_string(),
            output: outputs
                .iter()
                .map(|(n, t)| proto::ValueInfoProto {
                    name: n.clone(),
                    r#type: Some(proto::TypeProto {
                        tensor_type: Some(proto::TypeProtoTensor {
                            elem_type: *t as i32,
                            shape: None,
                        }),
                    }),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Writes the model file and flushes the data file; returns the data file's manifest entry.
    pub fn finish(mut self, model_path: &Path, opsets: &[(&str, i64)]) -> Result<FileEntry, Error> {
        self.data
            .flush()
            .map_err(|e| Error::io(&self.data_path, e))?;
        let file = self
            .data
            .into_inner()
            .map_err(|e| Error::io(&self.data_path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.data_path, e))?;
        let model = proto::ModelProto {
            ir_version: super::IR_VERSION,
            producer_name: "cogrs-weights".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(proto::GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            opset_import: opsets
                .iter()
                .map(|(d, v)| proto::OperatorSetIdProto {
                    domain: d.to_string(),
                    version: *v,
                })
                .collect(),
            ..Default::default()
        };
        std::fs::write(model_path, model.encode_to_vec()).map_err(|e| Error::io(model_path, e))?;
        Ok(FileEntry {
            sha256: hex::encode(self.hasher.finalize()),
            size: self.offset,
        })
    }
}

fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> proto::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => proto::dimension::Value::DimValue(*v),
                Dim::Sym(s) => proto::dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    proto::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type: dtype as i32,
                shape: Some(proto::TensorShapeProto { dim }),
            }),
        }),
    }
}

fn attribute(name: &str, a: &Attr) -> proto::AttributeProto {
    let mut p = proto::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match a {
        Attr::Int(v) => {
            p.i = *v;
            p.r#type = attribute_type::INT;
        }
        Attr::Float(v) => {
            p.f = *v;
            p.r#type = attribute_type::FLOAT;
        }
        Attr::Str(v) => {
            p.s = v.as_bytes().to_vec();
            p.r#type = attribute_type::STRING;
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            p.r#type = attribute_type::INTS;
        }
        Attr::Graph(v) => {
            p.g = Some(v.clone());
            p.r#type = attribute_type::GRAPH;
        }
    }
    p
}
