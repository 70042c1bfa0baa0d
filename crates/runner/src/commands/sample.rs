//! `genzoo sample`: images from a trained model as a PNG grid.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use layers::{Rng, Stream};

use crate::commands::PlainWeights;
use crate::config::RunConfig;
use crate::data::folder::{folder_source, list_images};
use crate::data::pipeline::SplitSources;
use crate::data::transforms::{Image, Pipeline};
use crate::data::{load_split, make_batch, Binarization, Split};
use crate::report::grid::{save_image, GridOptions};
use crate::report::translation::tensor_of;
use crate::run::checkpoint::{load_for_sampling, Loaded};
use layers::{Batch, Domains, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleMode {
    /// Fresh samples from the model. The autoregressive models' fast samplers (one pixel at a
    /// time from cached activations or states) run on the CPU whatever `--device` says.
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
    /// For a multi-domain translation model (StarGAN): each input beside its translation into
    /// every domain.
    Domains,
    /// For a Progressive GAN: one row per resolution it has grown through (4 x 4 first), the
    /// same `--nrow` latents in every row, each shown at the full side.
    Stages,
    /// For Puzzle-GAN: `--from-test` test images completed from their first `--patches` key
    /// patches, in rows: the patches on black, the generated mask, the generated image, the
    /// generated image with the patches placed where they agree best with it, the real image.
    Puzzle,
}

#[derive(Args)]
pub struct SampleCmd {
    /// Checkpoint or weights file: a path, or hf:OWNER/REPO[@REVISION]/FILE.safetensors to
    /// download from the Hugging Face Hub once (SHA-256 checked, cached; GENZOO_HUB_ENDPOINT,
    /// HF_TOKEN, GENZOO_CACHE, GENZOO_OFFLINE=1).
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
    /// Test images for reconstruct / interpolate / translations (default: the bundled subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// For a two-domain translation model (CycleGAN): a2b or b2a; rows of inputs, their
    /// translations and their reconstructions.
    #[arg(long)]
    translate: Option<String>,
    /// Images to translate: a folder of png/jpg (default: the test images of the model's data).
    #[arg(long)]
    input: Option<PathBuf>,
    /// How many test images to translate.
    #[arg(long, default_value_t = 8)]
    from_test: usize,
    /// The trained weights themselves rather than their moving average (which a GAN's
    /// checkpoint holds and which is the default).
    #[arg(long)]
    raw: bool,
    /// For a text-to-image model: `-n` images of this sentence ("a thin three leaning left").
    #[arg(long)]
    caption: Option<String>,
    /// With --caption: rows of `--steps` images between the two captions' embeddings, one
    /// noise vector per row.
    #[arg(long)]
    caption_to: Option<String>,
    /// For --mode puzzle: key patches per image (default: as many as the model reads).
    #[arg(long)]
    patches: Option<usize>,
    /// For --mode puzzle: a locator whose priors place the patches (default:
    /// NAME-locator.safetensors beside the checkpoint, when there is one).
    #[arg(long)]
    locator: Option<PathBuf>,
    #[command(flatten)]
    plain: PlainWeights,
}

pub fn run(cmd: SampleCmd, device: Device) -> Result<()> {
    let n = sample(&SampleArgs {
        plain: cmd.plain.run_config()?,
        raw: cmd.raw,
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
        translate: cmd.translate,
        input: cmd.input,
        from_test: cmd.from_test,
        caption: cmd.caption,
        caption_to: cmd.caption_to,
        patches: cmd.patches,
        locator: cmd.locator,
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
    /// A two-domain translation's direction (`a2b`, `b2a`).
    pub translate: Option<String>,
    /// A folder of images to translate.
    pub input: Option<PathBuf>,
    /// Test images to translate.
    pub from_test: usize,
    pub device: Device,
    pub plain: Option<RunConfig>,
    /// The trained weights rather than their average.
    pub raw: bool,
    /// A caption to draw (text-to-image models), and one to interpolate towards.
    pub caption: Option<String>,
    pub caption_to: Option<String>,
    /// Key patches per image for `--mode puzzle`.
    pub patches: Option<usize>,
    /// Puzzle-GAN's locator (default: beside the checkpoint, when there is one).
    pub locator: Option<PathBuf>,
}

/// The most images one grid holds (32 x 32 of them). A model draws a grid's images in one
/// batch, and some models' activations cost megabytes per image (a PixelCNN layer: 0.4 MB), so
/// a size beyond this is refused before anything is allocated rather than run out of memory.
const MAX_GRID_IMAGES: usize = 1024;

pub fn sample(args: &SampleArgs) -> Result<usize> {
    anyhow::ensure!(args.n > 0, "-n must be positive");
    for (flag, value) in [
        ("-n", args.n),
        ("--steps", args.steps),
        ("--from-test", args.from_test),
    ] {
        anyhow::ensure!(
            value <= MAX_GRID_IMAGES,
            "{flag} {value}: a grid holds at most {MAX_GRID_IMAGES} images (for statistics over more samples, `genzoo eval` draws them in batches)"
        );
    }
    let loaded = load_for_sampling(
        &args.checkpoint,
        &args.device,
        args.plain.as_ref(),
        args.raw,
    )?;
    let model = loaded.model.as_ref();
    let mut rng = Rng::derive(args.seed, Stream::Sample, 0);
    anyhow::ensure!(
        args.patches.is_none() || args.mode == SampleMode::Puzzle,
        "--patches chooses the key patches of --mode puzzle"
    );
    anyhow::ensure!(
        args.locator.is_none() || args.mode == SampleMode::Puzzle,
        "--locator places the key patches of --mode puzzle"
    );
    let special = match (captioned(&loaded, args, &mut rng)?, args.mode) {
        (Some(grid), _) => Some(grid),
        (None, SampleMode::Puzzle) => Some(puzzle(&loaded, args, &mut rng)?),
        (None, _) => translations(&loaded, args)?,
    };
    if let Some((images, nrow)) = special {
        let grid = GridOptions { nrow, ..args.grid };
        save_image(&images, &args.out, grid)?;
        return Ok(images.dim(0)?);
    }
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
        SampleMode::Domains => anyhow::bail!("only translation models draw domains"),
        SampleMode::Puzzle => unreachable!("drawn above"),
        SampleMode::Stages => model
            .sample_stages(grid.nrow, &mut rng)
            .with_context(|| format!("--mode stages on model `{}`", loaded.run.model))?,
        SampleMode::Manifold => {
            let side = (args.n as f64).sqrt().round().max(2.0) as usize;
            grid.nrow = side;
            latent()?.manifold(side, &args.device)?
        }
    };
    save_image(&images, &args.out, grid)?;
    Ok(images.dim(0)?)
}

/// A text-to-image grid: `-n` images of `--caption`, or rows from `--caption` to
/// `--caption-to`. None without a caption (and an error when one was given to a model that
/// takes no text).
fn captioned(loaded: &Loaded, args: &SampleArgs, rng: &mut Rng) -> Result<Option<(Tensor, usize)>> {
    let name = &loaded.run.model;
    let Some(caption) = &args.caption else {
        anyhow::ensure!(
            args.caption_to.is_none(),
            "--caption-to interpolates from --caption, which is missing"
        );
        return Ok(None);
    };
    let Some(model) = loaded.model.as_captioned() else {
        anyhow::bail!(
            "{} is a checkpoint of model `{name}`, which takes no text (--caption is for text2image-gan)",
            args.checkpoint.display()
        );
    };
    anyhow::ensure!(
        args.mode == SampleMode::Sample,
        "--caption draws images of a sentence; it does not combine with --mode {:?}",
        args.mode
    );
    let Some(to) = &args.caption_to else {
        let captions = vec![caption.clone(); args.n];
        return Ok(Some((
            model.sample_captions(&captions, rng)?,
            args.grid.nrow,
        )));
    };
    let rows = args.n.div_ceil(args.steps).max(1);
    let images = (0..rows)
        .map(|_| model.interpolate_captions(caption, to, args.steps, rng))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some((Tensor::cat(&images, 0)?, args.steps)))
}

/// Puzzle-GAN's rows for the first `--from-test` test images and their first `--patches`
/// key patches.
fn puzzle(loaded: &Loaded, args: &SampleArgs, rng: &mut Rng) -> Result<(Tensor, usize)> {
    let name = &loaded.run.model;
    let Some(model) = loaded.model.as_puzzle() else {
        anyhow::bail!(
            "{} is a checkpoint of model `{name}`, which does not complete images from patches (--mode puzzle is for puzzle-gan)",
            args.checkpoint.display()
        );
    };
    let k = args.patches.unwrap_or(model.max_patches());
    anyhow::ensure!(
        (1..=model.max_patches()).contains(&k),
        "--patches {k}: model `{name}` reads 1 to {} key patches",
        model.max_patches()
    );
    let spec = loaded.model.data_spec();
    let sources = SplitSources::load(&spec, &loaded.run.data, args.data.as_deref(), Split::Test)?;
    let batch = sources.first(args.from_test.max(1), Binarization::None, &args.device)?;
    let n = batch.size()?;
    let locator =
        crate::report::locator::find(args.locator.as_deref(), &args.checkpoint, &args.device)?;
    let priors = locator
        .as_ref()
        .map(|l| l as &dyn layers::placement::Priors);
    Ok((model.rows(&batch, n, k, rng, priors)?, n))
}

/// The two directions of a two-domain model.
fn direction(name: &str) -> Result<(Target, Target, bool)> {
    match name {
        "a2b" => Ok((Target::AToB, Target::BToA, true)),
        "b2a" => Ok((Target::BToA, Target::AToB, false)),
        other => anyhow::bail!("unknown translation direction `{other}`: expected a2b or b2a"),
    }
}

/// The images to translate: `--input`'s folder, or the first `--from-test` test images of the
/// model's data (domain A's, or B's for `b2a`), at the model's shape.
fn translation_inputs(loaded: &Loaded, args: &SampleArgs, from_b: bool) -> Result<Batch> {
    let spec = loaded.model.data_spec();
    let device = &args.device;
    if let Some(dir) = &args.input {
        let [c, s, _] = spec.shape;
        let listing = list_images(dir)?;
        let source = folder_source(listing, s, c, Pipeline::default(), 256)?;
        let n = source.len().min(args.from_test.max(1));
        let idx: Vec<usize> = (0..n).collect();
        let images: Vec<Image> = idx
            .iter()
            .map(|&i| source.image(i, &mut Rng::new(0)))
            .collect::<Result<_>>()?;
        return Ok(Batch::images(tensor_of(&images, device)?));
    }
    let sources = SplitSources::load(&spec, &loaded.run.data, args.data.as_deref(), Split::Test)?;
    let batch = sources.first(args.from_test.max(1), Binarization::None, device)?;
    Ok(match (from_b, batch.domain_b.clone()) {
        (true, Some(b)) => Batch::images(b),
        _ => batch,
    })
}

/// A translation model's grid: `--translate` rows (inputs, translations, reconstructions) or
/// `--mode domains` rows (each input and its translation into every domain). None for other
/// models (and an error when a translation was asked of one).
fn translations(loaded: &Loaded, args: &SampleArgs) -> Result<Option<(Tensor, usize)>> {
    let name = &loaded.run.model;
    let Some(t) = loaded.model.as_translator() else {
        if args.translate.is_some() || args.mode == SampleMode::Domains {
            anyhow::bail!(
                "{} is a checkpoint of model `{name}`, which does not translate images (--translate is for cyclegan, --mode domains for stargan)",
                args.checkpoint.display()
            );
        }
        return Ok(None);
    };
    match t.domains() {
        Domains::Two => {
            anyhow::ensure!(
                args.mode == SampleMode::Sample,
                "model `{name}` translates between two domains: use --translate a2b or b2a, not --mode {:?}",
                args.mode
            );
            let (forward, back, a2b) = direction(args.translate.as_deref().unwrap_or("a2b"))?;
            let x = translation_inputs(loaded, args, !a2b)?.images;
            let y = t.translate(&x, &forward)?;
            let z = t.translate(&y, &back)?;
            let n = x.dim(0)?;
            Ok(Some((Tensor::cat(&[&x, &y, &z], 0)?, n)))
        }
        Domains::Attributes { .. } => {
            anyhow::ensure!(
                args.translate.is_none(),
                "model `{name}` translates to attribute domains: use --mode domains, not --translate"
            );
            let x = translation_inputs(loaded, args, false)?.images;
            let domains = t.domains().all();
            let mut rows = Vec::new();
            for i in 0..x.dim(0)? {
                let xi = x.narrow(0, i, 1)?;
                rows.push(xi.clone());
                for d in &domains {
                    let c = Tensor::new(d.as_slice(), &args.device)?.unsqueeze(0)?;
                    rows.push(t.translate(&xi, &Target::Attributes(c))?);
                }
            }
            Ok(Some((Tensor::cat(&rows, 0)?, domains.len() + 1)))
        }
    }
}
