//! Cached sampling for convolutional autoregressive models (Ramachandran et al. 2017, "Fast
//! Generation for Convolutional Autoregressive Models").
//!
//! With masked convolutions every layer's activation at a position depends only on inputs
//! strictly before that position (mask A hides the position itself from the first layer, and
//! mask B layers only look back). So when generating position `p`, every layer's activations at
//! earlier positions are final: compute each layer at `p` alone from the cached activations in
//! its kernel window, read the logit, draw the pixel, move on. One position costs what one
//! output pixel of the network costs, instead of a whole forward pass.

use candle_core::{DType, Result, Tensor};
use layers::masked::MaskedConv2d;

use crate::ar::Output;

/// One masked convolution as plain arrays, evaluated one position at a time.
pub struct CachedConv {
    /// Masked kernel `(out, in, kh, kw)`, flattened.
    weight: Vec<f32>,
    bias: Vec<f32>,
    out: usize,
    inp: usize,
    kh: usize,
    kw: usize,
    /// Kernel taps that the mask leaves non-zero for some channel pair.
    taps: Vec<(usize, usize)>,
    relu: bool,
}

impl CachedConv {
    pub fn new(conv: &MaskedConv2d, relu: bool) -> Result<Self> {
        Self::from_parts(&conv.masked_weight()?, Some(conv.bias()), relu)
    }

    /// From a kernel `(out, in, kh, kw)` and an optional bias.
    pub fn from_parts(kernel: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Self> {
        let w = kernel.to_dtype(DType::F32)?;
        let (out, inp, kh, kw) = w.dims4()?;
        let weight = w.flatten_all()?.to_vec1::<f32>()?;
        let taps = (0..kh)
            .flat_map(|y| (0..kw).map(move |x| (y, x)))
            .filter(|&(y, x)| (0..out * inp).any(|oi| weight[(oi * kh + y) * kw + x] != 0.0))
            .collect();
        Ok(Self {
            weight,
            bias: match bias {
                Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                None => vec![0.0; out],
            },
            out,
            inp,
            kh,
            kw,
            taps,
            relu,
        })
    }

    /// Writes this layer's activations at `(y, x)` of image `k` into `dst` `(n, out, H, W)`
    /// from `src` `(n, in, H, W)`, with zero padding.
    pub fn at(
        &self,
        src: &[f32],
        dst: &mut [f32],
        (h, w): (usize, usize),
        k: usize,
        (y, x): (usize, usize),
    ) {
        let (ph, pw) = (self.kh / 2, self.kw / 2);
        let src = &src[k * self.inp * h * w..][..self.inp * h * w];
        for o in 0..self.out {
            let mut acc = self.bias[o];
            for &(ky, kx) in &self.taps {
                let (Some(iy), Some(ix)) = ((y + ky).checked_sub(ph), (x + kx).checked_sub(pw))
                else {
                    continue;
                };
                if iy >= h || ix >= w {
                    continue;
                }
                let base = (o * self.inp * self.kh + ky) * self.kw + kx;
                for i in 0..self.inp {
                    acc += self.weight[base + i * self.kh * self.kw] * src[(i * h + iy) * w + ix];
                }
            }
            dst[((k * self.out + o) * h + y) * w + x] = if self.relu { acc.max(0.0) } else { acc };
        }
    }

    pub fn out_channels(&self) -> usize {
        self.out
    }
}

/// Samples a stack of masked convolutions position by position. `convs[0]` reads the image;
/// the last layer's output channels are the logits of the image's channels (`output.levels()`
/// each).
pub fn sample_conv_stack(
    convs: &[CachedConv],
    [c, h, w]: [usize; 3],
    output: Output,
    uniforms: &[f32],
    n: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let dims = c * h * w;
    let mut image = vec![0f32; n * dims];
    let mut acts: Vec<Vec<f32>> = convs
        .iter()
        .map(|l| vec![0f32; n * l.out_channels() * h * w])
        .collect();
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                for k in 0..n {
                    // With several channels the activations at (y, x) see the channels drawn
                    // so far at (y, x): recompute them for every channel.
                    for (l, conv) in convs.iter().enumerate() {
                        let (done, rest) = acts.split_at_mut(l);
                        let src = if l == 0 { &image } else { &done[l - 1] };
                        conv.at(src, &mut rest[0], (h, w), k, (y, x));
                    }
                    let logits = acts.last().expect("at least one layer");
                    let i = (ch * h + y) * w + x;
                    image[k * dims + i] = draw_at(
                        logits,
                        output,
                        c,
                        (h, w),
                        k,
                        (ch, y, x),
                        uniforms[k * dims + i],
                    );
                }
            }
        }
    }
    Tensor::from_vec(image, (n, c, h, w), device)
}

/// Draws value `(ch, y, x)` of image `k` from the logits `(n, c * levels, h, w)`.
pub fn draw_at(
    logits: &[f32],
    output: Output,
    channels: usize,
    (h, w): (usize, usize),
    k: usize,
    (ch, y, x): (usize, usize, usize),
    u: f32,
) -> f32 {
    let levels = output.levels();
    let at = |l: usize| logits[((k * channels + ch) * levels + l) * h * w + y * w + x];
    let values: Vec<f32> = (0..levels).map(at).collect();
    output.draw(&values, u)
}
