//! ggml block formats to f32 (the reference layouts from ggml-quants.c: 32-element blocks, an f16
//! scale first; 4-bit types keep elements 0..16 in the low nibbles and 16..32 in the high ones).
//! The 5-bit and K-quant types are in [`super::kquants`].

use super::kquants;
use super::reader::GgmlType;
use half::{bf16, f16};

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) {
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(h)),
        GgmlType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in data.chunks_exact(34) {
                let d = h(&b[..2]);
                out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in data.chunks_exact(18) {
                let d = h(&b[..2]);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in data.chunks_exact(20) {
                let (d, m) = (h(&b[..2]), h(&b[2..4]));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        _ => {
            let (_, size) = ty.block();
            let f: fn(&[u8], &mut Vec<f32>) = match ty {
                GgmlType::Q5_0 => kquants::q5_0,
                GgmlType::Q5_1 => kquants::q5_1,
                GgmlType::Q2K => kquants::q2_k,
                GgmlType::Q3K => kquants::q3_k,
                GgmlType::Q4K => kquants::q4_k,
                GgmlType::Q5K => kquants::q5_k,
                GgmlType::Q6K => kquants::q6_k,
                GgmlType::Q8K => kquants::q8_k,
                _ => unreachable!("handled above"),
            };
            for b in data.chunks_exact(size) {
                f(b, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = Vec::new();
        dequantize(GgmlType::Q8_0, &b, &mut out);
        let want: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.5).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn q4_0_block_nibble_order() {
        let mut b = f16b(2.0).to_vec();
        // Byte j: low nibble is element j, high nibble element j + 16.
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = Vec::new();
        dequantize(GgmlType::Q4_0, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(out[j + 16], ((15 - j) as f32 - 8.0) * 2.0);
        }
    }

    #[test]
    fn q4_1_block_min() {
        let mut b = f16b(0.25).to_vec();
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let mut out = Vec::new();
        dequantize(GgmlType::Q4_1, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.25 - 1.0);
            assert_eq!(out[j + 16], j as f32 * 0.25 - 1.0);
        }
    }
}
