//! The encoder and decoder of the pytorch/examples VAE (`vae/main.py`): 784-400-20 with ReLU,
//! parameters `fc1`, `fc21` (mean), `fc22` (log-variance), `fc3`, `fc4`.

use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};
use layers::kernels::activation::Activation;
use layers::kernels::linear::Linear;

pub struct MlpEncoder {
    fc1: Linear,
    fc21: Linear,
    fc22: Linear,
}

impl MlpEncoder {
    pub fn new(input_dim: usize, hidden: usize, latent: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: layers::nn::init::linear(input_dim, hidden, vb.pp("fc1"))?,
            fc21: layers::nn::init::linear(hidden, latent, vb.pp("fc21"))?,
            fc22: layers::nn::init::linear(hidden, latent, vb.pp("fc22"))?,
        })
    }

    /// `(b, c, h, w) -> ((b, latent), (b, latent))`: mean and log-variance of q(z|x).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self
            .fc1
            .forward_activated(&x.flatten_from(1)?, Activation::Relu)?; // (b, hidden)
        Ok((self.fc21.forward(&h)?, self.fc22.forward(&h)?))
    }
}

pub struct MlpDecoder {
    fc3: Linear,
    fc4: Linear,
}

impl MlpDecoder {
    pub fn new(latent: usize, hidden: usize, output_dim: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            fc3: layers::nn::init::linear(latent, hidden, vb.pp("fc3"))?,
            fc4: layers::nn::init::linear(hidden, output_dim, vb.pp("fc4"))?,
        })
    }

    /// `(n, latent) -> (n, output_dim)` Bernoulli logits.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.fc4
            .forward(&self.fc3.forward_activated(z, Activation::Relu)?)
    }
}
