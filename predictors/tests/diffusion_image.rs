//! Image output and img2img input against diffusers' VaeImageProcessor
//! (weights/reference/flux_image_golden.py → predictors/fixtures/diffusion/image.json), and the
//! three output encodings decoded back.

use cog_predictors::engine::diffusion::image_io;
use cog_predictors::engine::diffusion::inputs::OutputFormat;
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/diffusion")
        .join(name)
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("image.json")).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// PSNR in dB between two 8-bit buffers.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

#[test]
fn decoder_output_to_rgb_equals_diffusers() {
    let g = golden();
    let want: Vec<u8> = g["rgb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(image_io::to_rgb8(&f32s(&g["decoded"]), 7, 5), want);
}

#[test]
fn img2img_input_is_close_to_diffusers_preprocess() {
    let g = golden();
    let want = f32s(&g["preprocessed"]);
    let got = image_io::load_for_vae(&fixture("img2img_input.png"), 32, 16).unwrap();
    assert_eq!(got.len(), want.len());
    // PIL's Lanczos and the image crate's Lanczos3 weigh edge pixels slightly differently.
    let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    // Measured: mean 0.22, max 3 levels (one 8-bit level is 2/255 here).
    let (mean, max) = (mean * 127.5, max * 127.5);
    assert!(mean < 1.0 && max < 6.0, "mean {mean}, max {max} levels");
    // without a resize the values are exact: x / 255 · 2 − 1
    let same = image_io::load_for_vae(&fixture("img2img_input.png"), 40, 30).unwrap();
    let png = image::open(fixture("img2img_input.png")).unwrap().to_rgb8();
    assert_eq!(same[0], png.get_pixel(0, 0).0[0] as f32 / 255.0 * 2.0 - 1.0);
    assert_eq!(
        same[40 * 30 + 41],
        png.get_pixel(1, 1).0[1] as f32 / 255.0 * 2.0 - 1.0
    );
}

#[test]
fn dimensions_and_not_an_image() {
    assert_eq!(
        image_io::dimensions(&fixture("img2img_input.png")).unwrap(),
        (40, 30)
    );
    let err = image_io::dimensions(&fixture("schedule.json")).unwrap_err();
    assert!(err.contains("not an image"), "{err}");
    assert!(image_io::dimensions(&fixture("missing.png")).is_err());
}

#[test]
fn encodings_decode_back_and_quality_matters() {
    let src = image::open(fixture("img2img_input.png")).unwrap().to_rgb8();
    let src = image::imageops::resize(&src, 160, 120, image::imageops::FilterType::Triangle);
    let (w, h) = src.dimensions();
    let rgb = src.into_raw();
    let decode = |bytes: &[u8], fmt: image::ImageFormat| {
        image::load_from_memory_with_format(bytes, fmt)
            .unwrap()
            .to_rgb8()
            .into_raw()
    };

    let png = image_io::encode(&rgb, w, h, OutputFormat::Png, 0).unwrap();
    assert_eq!(
        decode(&png, image::ImageFormat::Png),
        rgb,
        "png is lossless whatever the quality"
    );

    let jpg_hi = image_io::encode(&rgb, w, h, OutputFormat::Jpg, 95).unwrap();
    let jpg_lo = image_io::encode(&rgb, w, h, OutputFormat::Jpg, 5).unwrap();
    assert!(
        jpg_lo.len() < jpg_hi.len() / 2,
        "{} vs {}",
        jpg_lo.len(),
        jpg_hi.len()
    );
    let (p_hi, p_lo) = (
        psnr(&decode(&jpg_hi, image::ImageFormat::Jpeg), &rgb),
        psnr(&decode(&jpg_lo, image::ImageFormat::Jpeg), &rgb),
    );
    assert!(
        p_hi > 30.0 && p_hi > p_lo + 5.0,
        "jpg PSNR {p_hi} vs {p_lo}"
    );
    assert!(image_io::encode(&rgb, w, h, OutputFormat::Jpg, 0).is_ok());

    let webp_hi = image_io::encode(&rgb, w, h, OutputFormat::Webp, 95).unwrap();
    let webp_lo = image_io::encode(&rgb, w, h, OutputFormat::Webp, 5).unwrap();
    assert_eq!(&webp_hi[..4], b"RIFF");
    assert_eq!(&webp_hi[8..16], b"WEBPVP8 ", "lossy VP8, not VP8L");
    assert!(
        webp_lo.len() < webp_hi.len() / 2,
        "{} vs {}",
        webp_lo.len(),
        webp_hi.len()
    );
    let (p_hi, p_lo) = (
        psnr(&decode(&webp_hi, image::ImageFormat::WebP), &rgb),
        psnr(&decode(&webp_lo, image::ImageFormat::WebP), &rgb),
    );
    assert!(
        p_hi > 30.0 && p_hi > p_lo + 5.0,
        "webp PSNR {p_hi} vs {p_lo}"
    );
}

/// A photo stored sideways with EXIF orientation 6 is used upright (as diffusers' `load_image`,
/// which applies `exif_transpose`): its size is swapped and its pixels turned 90° clockwise.
#[test]
fn exif_orientation_is_applied() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/vision/orient6_24x16.png");
    let stored = image::open(&path).unwrap().to_rgb8();
    assert_eq!(stored.dimensions(), (24, 16));
    assert_eq!(image_io::dimensions(&path).unwrap(), (16, 24));
    let upright = image::imageops::rotate90(&stored);
    let got = image_io::load_for_vae(&path, 16, 24).unwrap();
    let plane = 16 * 24;
    for (i, px) in upright.pixels().enumerate() {
        for c in 0..3 {
            assert_eq!(
                got[c * plane + i],
                px.0[c] as f32 / 255.0 * 2.0 - 1.0,
                "pixel {i}"
            );
        }
    }
}
