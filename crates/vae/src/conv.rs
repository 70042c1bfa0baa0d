//! A convolutional encoder and decoder for the VAE: two stride-2 4x4 convolutions down to
//! `(c2, s/4, s/4)`, linear heads for the mean and log-variance, and the mirror image up.

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Module, VarBuilder};
use layers::kernels::linear::Linear;

fn down() -> Conv2dConfig {
    Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    }
}

fn up() -> ConvTranspose2dConfig {
    ConvTranspose2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    }
}

pub struct ConvEncoder {
    conv1: Conv2d,
    conv2: Conv2d,
    fc_mu: Linear,
    fc_logvar: Linear,
}

impl ConvEncoder {
    pub fn new(
        channels: usize,
        size: usize,
        widths: [usize; 2],
        latent: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let flat = widths[1] * (size / 4) * (size / 4);
        Ok(Self {
            conv1: layers::nn::init::conv2d(channels, widths[0], 4, down(), vb.pp("enc.0"))?,
            conv2: layers::nn::init::conv2d(widths[0], widths[1], 4, down(), vb.pp("enc.2"))?,
            fc_mu: layers::nn::init::linear(flat, latent, vb.pp("fc_mu"))?,
            fc_logvar: layers::nn::init::linear(flat, latent, vb.pp("fc_logvar"))?,
        })
    }

    /// `(b, c, s, s) -> ((b, latent), (b, latent))`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.conv1.forward(x)?.relu()?; // (b, w0, s/2, s/2)
        let h = self.conv2.forward(&h)?.relu()?.flatten_from(1)?; // (b, w1 * s/4 * s/4)
        Ok((self.fc_mu.forward(&h)?, self.fc_logvar.forward(&h)?))
    }
}

pub struct ConvDecoder {
    fc: Linear,
    deconv1: ConvTranspose2d,
    deconv2: ConvTranspose2d,
    widths: [usize; 2],
    size: usize,
}

impl ConvDecoder {
    pub fn new(
        channels: usize,
        size: usize,
        widths: [usize; 2],
        latent: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let flat = widths[1] * (size / 4) * (size / 4);
        Ok(Self {
            fc: layers::nn::init::linear(latent, flat, vb.pp("fc_dec"))?,
            deconv1: layers::nn::init::conv_transpose2d(
                widths[1],
                widths[0],
                4,
                up(),
                vb.pp("dec.0"),
            )?,
            deconv2: layers::nn::init::conv_transpose2d(
                widths[0],
                channels,
                4,
                up(),
                vb.pp("dec.2"),
            )?,
            widths,
            size,
        })
    }

    /// `(n, latent) -> (n, c * s * s)` Bernoulli logits, flattened.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let q = self.size / 4;
        let h = self
            .fc
            .forward(z)?
            .relu()?
            .reshape((n, self.widths[1], q, q))?;
        let h = self.deconv1.forward(&h)?.relu()?; // (n, w0, s/2, s/2)
        self.deconv2.forward(&h)?.flatten_from(1) // (n, c * s * s)
    }
}
