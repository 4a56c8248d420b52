//! Vision input for the multimodal predictors: image bytes to the pixel tensor a vision tower takes
//! ([`preprocess`]), and Gemma 3's multimodal prompt, whose image tokens mark where the image features
//! go ([`prompt`]).

pub mod decode;
pub mod model;
pub mod preprocess;
pub mod prompt;
pub mod resample;

pub use decode::{ImageError, ImageLimits};
pub use model::VisionModel;
pub use preprocess::{Gemma3ImageConfig, PixelValues};
