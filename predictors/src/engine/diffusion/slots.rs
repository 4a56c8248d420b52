//! Both LoRAs packed into fixed-size slots; the code lives in cog-weights beside the transformer
//! graph whose LoRA inputs it fills, and is re-exported here.

pub use cog_weights::arch::flux::slots::*;
