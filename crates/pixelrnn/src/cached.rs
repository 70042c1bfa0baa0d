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
use layers::nn::masked::MaskedConv2d;
use rayon::prelude::*;

use crate::output::Output;

/// One masked convolution as plain arrays, evaluated one position at a time.
pub struct CachedConv {
    /// The masked kernel at its live taps as `(out, tap, in)`: one tap's input channels are
    /// contiguous, so a position's output is a few dot products.
    weight: Vec<f32>,
    bias: Vec<f32>,
    out: usize,
    inp: usize,
    kh: usize,
    kw: usize,
    /// Kernel taps `(ky, kx)` that the mask leaves non-zero for some channel pair.
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
        let full = w.flatten_all()?.to_vec1::<f32>()?;
        let at = |o: usize, i: usize, y: usize, x: usize| full[((o * inp + i) * kh + y) * kw + x];
        let taps: Vec<(usize, usize)> = (0..kh)
            .flat_map(|y| (0..kw).map(move |x| (y, x)))
            .filter(|&(y, x)| (0..out).any(|o| (0..inp).any(|i| at(o, i, y, x) != 0.0)))
            .collect();
        let weight = (0..out)
            .flat_map(|o| {
                taps.iter()
                    .flat_map(move |&(y, x)| (0..inp).map(move |i| (o, i, y, x)))
            })
            .map(|(o, i, y, x)| at(o, i, y, x))
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

    /// The live taps that fall inside an `h x w` map for output `(y, x)`, with their input
    /// position (zero padding: the others contribute nothing).
    fn window(
        &self,
        (h, w): (usize, usize),
        (y, x): (usize, usize),
    ) -> impl Iterator<Item = (usize, (usize, usize))> + '_ {
        let (ph, pw) = (self.kh / 2, self.kw / 2);
        self.taps
            .iter()
            .enumerate()
            .filter_map(move |(t, &(ky, kx))| {
                let iy = (y + ky).checked_sub(ph).filter(|&iy| iy < h)?;
                let ix = (x + kx).checked_sub(pw).filter(|&ix| ix < w)?;
                Some((t, (iy, ix)))
            })
    }

    /// The kernel row of output `o` at live tap `t`.
    fn kernel(&self, o: usize, t: usize) -> &[f32] {
        &self.weight[(o * self.taps.len() + t) * self.inp..][..self.inp]
    }

    fn activate(&self, acc: f32) -> f32 {
        if self.relu {
            acc.max(0.0)
        } else {
            acc
        }
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
        let src = &src[k * self.inp * h * w..][..self.inp * h * w];
        for o in 0..self.out {
            let mut acc = self.bias[o];
            for (t, (iy, ix)) in self.window((h, w), (y, x)) {
                for (i, &wt) in self.kernel(o, t).iter().enumerate() {
                    acc += wt * src[(i * h + iy) * w + ix];
                }
            }
            dst[((k * self.out + o) * h + y) * w + x] = self.activate(acc);
        }
    }

    /// As [`CachedConv::at`] for one image stored channels-last: `src (H, W, in)`,
    /// `dst (H, W, out)`. Every tap's inputs are contiguous, so each output is a sum of dot
    /// products.
    pub fn at_channels_last(
        &self,
        src: &[f32],
        dst: &mut [f32],
        (h, w): (usize, usize),
        (y, x): (usize, usize),
    ) {
        let window: Vec<(usize, &[f32])> = self
            .window((h, w), (y, x))
            .map(|(t, (iy, ix))| (t, &src[(iy * w + ix) * self.inp..][..self.inp]))
            .collect();
        let dst = &mut dst[(y * w + x) * self.out..][..self.out];
        for (o, out) in dst.iter_mut().enumerate() {
            let acc = window
                .iter()
                .map(|&(t, input)| dot(self.kernel(o, t), input))
                .sum::<f32>();
            *out = self.activate(self.bias[o] + acc);
        }
    }

    pub fn out_channels(&self) -> usize {
        self.out
    }
}

/// `a . b` with eight running sums, which the compiler keeps in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for j in 0..8 {
            sums[j] += x[j] * y[j];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Samples a stack of masked convolutions position by position, the images in parallel.
/// `convs[0]` reads the image; the last layer's output channels are the logits of the image's
/// channels (`output.levels()` each). `uniforms` `(n, c, h, w)` decide the draws.
pub fn sample_conv_stack(
    convs: &[CachedConv],
    [c, h, w]: [usize; 3],
    output: Output,
    uniforms: &[f32],
    n: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let dims = c * h * w;
    let images: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|k| sample_one(convs, [c, h, w], output, &uniforms[k * dims..][..dims]))
        .collect();
    Tensor::from_vec(images.concat(), (n, c, h, w), device)
}

/// One image `(c, h, w)`; every layer's activations kept channels-last.
fn sample_one(
    convs: &[CachedConv],
    [c, h, w]: [usize; 3],
    output: Output,
    uniforms: &[f32],
) -> Vec<f32> {
    let levels = output.levels();
    let mut image = vec![0f32; h * w * c]; // (h, w, c)
    let mut acts: Vec<Vec<f32>> = convs
        .iter()
        .map(|l| vec![0f32; h * w * l.out_channels()])
        .collect();
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                // With several channels the activations at (y, x) see the channels drawn
                // so far at (y, x): recompute them for every channel.
                for (l, conv) in convs.iter().enumerate() {
                    let (done, rest) = acts.split_at_mut(l);
                    let src = if l == 0 { &image } else { &done[l - 1] };
                    conv.at_channels_last(src, &mut rest[0], (h, w), (y, x));
                }
                let logits = acts.last().expect("at least one layer");
                let at = (y * w + x) * c * levels + ch * levels;
                let u = uniforms[(ch * h + y) * w + x];
                image[(y * w + x) * c + ch] = output.draw(&logits[at..at + levels], u);
            }
        }
    }
    // (h, w, c) -> (c, h, w)
    (0..c)
        .flat_map(|ch| (0..h * w).map(move |p| (ch, p)))
        .map(|(ch, p)| image[p * c + ch])
        .collect()
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
