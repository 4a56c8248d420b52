//! The encoder and decoder stacks of `AutoencoderKL` (diffusers' `Encoder` / `Decoder` with
//! `DownEncoderBlock2D` / `UpDecoderBlock2D`, `UNetMidBlock2D`, `ResnetBlock2D`, the mid-block
//! `Attention`, `Downsample2D` with padding 0 and `Upsample2D` with a conv).

use super::{VaeConfig, IMAGE, LATENT, LATENT_LOGVAR, LATENT_MEAN};
use crate::arch::nn::Net;
use crate::checkpoint::{Tensor, TensorSource};
use crate::onnx::{Attr, Dim};
use crate::quant::Scheme;
use crate::Error;

/// Every norm of the VAE uses this epsilon (diffusers hard-codes 1e-6 for the AutoencoderKL).
const EPS: f32 = 1e-6;

struct Vae<'n, 'g, 's> {
    net: &'n mut Net<'g>,
    src: &'s dyn TensorSource,
    groups: usize,
}

impl Vae<'_, '_, '_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, Error> {
        self.src.get_shaped(name, shape)
    }

    /// 3×3 (pad 1) or 1×1 convolution `name` from `cin` to `cout` channels.
    fn conv(
        &mut self,
        name: &str,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
    ) -> Result<String, Error> {
        let w = self.get(&format!("{name}.weight"), &[cout, cin, k, k])?;
        let b = self.get(&format!("{name}.bias"), &[cout])?;
        let p = k / 2;
        self.net.conv2d(name, x, &w, &b, 1, [p, p, p, p])
    }

    fn norm(&mut self, name: &str, x: &str, c: usize) -> Result<String, Error> {
        let g = self.get(&format!("{name}.weight"), &[c])?;
        let b = self.get(&format!("{name}.bias"), &[c])?;
        self.net.group_norm(name, x, self.groups, &g, &b, EPS)
    }

    fn norm_silu(&mut self, name: &str, x: &str, c: usize) -> Result<String, Error> {
        let n = self.norm(name, x, c)?;
        Ok(self.net.silu(&format!("/{name}/SiLU"), &n))
    }

    /// ResnetBlock2D without time embedding: x' = shortcut(x) + conv2(σ(norm2(conv1(σ(norm1(x)))))).
    fn resnet(&mut self, p: &str, x: &str, cin: usize, cout: usize) -> Result<String, Error> {
        let h = self.norm_silu(&format!("{p}.norm1"), x, cin)?;
        let h = self.conv(&format!("{p}.conv1"), &h, cin, cout, 3)?;
        let h = self.norm_silu(&format!("{p}.norm2"), &h, cout)?;
        let h = self.conv(&format!("{p}.conv2"), &h, cout, cout, 3)?;
        let skip = if cin != cout {
            self.conv(&format!("{p}.conv_shortcut"), x, cin, cout, 1)?
        } else {
            x.to_string()
        };
        Ok(self.net.op(&format!("/{p}/Add"), "Add", &[&skip, &h], &[]))
    }

    /// The mid-block's single-head self-attention over the h·w positions, with its residual.
    fn attention(&mut self, p: &str, x: &str, c: usize) -> Result<String, Error> {
        let n = self.norm(&format!("{p}.group_norm"), x, c)?;
        let flat = self
            .net
            .g
            .const_i64(&format!("/{p}/flat_shape"), &[3], &[0, 0, -1]);
        let t = self
            .net
            .op(&format!("/{p}/Flatten"), "Reshape", &[&n, &flat], &[]);
        let t = self.net.op(
            &format!("/{p}/ToTokens"),
            "Transpose",
            &[&t],
            &[("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let proj = |vae: &mut Self, n: &str, input: &str| -> Result<String, Error> {
            let w = vae.get(&format!("{p}.{n}.weight"), &[c, c])?;
            let b = vae.get(&format!("{p}.{n}.bias"), &[c])?;
            vae.net
                .linear(&format!("{p}.{n}"), input, &w, Some(&b), Scheme::None)
        };
        let q = proj(self, "to_q", &t)?;
        let k = proj(self, "to_k", &t)?;
        let v = proj(self, "to_v", &t)?;
        // com.microsoft MultiHeadAttention rather than MatMul/Softmax/MatMul: at 1024² the mid
        // block attends over 128² positions, and at 2048² a materialised score matrix would be
        // 65536² elements; ONNX Runtime's CUDA kernel can run it without one (memory-efficient
        // attention, head sizes up to 1024 in half precision).
        let a = self.net.ms_op(
            &format!("/{p}/attn/MultiHeadAttention"),
            "MultiHeadAttention",
            &[&q, &k, &v],
            &[
                ("num_heads", Attr::Int(1)),
                ("scale", Attr::Float((c as f32).powf(-0.5))),
            ],
        );
        let o = proj(self, "to_out.0", &a)?;
        let o = self.net.op(
            &format!("/{p}/ToChannels"),
            "Transpose",
            &[&o],
            &[("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let shape = self.net.op(&format!("/{p}/Shape"), "Shape", &[x], &[]);
        let o = self
            .net
            .op(&format!("/{p}/Unflatten"), "Reshape", &[&o, &shape], &[]);
        Ok(self.net.op(&format!("/{p}/Residual"), "Add", &[&o, x], &[]))
    }

    fn mid_block(&mut self, p: &str, x: &str, c: usize, attention: bool) -> Result<String, Error> {
        let mut h = self.resnet(&format!("{p}.resnets.0"), x, c, c)?;
        if attention {
            h = self.attention(&format!("{p}.attentions.0"), &h, c)?;
        }
        self.resnet(&format!("{p}.resnets.1"), &h, c, c)
    }
}

/// Emits the encoder: `image` → `latent_mean`, `latent_logvar`.
pub fn build_encoder(cfg: &VaeConfig, src: &dyn TensorSource, net: &mut Net) -> Result<(), Error> {
    let ch = &cfg.block_out_channels;
    let l = cfg.latent_channels;
    let dims = |c: usize, h: &str, w: &str| [Dim::from("batch"), c.into(), h.into(), w.into()];
    net.g
        .input(IMAGE, net.dt(), &dims(cfg.in_channels, "height", "width"));
    for name in [LATENT_MEAN, LATENT_LOGVAR] {
        let d = dims(l, "latent_height", "latent_width");
        net.g.output(name, net.dt(), &d);
    }
    let mut v = Vae {
        net,
        src,
        groups: cfg.norm_num_groups,
    };

    let mut x = v.conv("encoder.conv_in", IMAGE, cfg.in_channels, ch[0], 3)?;
    let mut cin = ch[0];
    for (i, &cout) in ch.iter().enumerate() {
        let p = format!("encoder.down_blocks.{i}");
        for j in 0..cfg.layers_per_block {
            x = v.resnet(&format!("{p}.resnets.{j}"), &x, cin, cout)?;
            cin = cout;
        }
        if i + 1 < ch.len() {
            // Downsample2D with padding 0: zero-pad right and bottom by one, 3×3 stride 2.
            let name = format!("{p}.downsamplers.0.conv");
            let w = v.get(&format!("{name}.weight"), &[cout, cout, 3, 3])?;
            let b = v.get(&format!("{name}.bias"), &[cout])?;
            x = v.net.conv2d(&name, &x, &w, &b, 2, [0, 0, 1, 1])?;
        }
    }
    let c = *ch.last().expect("checked non-empty");
    x = v.mid_block("encoder.mid_block", &x, c, cfg.mid_block_add_attention)?;
    x = v.norm_silu("encoder.conv_norm_out", &x, c)?;
    x = v.conv("encoder.conv_out", &x, c, 2 * l, 3)?;
    if cfg.use_quant_conv {
        x = v.conv("quant_conv", &x, 2 * l, 2 * l, 1)?;
    }

    let parts = v.net.g.node(
        "/vae/moments/Split",
        "Split",
        "",
        &[&x],
        2,
        &[("axis", Attr::Int(1)), ("num_outputs", Attr::Int(2))],
    );
    // The clamp as Max/Min: ONNX Runtime's CUDA Clip has no bf16 kernel.
    let lo = v.net.scalar("/vae/logvar/min", -30.0);
    let hi = v.net.scalar("/vae/logvar/max", 20.0);
    let logvar = v.net.op("/vae/logvar/Max", "Max", &[&parts[1], &lo], &[]);
    let logvar = v.net.op("/vae/logvar/Min", "Min", &[&logvar, &hi], &[]);
    for (from, to) in [(&parts[0], LATENT_MEAN), (&logvar, LATENT_LOGVAR)] {
        v.net.g.identity_output(&format!("/vae/{to}"), from, to);
    }
    Ok(())
}

/// Emits the decoder: `latent` → `image`.
pub fn build_decoder(cfg: &VaeConfig, src: &dyn TensorSource, net: &mut Net) -> Result<(), Error> {
    let ch = &cfg.block_out_channels;
    let l = cfg.latent_channels;
    let dims = |c: usize, h: &str, w: &str| [Dim::from("batch"), c.into(), h.into(), w.into()];
    net.g
        .input(LATENT, net.dt(), &dims(l, "latent_height", "latent_width"));
    net.g
        .output(IMAGE, net.dt(), &dims(cfg.out_channels, "height", "width"));
    let mut v = Vae {
        net,
        src,
        groups: cfg.norm_num_groups,
    };

    let mut x = LATENT.to_string();
    if cfg.use_post_quant_conv {
        x = v.conv("post_quant_conv", &x, l, l, 1)?;
    }
    let top = *ch.last().expect("checked non-empty");
    x = v.conv("decoder.conv_in", &x, l, top, 3)?;
    x = v.mid_block("decoder.mid_block", &x, top, cfg.mid_block_add_attention)?;

    let mut cin = top;
    for (i, &cout) in ch.iter().rev().enumerate() {
        let p = format!("decoder.up_blocks.{i}");
        for j in 0..=cfg.layers_per_block {
            x = v.resnet(&format!("{p}.resnets.{j}"), &x, cin, cout)?;
            cin = cout;
        }
        if i + 1 < ch.len() {
            x = upsample_nearest2x(v.net, &format!("/{p}/upsamplers.0"), &x);
            x = v.conv(&format!("{p}.upsamplers.0.conv"), &x, cout, cout, 3)?;
        }
    }
    x = v.norm_silu("decoder.conv_norm_out", &x, ch[0])?;
    x = v.conv("decoder.conv_out", &x, ch[0], cfg.out_channels, 3)?;
    v.net.g.identity_output("/vae/image", &x, IMAGE);
    Ok(())
}

/// Upsample2D's nearest-neighbour ×2 (every pixel repeated 2×2), as a broadcast: `[b, c, h, w]`
/// → `[b, c, h, 1, w, 1]` → Expand `[b, c, h, 2, w, 2]` → `[b, c, 2h, 2w]`. Resize would do the
/// same but has no bf16 kernel in ONNX Runtime's CUDA provider; Expand and Reshape have.
fn upsample_nearest2x(net: &mut Net, name: &str, x: &str) -> String {
    let axes = net.g.const_i64(&format!("{name}/axes"), &[2], &[3, 5]);
    let rep = net
        .g
        .const_i64(&format!("{name}/repeat"), &[6], &[1, 1, 1, 2, 1, 2]);
    let twice = net
        .g
        .const_i64(&format!("{name}/twice"), &[4], &[1, 1, 2, 2]);
    let u = net.op(&format!("{name}/Unsqueeze"), "Unsqueeze", &[x, &axes], &[]);
    let e = net.op(&format!("{name}/Expand"), "Expand", &[&u, &rep], &[]);
    let shape = net.op(&format!("{name}/Shape"), "Shape", &[x], &[]);
    let shape = net.op(&format!("{name}/OutShape"), "Mul", &[&shape, &twice], &[]);
    net.op(&format!("{name}/Reshape"), "Reshape", &[&e, &shape], &[])
}
