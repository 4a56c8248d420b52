//! ONNX model writing: prost messages for the subset of onnx.proto we emit, and a graph builder
//! that streams every weight into one external data file.

pub mod builder;
pub mod proto;

pub use builder::{Attr, Dim, ExternalRef, GraphBuilder};
pub use proto::DataType;

/// Default ONNX domain opset: 21 has everything we use (Split with `num_outputs` since 18).
pub const ONNX_OPSET: i64 = 21;
/// `com.microsoft` contrib ops (GroupQueryAttention, MatMulNBits, SkipSimplifiedLayerNormalization).
pub const MS_DOMAIN: &str = "com.microsoft";
pub const MS_OPSET: i64 = 1;
/// IR version 10 is the one that goes with opset 21.
pub const IR_VERSION: i64 = 10;
