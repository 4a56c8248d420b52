//! Gemma 3 image preprocessing against transformers' Gemma3ImageProcessor on real small images
//! (predictors/fixtures/vision/, goldens made by weights/reference/gemma3_vision_golden.py), and the
//! typed refusals of what is not a usable image.

use cog_predictors::engine::vision::{Gemma3ImageConfig, ImageError, ImageLimits, PixelValues};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/vision")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn golden(name: &str) -> Value {
    let p = fixtures().join("golden").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn preprocess(bytes: &[u8]) -> Result<PixelValues, ImageError> {
    Gemma3ImageConfig::default().preprocess(bytes, &ImageLimits::default())
}

fn sha256_f32le(v: &[f32]) -> String {
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Largest difference at the golden's sample positions, and the difference of the means.
fn compare(name: &str) -> (PixelValues, f32, f64) {
    let g = golden(name);
    let pv = preprocess(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(pv.shape, [3, 896, 896], "{name}");
    let at = |c: usize, y: usize, x: usize| pv.data[(c * 896 + y) * 896 + x];
    let mut worst = 0f32;
    for s in g["samples"].as_array().unwrap() {
        let s: Vec<f64> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = at(s[0] as usize, s[1] as usize, s[2] as usize);
        worst = worst.max((got - s[3] as f32).abs());
    }
    let mean = pv.data.iter().map(|&v| v as f64).sum::<f64>() / pv.data.len() as f64;
    (pv, worst, (mean - g["mean"].as_f64().unwrap()).abs())
}

#[test]
fn lossless_images_match_transformers_bit_for_bit() {
    // Upscale (RGB, grey), downscale in one axis and upscale in the other, strong downscale in both,
    // one axis already at 896, alpha composited onto white, lossless WebP, the first frame of an
    // animated GIF with a transparent palette entry and of an animated WebP, a GIF frame covering part
    // of its canvas, and every EXIF orientation (2..8, PNG eXIf).
    let orientations: Vec<String> = (2..=8).map(|o| format!("orient{o}_24x16.png")).collect();
    let names = [
        "rgb_61x37.png",
        "gray_50x20.png",
        "down_1000x700.png",
        "down_2000x1800.png",
        "tall_896x500.png",
        "rgba_40x30.png",
        "lossless_50x40.webp",
        "anim_33x21.gif",
        "anim_40x30.webp",
        "offset_40x30.gif",
    ];
    for name in names
        .iter()
        .copied()
        .chain(orientations.iter().map(String::as_str))
    {
        let (pv, worst, _) = compare(name);
        assert_eq!(
            worst, 0.0,
            "{name}: sample values differ from transformers' by up to {worst}"
        );
        assert_eq!(
            sha256_f32le(&pv.data),
            golden(name)["sha256_f32le"].as_str().unwrap(),
            "{name}: pixel_values differ from transformers'"
        );
    }
}

#[test]
fn lossy_images_match_within_decoder_rounding() {
    // PIL's libjpeg-turbo / libwebp and the Rust decoders may round a level apart (the JPEG here is off by
    // one level at most; two are allowed); a wrong orientation or colour conversion would be off by far
    // more (the fixtures are asymmetric).
    for name in ["orient6_32x48.jpg", "gray_40x30.jpg", "lossy_50x40.webp"] {
        let (_, worst, dmean) = compare(name);
        eprintln!("{name}: largest sample difference {worst}, mean difference {dmean}");
        assert!(
            worst <= 2.0 * 2.0 / 255.0 + 1e-6,
            "{name}: up to {worst} from transformers'"
        );
        assert!(dmean < 1.0 / 255.0, "{name}: mean differs by {dmean}");
    }
}

#[test]
fn exif_orientation_is_applied() {
    // The JPEG stores 32x48 pixels with orientation 6 (rotate 90 degrees clockwise): decoded upright it
    // is 48x32, and its red block (stored top-left) is top-right.
    let img = cog_predictors::engine::vision::decode::decode_rgb(
        &read("orient6_32x48.jpg"),
        &ImageLimits::default(),
    )
    .unwrap();
    assert_eq!((img.width, img.height), (48, 32));
    let px = |x: usize, y: usize| &img.data[(y * img.width + x) * 3..][..3];
    assert!(
        px(45, 2)[0] > 200 && px(45, 2)[1] < 60,
        "top-right should be red: {:?}",
        px(45, 2)
    );
    assert!(
        px(2, 2)[0] < 100,
        "top-left should not be red: {:?}",
        px(2, 2)
    );
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    // CRC-32 (IEEE) over type and data, bitwise: the PNG reader checks it.
    let mut crc = 0xFFFF_FFFFu32;
    for &b in kind.iter().chain(data) {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
}

/// A well-formed PNG header declaring `w`x`h` RGB pixels, with a few bytes of (useless) data: a
/// decompression bomb is recognised from this alone.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A GIF whose logical screen is `w`x`h` with one 1x1 frame.
fn gif_screen(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // 2-entry global palette
    g.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // image descriptor 1x1
    g.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3B]);
    g
}

fn encode_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn too_large_is_refused_from_the_header_before_decoding() {
    for bytes in [png_header_only(20000, 20000), gif_screen(65535, 65535)] {
        match preprocess(&bytes) {
            Err(ImageError::TooLarge { width, height, .. }) => {
                assert!(width as u64 * height as u64 > 100_000_000)
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    let e = preprocess(&png_header_only(20000, 20000))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "image too large: 20000x20000 pixels, 400.0 megapixels where at most 100 are accepted"
    );
    // Few pixels but a side past the limit: 8 x 40000 is 0.3 megapixels.
    assert_eq!(
        preprocess(&png_header_only(8, 40000))
            .unwrap_err()
            .to_string(),
        "image too large: 8x40000 pixels, a side longer than the 32768 pixels accepted"
    );
    // Just under the limit in pixels the header check passes and the (bogus) data is then found corrupt.
    assert!(matches!(
        preprocess(&png_header_only(10000, 10000)),
        Err(ImageError::Corrupt { .. } | ImageError::Truncated { .. })
    ));
}

#[test]
fn too_small_is_refused() {
    for (w, h) in [(1, 1), (4, 100), (100, 7)] {
        assert_eq!(
            preprocess(&encode_png(w, h)).unwrap_err(),
            ImageError::TooSmall {
                width: w,
                height: h,
                min: 8
            },
            "{w}x{h}"
        );
    }
    assert!(preprocess(&encode_png(8, 8)).is_ok());
    assert_eq!(
        preprocess(&encode_png(1, 1)).unwrap_err().to_string(),
        "image too small: 1x1 pixels, each side must be at least 8 pixels"
    );
}

#[test]
fn not_an_image_and_unsupported_formats_are_named() {
    for bytes in [&b""[..], b"hello, this is text", b"%PDF-1.7\n", &[0u8; 64]] {
        assert_eq!(
            preprocess(bytes).unwrap_err(),
            ImageError::NotAnImage,
            "{bytes:?}"
        );
    }
    let bmp = {
        let mut b = b"BM".to_vec();
        b.resize(64, 0);
        b
    };
    assert_eq!(
        preprocess(&bmp).unwrap_err(),
        ImageError::Unsupported("BMP".into())
    );
    assert_eq!(
        preprocess(b"II*\0\x08\0\0\0").unwrap_err(),
        ImageError::Unsupported("TIFF".into())
    );
    assert!(ImageError::NotAnImage
        .to_string()
        .starts_with("not an image"));
}

#[test]
fn truncated_images_are_named_truncated() {
    // Cut in the middle and just before the end. A GIF is cut inside its first frame only: the rest
    // of an animation is not used, so a GIF cut after its first frame still has a whole picture.
    let cases = [
        ("rgb_61x37.png", vec![0.5, 0.98]),
        ("down_1000x700.png", vec![0.5, 0.98]),
        ("orient6_32x48.jpg", vec![0.5, 0.98]),
        ("lossless_50x40.webp", vec![0.5, 0.98]),
        ("lossy_50x40.webp", vec![0.5, 0.98]),
        ("anim_33x21.gif", vec![0.25, 0.4]),
    ];
    for (name, cuts) in cases {
        let bytes = read(name);
        for cut in cuts {
            let keep = (bytes.len() as f64 * cut) as usize;
            match preprocess(&bytes[..keep]) {
                Err(ImageError::Truncated { .. }) => {}
                Err(e) => panic!(
                    "{name} cut to {keep} of {} bytes: expected Truncated, got {e:?}",
                    bytes.len()
                ),
                Ok(_) => panic!("{name} cut to {keep} of {} bytes decoded", bytes.len()),
            }
        }
    }
}

#[test]
fn probe_checks_the_header_and_gives_the_upright_size() {
    use cog_predictors::engine::vision::decode::{probe, Probe};
    let limits = ImageLimits::default();
    let p = |name: &str| probe(&read(name), &limits).unwrap();
    assert_eq!(
        p("rgb_61x37.png"),
        Probe {
            format: "PNG",
            width: 61,
            height: 37
        }
    );
    // Stored 32x48, EXIF orientation 6: upright 48x32.
    assert_eq!(
        p("orient6_32x48.jpg"),
        Probe {
            format: "JPEG",
            width: 48,
            height: 32
        }
    );
    assert_eq!(
        p("orient3_24x16.png"),
        Probe {
            format: "PNG",
            width: 24,
            height: 16
        }
    );
    assert_eq!(
        p("anim_33x21.gif"),
        Probe {
            format: "GIF",
            width: 33,
            height: 21
        }
    );
    assert_eq!(
        p("lossy_50x40.webp"),
        Probe {
            format: "WebP",
            width: 50,
            height: 40
        }
    );
    // The same refusals as decoding, without decoding.
    assert!(matches!(
        probe(&png_header_only(20000, 20000), &limits),
        Err(ImageError::TooLarge { .. })
    ));
    assert!(matches!(
        probe(&encode_png(1, 1), &limits),
        Err(ImageError::TooSmall { .. })
    ));
    assert_eq!(probe(b"text", &limits), Err(ImageError::NotAnImage));
    let jpg = read("orient6_32x48.jpg");
    assert!(matches!(
        probe(&jpg[..jpg.len() / 2], &limits),
        Err(ImageError::Truncated { .. })
    ));
}
