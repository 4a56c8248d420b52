//! FLUX latents: 2×2 packing of the VAE's (B, C, H/8, W/8) grid into (B, H/16·W/16, 4C) tokens and
//! back, the 3-axis position ids the transformer's RoPE reads, and the VAE's scale/shift.
//! Layouts are diffusers' `_pack_latents` / `_unpack_latents` / `_prepare_latent_image_ids`.

/// The VAE downsamples 8×; packing groups 2×2 latent pixels, so images are multiples of 16.
pub const VAE_SCALE: usize = 8;
pub const PACK: usize = 2;
pub const PIXELS_PER_TOKEN: usize = VAE_SCALE * PACK;

/// A latent grid's shape: batch, channels, latent height and width (image size / 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl LatentShape {
    /// The latent grid diffusers makes for an image: 2·(size // 16) per side, so any size rounds
    /// down to a packable grid.
    pub fn for_image(batch: usize, channels: usize, width: usize, height: usize) -> Self {
        LatentShape {
            batch,
            channels,
            height: PACK * (height / PIXELS_PER_TOKEN),
            width: PACK * (width / PIXELS_PER_TOKEN),
        }
    }

    pub fn len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Packed tokens per image (the "image sequence length" μ is computed from).
    pub fn seq_len(&self) -> usize {
        (self.height / PACK) * (self.width / PACK)
    }

    /// Features per packed token.
    pub fn token_dim(&self) -> usize {
        self.channels * PACK * PACK
    }

    fn check_packable(&self) {
        assert!(
            self.height.is_multiple_of(PACK) && self.width.is_multiple_of(PACK),
            "latent grid {}×{} is not a multiple of 2",
            self.height,
            self.width
        );
    }
}

/// (B, C, H, W) → (B, H/2·W/2, 4C): token (i, j) holds channel c's 2×2 block at feature c·4 + 2dy + dx.
pub fn pack(latents: &[f32], shape: LatentShape) -> Vec<f32> {
    shape.check_packable();
    assert_eq!(latents.len(), shape.len(), "latents do not match {shape:?}");
    let LatentShape {
        batch,
        channels,
        height,
        width,
    } = shape;
    let (h2, w2) = (height / 2, width / 2);
    let mut out = vec![0.0; latents.len()];
    let mut o = 0;
    for b in 0..batch {
        for i in 0..h2 {
            for j in 0..w2 {
                for c in 0..channels {
                    let plane = (b * channels + c) * height * width;
                    for dy in 0..2 {
                        let row = plane + (2 * i + dy) * width + 2 * j;
                        out[o] = latents[row];
                        out[o + 1] = latents[row + 1];
                        o += 2;
                    }
                }
            }
        }
    }
    out
}

/// The inverse of [`pack`]: (B, H/2·W/2, 4C) → (B, C, H, W).
pub fn unpack(tokens: &[f32], shape: LatentShape) -> Vec<f32> {
    shape.check_packable();
    assert_eq!(tokens.len(), shape.len(), "tokens do not match {shape:?}");
    let LatentShape {
        batch,
        channels,
        height,
        width,
    } = shape;
    let (h2, w2) = (height / 2, width / 2);
    let mut out = vec![0.0; tokens.len()];
    let mut o = 0;
    for b in 0..batch {
        for i in 0..h2 {
            for j in 0..w2 {
                for c in 0..channels {
                    let plane = (b * channels + c) * height * width;
                    for dy in 0..2 {
                        let row = plane + (2 * i + dy) * width + 2 * j;
                        out[row] = tokens[o];
                        out[row + 1] = tokens[o + 1];
                        o += 2;
                    }
                }
            }
        }
    }
    out
}

/// Image position ids, (H/2·W/2, 3) row-major: [0, row, column] per packed token.
pub fn image_ids(shape: LatentShape) -> Vec<f32> {
    let (h2, w2) = (shape.height / PACK, shape.width / PACK);
    let mut ids = Vec::with_capacity(h2 * w2 * 3);
    for i in 0..h2 {
        for j in 0..w2 {
            ids.extend_from_slice(&[0.0, i as f32, j as f32]);
        }
    }
    ids
}

/// Text position ids, (seq_len, 3): all zeros (FLUX puts every text token at the origin).
pub fn text_ids(seq_len: usize) -> Vec<f32> {
    vec![0.0; seq_len * 3]
}

/// The VAE's latent normalisation (vae/config.json: scaling_factor, shift_factor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeScaling {
    pub scaling_factor: f32,
    pub shift_factor: f32,
}

impl Default for VaeScaling {
    /// FLUX.1-dev's VAE.
    fn default() -> Self {
        VaeScaling {
            scaling_factor: 0.3611,
            shift_factor: 0.1159,
        }
    }
}

impl VaeScaling {
    /// Before the VAE decoder: z / scaling + shift.
    pub fn to_vae(&self, latents: &mut [f32]) {
        for x in latents {
            *x = *x / self.scaling_factor + self.shift_factor;
        }
    }

    /// After the VAE encoder: (z − shift) · scaling.
    pub fn from_vae(&self, latents: &mut [f32]) {
        for x in latents {
            *x = (*x - self.shift_factor) * self.scaling_factor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_is_identity() {
        let shape = LatentShape {
            batch: 2,
            channels: 3,
            height: 4,
            width: 6,
        };
        let x: Vec<f32> = (0..shape.len()).map(|i| i as f32).collect();
        let p = pack(&x, shape);
        assert_ne!(p, x);
        assert_eq!(unpack(&p, shape), x);
    }

    #[test]
    fn first_token_is_channel_major_2x2_blocks() {
        // One channel-plane of 4×4 holding its own index: token 0 = block rows 0..2, cols 0..2.
        let shape = LatentShape {
            batch: 1,
            channels: 2,
            height: 4,
            width: 4,
        };
        let x: Vec<f32> = (0..shape.len()).map(|i| i as f32).collect();
        let p = pack(&x, shape);
        assert_eq!(&p[..8], &[0.0, 1.0, 4.0, 5.0, 16.0, 17.0, 20.0, 21.0]);
        assert_eq!(&p[8..12], &[2.0, 3.0, 6.0, 7.0]); // token 1 starts at column 2
    }

    #[test]
    fn sizes_round_down_to_packable_grids() {
        let s = LatentShape::for_image(1, 16, 1024, 1360);
        assert_eq!(
            (s.height, s.width, s.seq_len(), s.token_dim()),
            (170, 128, 85 * 64, 64)
        );
        assert_eq!(LatentShape::for_image(1, 16, 1030, 1030).width, 128);
    }
}
