//! LoRA files in either key layout, normalised; the code lives in cog-weights (the transformer
//! compiler needs the same module naming to size its LoRA slots) and is re-exported here.

pub use cog_weights::arch::flux::lora::*;
