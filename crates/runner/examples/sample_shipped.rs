//! genzoo as a library: load shipped (or converted) weights, draw samples, save a grid and
//! score the samples with the shipped digit classifier, in a few lines.
//!
//! `cargo run --release -p runner --example sample_shipped -- [WEIGHTS] [OUT.png]`
//! (default: `models/progan.safetensors`, `samples.png`). Any genzoo checkpoint or exported
//! file works: the file's metadata names the model and its config.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use layers::Rng;
use runner::report::{classifier, grid, quality::classifier_view};
use runner::run::checkpoint::load_for_sampling;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let weights = PathBuf::from(args.next().unwrap_or("models/progan.safetensors".into()));
    let out = PathBuf::from(args.next().unwrap_or("samples.png".into()));
    let device = Device::Cpu;

    // The averaged weights where the file has them (`raw = false`), as `genzoo sample` draws.
    let loaded = load_for_sampling(&weights, &device, None, false)?;
    let images = loaded.model.sample(16, &mut Rng::new(0))?; // (16, c, h, w) in [0, 1]
    grid::save_image(&images, &out, grid::GridOptions::default())?;

    let net = classifier::load(None, &device)?; // the shipped digit classifier
    let digits = net
        .forward(&classifier_view(&images)?)?
        .argmax(1)?
        .to_vec1::<u32>()?;
    println!(
        "{}: 16 samples of {} in {}; the classifier reads {digits:?}",
        weights.display(),
        loaded.run.model,
        out.display()
    );
    Ok(())
}
