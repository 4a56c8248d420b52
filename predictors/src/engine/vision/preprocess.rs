//! Gemma 3's image processor: decode, RGB, resize to 896×896 with PIL's BILINEAR (no crop, aspect
//! ratio not kept, no pan-and-scan), rescale by 1/255, normalise with mean = std = 0.5, CHW f32.
//! The arithmetic follows transformers' NumPy path (rescale in f64, then f32; normalise in f32) so
//! the values are the processor's, bit for bit.

use super::decode::{decode_rgb, ImageError, ImageLimits};
use super::resample::{resize_bilinear, Rgb8};

/// google/gemma-3-4b-it's `preprocessor_config.json`, as [`Default`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3ImageConfig {
    pub size: usize,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Gemma3ImageConfig {
    fn default() -> Self {
        Gemma3ImageConfig {
            size: 896,
            rescale_factor: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }
}

/// `pixel_values` for one image: `[3, size, size]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

impl Gemma3ImageConfig {
    /// Image file bytes to `pixel_values`.
    pub fn preprocess(
        &self,
        bytes: &[u8],
        limits: &ImageLimits,
    ) -> Result<PixelValues, ImageError> {
        Ok(self.normalise(&decode_rgb(bytes, limits)?))
    }

    /// An upright RGB8 image to `pixel_values`.
    pub fn normalise(&self, img: &Rgb8) -> PixelValues {
        let s = self.size;
        let resized = resize_bilinear(img, s, s);
        // 256 possible inputs per channel: a table holds the exact f32 of each.
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| {
                std::array::from_fn(|v| {
                    let rescaled = (v as f64 * self.rescale_factor) as f32;
                    (rescaled - self.mean[c]) / self.std[c]
                })
            })
            .collect();
        let mut data = vec![0f32; 3 * s * s];
        for (i, px) in resized.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * s * s + i] = lut[c][px[c] as usize];
            }
        }
        PixelValues {
            shape: [3, s, s],
            data,
        }
    }
}
