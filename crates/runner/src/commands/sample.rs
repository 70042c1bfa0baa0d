//! `genzoo sample`: images from a trained model as a PNG grid.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use layers::{Rng, Stream};

use crate::commands::PlainWeights;
use crate::config::RunConfig;
use crate::data::{load_split, make_batch, Binarization, Split};
use crate::report::grid::{save_image, GridOptions};
use crate::run::checkpoint::load_for_sampling;

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

#[derive(Args)]
pub struct SampleCmd {
    checkpoint: PathBuf,
    #[arg(short, default_value_t = 64)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Images per row of the grid.
    #[arg(long, default_value_t = 8)]
    nrow: usize,
    #[arg(long, default_value_t = 2)]
    padding: usize,
    #[arg(long, value_enum, default_value = "sample")]
    mode: SampleMode,
    /// Images per interpolation or code-sweep row.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// The continuous code `--mode codes` sweeps.
    #[arg(long, default_value_t = 0)]
    code: usize,
    /// Test images for reconstruct / interpolate (default: the bundled subset).
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    plain: PlainWeights,
}

pub fn run(cmd: SampleCmd, device: Device) -> Result<()> {
    let n = sample(&SampleArgs {
        plain: cmd.plain.run_config()?,
        checkpoint: cmd.checkpoint,
        n: cmd.n,
        seed: cmd.seed,
        out: cmd.out.clone(),
        grid: GridOptions {
            nrow: cmd.nrow,
            padding: cmd.padding,
            ..Default::default()
        },
        mode: cmd.mode,
        steps: cmd.steps,
        data: cmd.data,
        code: cmd.code,
        device,
    })?;
    println!("wrote {} images to {}", n, cmd.out.display());
    Ok(())
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
    let loaded = load_for_sampling(&args.checkpoint, &args.device, args.plain.as_ref())?;
    let model = loaded.model.as_ref();
    let mut rng = Rng::derive(args.seed, Stream::Sample, 0);
    let latent = || {
        model.as_latent().with_context(|| {
            format!(
                "model `{}` has no latent space to {:?}",
                loaded.run.model, args.mode
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
            let coded = model.as_coded().with_context(|| {
                format!("model `{}` has no latent codes to sweep", loaded.run.model)
            })?;
            let rows = args.n.div_ceil(args.steps).max(1);
            grid.nrow = args.steps;
            coded.code_sweep(rows, args.steps, args.code, &mut rng)?
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
