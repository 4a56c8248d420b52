//! Pillow's resampling (`Image.resize`, libImaging/Resample.c) for 8-bit RGB, bit for bit: the Gemma 3
//! processor resizes with PIL's BILINEAR, and matching its integer arithmetic exactly (rather than
//! running another bilinear filter) makes the pixel values equal to transformers', not merely close.
//!
//! PIL's BILINEAR is a triangle filter whose support widens with the downscale factor (so shrinking
//! averages rather than skips pixels); coefficients are normalised, turned into 22-bit fixed point,
//! and the two passes (horizontal first) each round and clip to 8 bits.

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A row-major RGB8 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

struct Coeffs {
    /// Per output pixel: first input index and how many inputs it reads.
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    /// `ksize` fixed-point weights per output pixel.
    k: Vec<i32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box (0, in_size).
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // BILINEAR's support is 1.0
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax as usize) {
            *wx = triangle(((x as i64 + xmin) as f64 - center + 0.5) * (1.0 / filterscale));
            ww += *wx;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for (x, kx) in row.iter_mut().enumerate().take(xmax as usize) {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            *kx = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, xmax as usize));
    }
    Coeffs { bounds, ksize, k }
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// One pass: `stride` is the distance between successive taps (3 horizontally, 3·width
/// vertically), `lines` the independent lines and `line_step` their distance.
fn convolve(
    src: &[u8],
    c: &Coeffs,
    out: &mut [u8],
    (lines, line_step, stride): (usize, usize, usize),
    out_index: impl Fn(usize, usize) -> usize,
) {
    for line in 0..lines {
        for (o, &(min, n)) in c.bounds.iter().enumerate() {
            let k = &c.k[o * c.ksize..o * c.ksize + n];
            for ch in 0..3 {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                let base = line * line_step + min * stride + ch;
                for (t, &kt) in k.iter().enumerate() {
                    ss += src[base + t * stride] as i32 * kt;
                }
                out[out_index(line, o) + ch] = clip8(ss);
            }
        }
    }
}

/// `Image.resize((width, height), Image.BILINEAR)` of an RGB image: horizontal pass first, as
/// Pillow does (the order changes the 8-bit rounding, so it must be the same).
pub fn resize_bilinear(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let horizontal = (width != img.width).then(|| {
        let c = coeffs(img.width, width);
        let mut out = vec![0u8; width * img.height * 3];
        convolve(
            &img.data,
            &c,
            &mut out,
            (img.height, img.width * 3, 3),
            |y, x| (y * width + x) * 3,
        );
        Rgb8 {
            width,
            height: img.height,
            data: out,
        }
    });
    let src = horizontal.as_ref().unwrap_or(img);
    if height == src.height {
        return horizontal.unwrap_or_else(|| img.clone());
    }
    let c = coeffs(src.height, height);
    let w = src.width;
    let mut out = vec![0u8; w * height * 3];
    convolve(&src.data, &c, &mut out, (w, 3, w * 3), |x, y| {
        (y * w + x) * 3
    });
    Rgb8 {
        width: w,
        height,
        data: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy_and_constant_images_stay_constant() {
        let img = Rgb8 {
            width: 5,
            height: 3,
            data: (0..45).map(|i| (i * 5) as u8).collect(),
        };
        assert_eq!(resize_bilinear(&img, 5, 3), img);
        let flat = Rgb8 {
            width: 7,
            height: 4,
            data: [10u8, 200, 77].repeat(28),
        };
        for (w, h) in [(20, 9), (3, 2), (7, 11)] {
            let r = resize_bilinear(&flat, w, h);
            assert_eq!(r.data, [10u8, 200, 77].repeat(w * h), "{w}x{h}");
        }
    }
}
