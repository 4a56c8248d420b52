//! Output sizes. FLUX works on 16-pixel multiples (8× VAE, 2×2 packing); the predictors accept
//! 256..2048 per side. Named aspect ratios are 1024-based: the side lengths of a ~1-megapixel
//! image of that ratio (1024·√r by 1024/√r), each rounded to the nearest multiple of 16 — the
//! resolution FLUX.1-dev was trained around.

use serde::{Deserialize, Serialize};

pub const MIN_SIDE: u32 = 256;
pub const MAX_SIDE: u32 = 2048;
pub const MULTIPLE: u32 = 16;
/// The side of the square the named ratios keep the area of.
pub const BASE_SIDE: f64 = 1024.0;

/// The named aspect ratios, and `custom` (explicit width and height).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AspectRatio {
    #[serde(rename = "1:1")]
    Square,
    #[serde(rename = "16:9")]
    Wide16x9,
    #[serde(rename = "9:16")]
    Tall9x16,
    #[serde(rename = "4:3")]
    Wide4x3,
    #[serde(rename = "3:4")]
    Tall3x4,
    #[serde(rename = "3:2")]
    Wide3x2,
    #[serde(rename = "2:3")]
    Tall2x3,
    #[serde(rename = "custom")]
    Custom,
}

impl AspectRatio {
    /// width : height, or None for `custom`.
    pub fn ratio(self) -> Option<(u32, u32)> {
        use AspectRatio::*;
        Some(match self {
            Square => (1, 1),
            Wide16x9 => (16, 9),
            Tall9x16 => (9, 16),
            Wide4x3 => (4, 3),
            Tall3x4 => (3, 4),
            Wide3x2 => (3, 2),
            Tall2x3 => (2, 3),
            Custom => return None,
        })
    }

    /// (width, height) in pixels, or None for `custom`.
    pub fn size(self) -> Option<(u32, u32)> {
        let (w, h) = self.ratio()?;
        let r = (w as f64 / h as f64).sqrt();
        Some((round16(BASE_SIDE * r), round16(BASE_SIDE / r)))
    }
}

/// The nearest multiple of 16 (halves round up).
fn round16(x: f64) -> u32 {
    ((x / MULTIPLE as f64).round() as u32) * MULTIPLE
}

/// Whether one side is a valid explicit size (a multiple of 16 within 256..2048).
pub fn valid_side(n: i64) -> bool {
    (MIN_SIDE as i64..=MAX_SIDE as i64).contains(&n) && n % MULTIPLE as i64 == 0
}

/// The size an img2img input is resized to: its own aspect ratio, scaled down to at most
/// 1024² pixels (never up, except to reach the 256-pixel minimum side), each side rounded to the
/// nearest multiple of 16 and kept within 256..2048 (only an input more elongated than 8:1 loses
/// some of its aspect there).
pub fn img2img_size(width: u32, height: u32) -> (u32, u32) {
    assert!(width > 0 && height > 0, "empty image");
    let (w, h) = (width as f64, height as f64);
    let mut scale = (BASE_SIDE * BASE_SIDE / (w * h)).sqrt().min(1.0);
    let short = w.min(h) * scale;
    if short < MIN_SIDE as f64 {
        scale *= MIN_SIDE as f64 / short;
    }
    let side = |x: f64| round16(x * scale).clamp(MIN_SIDE, MAX_SIDE);
    (side(w), side(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AspectRatio::*;

    #[test]
    fn named_ratios_are_about_a_megapixel_in_16s() {
        let sizes: Vec<_> = [
            Square, Wide16x9, Tall9x16, Wide4x3, Tall3x4, Wide3x2, Tall2x3,
        ]
        .iter()
        .map(|r| r.size().unwrap())
        .collect();
        assert_eq!(
            sizes,
            [
                (1024, 1024),
                (1360, 768),
                (768, 1360),
                (1184, 880),
                (880, 1184),
                (1248, 832),
                (832, 1248)
            ]
        );
        assert_eq!(Custom.size(), None);
    }

    #[test]
    fn img2img_keeps_aspect_in_16s() {
        assert_eq!(img2img_size(1024, 1024), (1024, 1024));
        assert_eq!(img2img_size(4000, 3000), (1184, 880)); // 4:3 photo → 1 MP
        assert_eq!(img2img_size(800, 600), (800, 608)); // small: kept, rounded to 16
        assert_eq!(img2img_size(100, 50), (512, 256)); // tiny: up to the minimum side
        assert_eq!(img2img_size(10000, 100), (2048, 256)); // beyond 8:1: clamped
        let (w, h) = img2img_size(1920, 1080);
        assert_eq!((w % 16, h % 16), (0, 0));
        assert!(((w as f64 / h as f64) - 16.0 / 9.0).abs() < 0.02);
    }

    #[test]
    fn explicit_sides() {
        assert!(valid_side(256) && valid_side(2048) && valid_side(1360));
        assert!(!valid_side(240) && !valid_side(2064) && !valid_side(1000));
    }
}
