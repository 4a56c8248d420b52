//! Images in and out of the pipeline. Out: the VAE's (3, H, W) f32 in [-1, 1] → 8-bit RGB exactly
//! as diffusers' `VaeImageProcessor.postprocess` rounds it → webp (lossy, libwebp, at
//! `output_quality`), jpg (at `output_quality`) or png (lossless). In: an img2img input decoded
//! upright, resized (Lanczos3) to the generation size and normalised to [-1, 1] for the VAE encoder.

use super::inputs::OutputFormat;
use crate::engine::vision::decode::{decode_rgb, probe, ImageLimits};
use image::{codecs::jpeg::JpegEncoder, codecs::png::PngEncoder, ImageEncoder};
use std::path::Path;

/// An image file's upright (width, height) from its header (the vision engine's probe: format,
/// size limits, completeness; an EXIF rotation by 90° swaps the two); the error says why it is not
/// a usable image.
pub fn dimensions(path: &Path) -> Result<(u32, u32), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let p = probe(&bytes, &ImageLimits::default()).map_err(|e| e.to_string())?;
    Ok((p.width, p.height))
}

/// Decodes `path` (upright by its EXIF orientation, transparency onto white, size limits checked
/// from the header: the vision engine's decoder), resizes it to width×height and returns (3, H, W)
/// f32 in [-1, 1] — what diffusers' `VaeImageProcessor.preprocess` hands the VAE encoder (its
/// resize is PIL's Lanczos; this one is the image crate's Lanczos3, within a few 8-bit levels).
pub fn load_for_vae(path: &Path, width: u32, height: u32) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let rgb = decode_rgb(&bytes, &ImageLimits::default()).map_err(|e| e.to_string())?;
    let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data)
        .ok_or("decoded image has the wrong size")?;
    let img = if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, image::imageops::FilterType::Lanczos3)
    };
    let plane = (width * height) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px.0[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(chw)
}

/// (3, H, W) in [-1, 1] → interleaved 8-bit RGB: ((x/2 + 0.5) clamped to [0, 1]) · 255, rounded
/// half to even (numpy's `round`), as `VaeImageProcessor.postprocess(output_type="pil")`.
pub fn to_rgb8(chw: &[f32], width: u32, height: u32) -> Vec<u8> {
    let plane = (width * height) as usize;
    assert_eq!(
        chw.len(),
        3 * plane,
        "expected a (3, {height}, {width}) image"
    );
    let mut rgb = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            let x = (chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            rgb[3 * i + c] = (x * 255.0).round_ties_even() as u8;
        }
    }
    rgb
}

/// Encodes interleaved RGB as `format`; `quality` (0..=100) applies to webp and jpg.
pub fn encode(
    rgb: &[u8],
    width: u32,
    height: u32,
    format: OutputFormat,
    quality: u8,
) -> Result<Vec<u8>, String> {
    assert_eq!(rgb.len(), (3 * width * height) as usize, "RGB buffer size");
    let mut out = Vec::new();
    match format {
        OutputFormat::Webp => {
            out.extend_from_slice(
                &webp::Encoder::from_rgb(rgb, width, height).encode(quality.min(100) as f32),
            );
        }
        OutputFormat::Jpg => {
            // The encoder takes 1..=100; 0 is its lowest quality too.
            JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
                .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
                .map_err(|e| e.to_string())?;
        }
        OutputFormat::Png => {
            PngEncoder::new(&mut out)
                .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
                .map_err(|e| e.to_string())?;
        }
    }
    if out.is_empty() {
        return Err(format!("{format:?} encoding produced nothing"));
    }
    Ok(out)
}
