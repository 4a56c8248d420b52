//! ggml's K-quant block formats (256-element super-blocks, ggml-quants.c `dequantize_row_q*_K`) and
//! the 5-bit legacy types, to f32.
//!
//! Each value is computed with the same f32 operations in the same order as ggml (and gguf-py's
//! numpy port): the sub-block scale `d·sc` first, then `scale·q − d_min·m`. Rust does not contract
//! `a·b − c` into a fused multiply-add, so results are bit-identical to the reference.

use half::f16;

pub const QK_K: usize = 256;

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K: entries
/// 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); entries 4..8 split into a low
/// nibble in bytes 8..12 and the top two bits of bytes 0..8.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin. 16 sub-blocks
/// of 16; element `128·g + 32·s + i` is bits `2s` of `qs[32g + i]`.
pub fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (h(&b[80..82]), h(&b[82..84]));
    for e in 0..QK_K {
        let (g, s, i) = (e / 128, (e / 32) % 4, e % 32);
        let sc = scales[e / 16];
        let dl = d * (sc & 0xF) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let q = (qs[32 * g + i] >> (2 * s)) & 3;
        out.push(dl * q as f32 - ml);
    }
}

/// Q3_K: hmask[32] (the third bit, set = no offset), qs[64] (low 2 bits), scales[12] (16 6-bit
/// scales, biased by 32), d. Element `e` in sub-block `e / 16`.
pub fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = h(&b[108..110]);
    let mut dl = [0f32; 16];
    for (j, v) in dl.iter_mut().enumerate() {
        let low = (scales[j % 8] >> (4 * (j / 8))) & 0xF;
        let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        *v = d * ((low | (high << 4)) as i8 - 32) as f32;
    }
    for e in 0..QK_K {
        let (g, s, i) = (e / 128, (e / 32) % 4, e % 32);
        let low = ((qs[32 * g + i] >> (2 * s)) & 3) as i8;
        let high = (hmask[i] >> (e / 32)) & 1;
        let q = if high == 1 { low } else { low - 4 };
        out.push(dl[e / 16] * q as f32);
    }
}

/// Q4_K: d, dmin, scales[12], qs[128] (4 bits). 8 sub-blocks of 32; element `64·g + 32·n + i` is
/// nibble `n` of `qs[32g + i]`.
pub fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, scales, qs) = (h(&b[0..2]), h(&b[2..4]), &b[4..16], &b[16..144]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (g, n) = (j / 2, j % 2);
        for i in 0..32 {
            let q = (qs[32 * g + i] >> (4 * n)) & 0xF;
            out.push(dl * q as f32 - ml);
        }
    }
}

/// Q5_K: Q4_K plus qh[32], whose bit `j` of byte `i` is the fifth bit of element `32·j + i`.
pub fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, scales) = (h(&b[0..2]), h(&b[2..4]), &b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (g, n) = (j / 2, j % 2);
        for i in 0..32 {
            let q = ((qs[32 * g + i] >> (4 * n)) & 0xF) | (((qh[i] >> j) & 1) << 4);
            out.push(dl * q as f32 - ml);
        }
    }
}

/// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d; values biased by 32.
/// Element `128·g + 64·n + i` (i < 64) takes nibble `n` of `ql[64g + i]`; element
/// `128·g + 32·s + i` (i < 32) takes bits `2s` of `qh[32g + i]`. Sub-blocks of 16.
pub fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = h(&b[208..210]);
    for e in 0..QK_K {
        let g = e / 128;
        let r = e % 128;
        let low = (ql[64 * g + r % 64] >> (4 * (r / 64))) & 0xF;
        let high = (qh[32 * g + r % 32] >> (2 * (r / 32))) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        out.push(d * scales[e / 16] as i8 as f32 * q as f32);
    }
}

/// Q8_K: d (f32), qs[256] (int8), bsums[16] (int16, for dot products; unused here).
pub fn q8_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes(b[..4].try_into().unwrap());
    out.extend(b[4..260].iter().map(|&q| d * q as i8 as f32));
}

/// Q5_0: d, qh (u32: bit `i` is the fifth bit of element `i`), qs[16]; values biased by 16.
pub fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = h(&b[..2]);
    let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
    let qs = &b[6..22];
    for e in 0..32 {
        let low = (qs[e % 16] >> (4 * (e / 16))) & 0xF;
        let q = (low | ((((qh >> e) & 1) as u8) << 4)) as i8 - 16;
        out.push(d * q as f32);
    }
}

/// Q5_1: d, m (min), qh, qs[16]; unsigned values.
pub fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (h(&b[..2]), h(&b[2..4]));
    let qh = u32::from_le_bytes(b[4..8].try_into().unwrap());
    let qs = &b[8..24];
    for e in 0..32 {
        let low = (qs[e % 16] >> (4 * (e / 16))) & 0xF;
        let q = low | ((((qh >> e) & 1) as u8) << 4);
        out.push(d * q as f32 + m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_K has no gguf-py dequantiser (ggml only uses it for dot products): a hand-made block.
    #[test]
    fn q8_k_block() {
        let mut b = 0.25f32.to_le_bytes().to_vec();
        b.extend((0..256i32).map(|i| (i - 128) as i8 as u8));
        b.extend([0u8; 32]);
        let mut out = Vec::new();
        q8_k(&b, &mut out);
        let want: Vec<f32> = (0..256).map(|i| (i - 128) as f32 * 0.25).collect();
        assert_eq!(out, want);
    }

    /// The 6-bit scale/min packing of Q4_K/Q5_K: sub-blocks 4..8 take their top bits from bytes 0..8.
    #[test]
    fn k4_scale_min_packing() {
        let mut s = [0u8; 12];
        s[1] = 0b11_000101; // scale 1 = 5, top bits of scale 5 = 3
        s[5] = 0b10_000111; // min 1 = 7, top bits of min 5 = 2
        s[9] = 0b0110_1001; // scale 5 low = 9, min 5 low = 6
        assert_eq!(scale_min_k4(1, &s), (5, 7));
        assert_eq!(scale_min_k4(5, &s), (9 | (3 << 4), 6 | (2 << 4)));
    }
}
