//! Times the Diagonal BiLSTM's cached sampler, and with `--reference` the reference loop too,
//! on the default model (28 x 28, 7 layers, h = 16; PyTorch's init: the work per pixel does not
//! depend on the weights), and checks that both draw the same images from one stream.
//!
//! `cargo run -p pixelrnn --release --example diagonal_bilstm_sampling -- [N] [--reference]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use pixelrnn::ar::{naive_sample, Autoregressive};
use pixelrnn::diagonal_bilstm::DiagonalBiLstm;
use pixelrnn::pixelrnn::Config;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reference = args.iter().any(|a| a == "--reference");
    let n: usize = match args.iter().find(|a| !a.starts_with("--")) {
        Some(n) => n.parse()?,
        None => 64,
    };
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let model = DiagonalBiLstm::new(&Config::default(), vb)?;
    let dims: usize = model.image_shape().iter().product();
    let u = layers::Rng::new(1).uniform_vec(n * dims);

    let (cached, seconds) = timed(|| model.sample_from_uniforms(&u, n))?;
    println!("cached sampler: {n} images in {seconds:.2} s");
    if reference {
        let (slow, seconds) = timed(|| naive_sample(&model, &u, n))?;
        println!("reference loop: {n} images in {seconds:.2} s");
        let differ = (cached.ne(&slow)?.to_dtype(DType::F32)?.sum_all()?).to_scalar::<f32>()?;
        println!("pixels that differ: {differ} of {}", n * dims);
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> candle_core::Result<Tensor>) -> candle_core::Result<(Tensor, f64)> {
    let start = Instant::now();
    let t = f()?;
    Ok((t, start.elapsed().as_secs_f64()))
}
