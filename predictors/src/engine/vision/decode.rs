//! Image bytes to RGB8: the format sniffed from its signature (PNG, JPEG, WebP, GIF; a GIF gives its
//! first frame), the size checked from the header before any pixel is decoded (a small file can
//! declare gigapixels), EXIF orientation applied as PIL's `ImageOps.exif_transpose` does, and
//! transparency composited onto white as transformers' `convert_to_rgb` does.

use super::resample::Rgb8;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;

/// What a user's image may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Each side at least this many pixels.
    pub min_side: u32,
    /// At most this many pixels (width × height), checked from the header.
    pub max_pixels: u64,
    /// Neither side longer than this: resizing works row by row at the output width, so a thin,
    /// very tall image would need 896 × height × 3 bytes however few pixels it has.
    pub max_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        // 8 px: below that an image carries nothing a 896 px model input can use (a 1×1 "image" is
        // a tracking pixel, not a picture). 100 MP: larger than any camera photo; decoding one
        // takes 300-400 MB. 32768 px: wider than phone panoramas, and bounds the resize's
        // intermediate to 88 MB.
        ImageLimits {
            min_side: 8,
            max_pixels: 100_000_000,
            max_side: 32768,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("not an image: the data starts with no known image signature (accepted: PNG, JPEG, WebP, GIF)")]
    NotAnImage,
    #[error("unsupported image format {0} (accepted: PNG, JPEG, WebP, GIF)")]
    Unsupported(String),
    #[error("truncated {format} image: {detail}")]
    Truncated {
        format: &'static str,
        detail: String,
    },
    #[error("corrupt {format} image: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    #[error("image too small: {width}x{height} pixels, each side must be at least {min} pixels")]
    TooSmall { width: u32, height: u32, min: u32 },
    #[error("image too large: {width}x{height} pixels, {limit}")]
    TooLarge {
        width: u32,
        height: u32,
        /// Which limit, in words.
        limit: String,
    },
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        _ => "image",
    }
}

/// Decoding failures: a stream that ends early is "truncated", anything else "corrupt".
fn failure(format: ImageFormat, e: image::ImageError) -> ImageError {
    let detail = e.to_string();
    let eof = matches!(&e, image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
        || [
            "eof",
            "end of file",
            "unexpected end",
            "truncated",
            "no more data",
            "not enough data",
            "not enough bytes",
        ]
        .iter()
        .any(|w| detail.to_lowercase().contains(w));
    let format = format_name(format);
    if eof {
        ImageError::Truncated { format, detail }
    } else {
        ImageError::Corrupt { format, detail }
    }
}

/// Whether the file's own structure says it ends where it should. Decoders may fill a cut-off image
/// with grey and succeed, or report the cut as a generic format error; this names it. GIF is left to
/// the decoder: only its first frame is used, and a file cut after that frame still has it whole.
fn truncation(format: ImageFormat, bytes: &[u8]) -> Option<&'static str> {
    let find = |from: usize, pat: &[u8]| {
        bytes[from.min(bytes.len())..]
            .windows(pat.len())
            .position(|w| w == pat)
    };
    match format {
        // Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an FF D9
        // after the first scan header is the real end-of-image marker.
        ImageFormat::Jpeg => match find(0, &[0xFF, 0xDA]) {
            Some(sos) if find(sos, &[0xFF, 0xD9]).is_some() => None,
            _ => Some("no end-of-image marker after the scan data"),
        },
        ImageFormat::Png => find(8, b"IEND").is_none().then_some("no IEND chunk"),
        // RIFF header: "RIFF", then the size of everything after these 8 bytes.
        ImageFormat::WebP => {
            let size = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
            (bytes.len() < size.saturating_add(8)).then_some("shorter than its RIFF header says")
        }
        _ => None,
    }
}

/// What an image's header says, checked against the limits, before any pixel is decoded: for
/// validating an input (a 422 before the prediction runs) without the cost of decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: &'static str,
    /// The upright size: an EXIF rotation by 90° swaps the stored width and height.
    pub width: u32,
    pub height: u32,
}

/// Reads the header of `bytes` and checks format, size and completeness (see [`decode_rgb`]).
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<Probe, ImageError> {
    use image::metadata::Orientation::*;
    let (format, decoder, orientation) = open(bytes, limits)?;
    let (w, h) = decoder.dimensions();
    let (width, height) = match orientation {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    };
    Ok(Probe {
        format: format_name(format),
        width,
        height,
    })
}

/// Decodes `bytes` into an upright RGB8 image.
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<Rgb8, ImageError> {
    let (format, decoder, orientation) = open(bytes, limits)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| failure(format, e))?;
    img.apply_orientation(orientation);
    Ok(to_rgb_on_white(img))
}

/// Format, header, limits, EXIF orientation and completeness: everything short of decoding.
fn open<'a>(
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> Result<(ImageFormat, impl ImageDecoder + 'a, Orientation), ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::NotAnImage)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(ImageError::Unsupported(
            format
                .extensions_str()
                .first()
                .unwrap_or(&"?")
                .to_uppercase(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Our own size checks come first; the decoder's allocation cap is a second line of defence
    // (RGBA16 at the pixel limit, plus slack).
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8) + (64 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| failure(format, e))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    // A malformed EXIF block does not make the picture unusable: PIL ignores it too.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    if let Some(detail) = truncation(format, bytes) {
        return Err(ImageError::Truncated {
            format: format_name(format),
            detail: detail.into(),
        });
    }
    Ok((format, decoder, orientation))
}

fn check_size(width: u32, height: u32, limits: &ImageLimits) -> Result<(), ImageError> {
    let pixels = width as u64 * height as u64;
    let too_large = if pixels > limits.max_pixels {
        Some(format!(
            "{:.1} megapixels where at most {} are accepted",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        ))
    } else if width.max(height) > limits.max_side {
        Some(format!(
            "a side longer than the {} pixels accepted",
            limits.max_side
        ))
    } else {
        None
    };
    if let Some(limit) = too_large {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit,
        });
    }
    if width.min(height) < limits.min_side {
        return Err(ImageError::TooSmall {
            width,
            height,
            min: limits.min_side,
        });
    }
    Ok(())
}

/// RGB8, alpha composited onto opaque white with Pillow's `alpha_composite` integer arithmetic, as
/// transformers' `convert_to_rgb` does (dropping alpha instead would show whatever colour the
/// transparent pixels happen to hold).
pub fn to_rgb_on_white(img: DynamicImage) -> Rgb8 {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if !img.color().has_alpha() {
        return Rgb8 {
            width,
            height,
            data: img.into_rgb8().into_raw(),
        };
    }
    let rgba = img.into_rgba8().into_raw();
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.chunks_exact(4) {
        let a = px[3] as u32;
        for &c in &px[..3] {
            data.push(composite_on_white(c, a));
        }
    }
    Rgb8 {
        width,
        height,
        data,
    }
}

/// libImaging/AlphaComposite.c for an opaque white destination.
pub fn composite_on_white(src: u8, alpha: u32) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if alpha == 0 {
        return 255;
    }
    let shift_div_255 = |a: u32| ((a >> 8) + a) >> 8;
    let blend = 255 * (255 - alpha);
    let outa255 = alpha * 255 + blend;
    let coef1 = alpha * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = src as u32 * coef1 + 255 * coef2;
    (shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_pixels_keep_their_colour() {
        for c in 0..=255u8 {
            assert_eq!(composite_on_white(c, 255), c);
            assert_eq!(composite_on_white(c, 0), 255);
        }
    }
}
