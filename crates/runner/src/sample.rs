//! `genzoo sample`: images from a trained model as a PNG grid.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use layers::{Rng, Stream};

use crate::checkpoint::{load_any, Loaded};
use crate::config::RunConfig;
use crate::data::{load_split, make_batch, Binarization, Split};
use crate::grid::{save_image, GridOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleMode {
    /// Fresh samples from the model.
    Sample,
    /// Fresh samples through the model's reference sampler (for autoregressive models, the loop
    /// that re-runs the whole network per pixel): the same images as `sample`, slower.
    Reference,
    /// Test images (first row) and their reconstructions (second row).
    Reconstruct,
    /// Rows of images decoded between the codes of two test images.
    Interpolate,
    /// For a 2-D latent space: a grid over the latent plane.
    Manifold,
    /// For a model with latent codes (InfoGAN): the categorical code fixed per row, continuous
    /// code `--code` swept along the columns (`--steps` of them).
    Codes,
}

pub struct SampleArgs {
    pub checkpoint: PathBuf,
    pub n: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub grid: GridOptions,
    pub mode: SampleMode,
    pub steps: usize,
    pub data: Option<PathBuf>,
    /// The continuous code that `codes` sweeps.
    pub code: usize,
    pub device: Device,
    pub plain: Option<RunConfig>,
}

pub fn sample(args: &SampleArgs) -> Result<usize> {
    anyhow::ensure!(args.n > 0, "-n must be positive");
    let loaded = load_any(&args.checkpoint, &args.device, args.plain.as_ref())?;
    let model = loaded.generative();
    let mut rng = Rng::derive(args.seed, Stream::Sample, 0);
    let latent = || {
        model.as_latent().with_context(|| {
            format!(
                "model `{}` has no latent space to {:?}",
                loaded.run().model,
                args.mode
            )
        })
    };
    let test_images = |n: usize| -> Result<Tensor> {
        let data = load_split(args.data.as_deref(), Split::Test, model.image_shape())?;
        let idx: Vec<usize> = (0..n.min(data.len())).collect();
        make_batch(
            &data,
            &idx,
            Binarization::Threshold,
            &mut Rng::new(0),
            &args.device,
        )
    };
    let mut grid = args.grid;
    let images = match args.mode {
        SampleMode::Sample => model.sample(args.n, &mut rng)?,
        SampleMode::Reference => model.sample_reference(args.n, &mut rng)?,
        SampleMode::Reconstruct => {
            let x = test_images(args.n)?;
            grid.nrow = x.dim(0)?;
            Tensor::cat(&[&x, &latent()?.reconstruct(&x)?], 0)?
        }
        SampleMode::Interpolate => {
            let rows = args.n.div_ceil(args.steps).max(1);
            let x = test_images(2 * rows)?;
            let mut out = Vec::new();
            for r in 0..x.dim(0)? / 2 {
                out.push(latent()?.interpolate(
                    &x.narrow(0, 2 * r, 1)?,
                    &x.narrow(0, 2 * r + 1, 1)?,
                    args.steps,
                )?);
            }
            grid.nrow = args.steps;
            Tensor::cat(&out, 0)?
        }
        SampleMode::Codes => {
            let Loaded::Adversarial(a) = &loaded else {
                anyhow::bail!(
                    "model `{}` has no latent codes to sweep",
                    loaded.run().model
                );
            };
            let rows = args.n.div_ceil(args.steps).max(1);
            let input = a
                .model
                .code_sweep(rows, args.steps, args.code, &mut rng)?
                .with_context(|| format!("model `{}` has no latent codes to sweep", a.run.model))?;
            grid.nrow = args.steps;
            layers::gan::to_unit_range(&a.model.generate(&input, false)?)?
        }
        SampleMode::Manifold => {
            let side = (args.n as f64).sqrt().round().max(2.0) as usize;
            grid.nrow = side;
            latent()?.manifold(side, &args.device)?
        }
    };
    save_image(&images, &args.out, grid)?;
    Ok(images.dim(0)?)
}
