//! `genzoo eval`: a model's quality on held-out data.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use gan_variants::puzzle_locator::{PriorWeights, PRIOR_WEIGHTS};
use layers::loss::bits_per_dim;
use layers::{Likelihood, LikelihoodOptions, Rng, Stream};
use serde::Serialize;

use crate::commands::PlainWeights;
use crate::config::DataConfig;
use crate::config::RunConfig;
use crate::data::pipeline::SplitSources;
use crate::data::source::Label;
use crate::data::{batch_indices, batches_per_epoch, load_split, make_batch, Binarization, Split};
use crate::report::quality::{evaluate_samples, QualityReport};
use crate::report::translation::{TranslationArgs, TranslationReport};
use crate::run::checkpoint::{load_for_sampling, Loaded};
use layers::eval::metrics::{best_assignment, ClusterAssignment};
use layers::step::DataSpec;
use layers::CodedModel;

#[derive(Args)]
pub struct EvalCmd {
    /// Checkpoint or weights file: a path, or hf:OWNER/REPO[@REVISION]/FILE.safetensors (see
    /// `genzoo sample --help`).
    checkpoint: PathBuf,
    /// MNIST-format IDX directory or image folder; its test split is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Importance samples per image for latent-variable models.
    #[arg(long, default_value_t = 1000)]
    k: usize,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Only the first N test images (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Samples drawn for the sample metrics (Fréchet distance, classifier score, class
    /// coverage; 0 skips them).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Digit classifier weights for the sample metrics (default: the shipped one).
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Attribute classifier for a multi-domain translation model (default: NAME-attributes.safetensors
    /// beside the checkpoint; `genzoo classifier train --attributes` makes one).
    #[arg(long)]
    attribute_classifier: Option<PathBuf>,
    /// Puzzle-GAN: a locator whose priors the `located` figures add to placing the patches
    /// (default: NAME-locator.safetensors beside the checkpoint, when there is one; `genzoo
    /// classifier train --locator` makes one).
    #[arg(long)]
    locator: Option<PathBuf>,
    /// The locator's prior weights `POSITION,OFFSET,CENTRE` (default: the chosen 0.05,0.1,0.3;
    /// gan_variants::puzzle_locator::PRIOR_WEIGHTS).
    #[arg(long, value_parser = parse_prior_weights)]
    prior_weights: Option<PriorWeights>,
    /// The trained weights themselves rather than their moving average (which a GAN's
    /// checkpoint holds and which is the default).
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    plain: PlainWeights,
}

pub fn run(cmd: EvalCmd, device: Device) -> Result<()> {
    let report = evaluate(&EvalArgs {
        plain: cmd.plain.run_config()?,
        raw: cmd.raw,
        checkpoint: cmd.checkpoint,
        data: cmd.data,
        importance_samples: cmd.k,
        batch_size: cmd.batch_size,
        limit: cmd.limit,
        seed: cmd.seed,
        device,
        samples: cmd.samples,
        classifier: cmd.classifier,
        attribute_classifier: cmd.attribute_classifier,
        locator: cmd.locator,
        prior_weights: cmd.prior_weights,
    })?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// `POSITION,OFFSET,CENTRE`: three weights, each finite and at least 0.
fn parse_prior_weights(text: &str) -> std::result::Result<PriorWeights, String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    match values[..] {
        [position, offset, center] if values.iter().all(|v| v.is_finite() && *v >= 0.0) => {
            Ok(PriorWeights {
                position,
                offset,
                center,
            })
        }
        _ => Err(format!(
            "{text:?}: expected POSITION,OFFSET,CENTRE, three numbers each at least 0"
        )),
    }
}

pub struct EvalArgs {
    pub checkpoint: PathBuf,
    pub data: Option<PathBuf>,
    pub importance_samples: usize,
    pub batch_size: usize,
    /// Evaluate on the first N test images only (0 = all).
    pub limit: usize,
    pub seed: u64,
    pub device: Device,
    /// How to read a plain weights file without genzoo metadata.
    pub plain: Option<RunConfig>,
    /// Samples to draw for the sample metrics (0: none).
    pub samples: usize,
    /// Classifier weights for the sample metrics (default: the shipped one).
    pub classifier: Option<PathBuf>,
    /// Attribute classifier for multi-domain translation models.
    pub attribute_classifier: Option<PathBuf>,
    /// Puzzle-GAN's locator (default: beside the checkpoint, when there is one).
    pub locator: Option<PathBuf>,
    /// The locator's prior weights (default: [`PRIOR_WEIGHTS`]).
    pub prior_weights: Option<PriorWeights>,
    /// The trained weights rather than their average.
    pub raw: bool,
}

#[derive(Debug, Serialize)]
pub struct MetricRow {
    pub name: String,
    pub description: String,
    /// Mean per image, in nats.
    pub nats: f64,
    pub bits_per_dim: f64,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub checkpoint: String,
    pub step: u64,
    pub dataset: String,
    pub images: usize,
    pub binarization: String,
    /// None for implicit models.
    pub likelihood: Option<Likelihood>,
    pub importance_samples: Option<usize>,
    pub metrics: Vec<MetricRow>,
    pub sample_quality: Option<QualityReport>,
    /// InfoGAN: test accuracy of the categorical code through Q, best assignment to digits.
    pub code_accuracy: Option<f64>,
    /// InfoGAN: which digit each category was matched to, and what it holds.
    pub code_assignment: Option<ClusterAssignment>,
    /// Translation models: errors against the true translations, digits kept, attributes.
    pub translation: Option<TranslationReport>,
    /// A text-to-image model's figures on captioned test digits.
    pub text: Option<crate::report::text::TextReport>,
    /// Puzzle-GAN's figures on the test digits' key patches.
    pub puzzle: Option<crate::report::puzzle::PuzzleReport>,
}

impl EvalReport {
    /// The report of `loaded` with nothing measured yet.
    fn of(loaded: &Loaded, args: &EvalArgs) -> Self {
        Self {
            model: loaded.run.model.clone(),
            checkpoint: args.checkpoint.display().to_string(),
            step: loaded.progress.step,
            dataset: String::new(),
            images: 0,
            binarization: "none".into(),
            likelihood: None,
            importance_samples: None,
            metrics: Vec::new(),
            sample_quality: None,
            code_accuracy: None,
            code_assignment: None,
            translation: None,
            text: None,
            puzzle: None,
        }
    }
}

fn describe(name: &str) -> &str {
    match name {
        "nll" => "-log p(x)",
        "neg_elbo" => "negative ELBO (upper bound on -log p(x))",
        "reconstruction" => "-E_q log p(x|z) (one sample)",
        "kl" => "KL(q(z|x) || p(z))",
        other => other,
    }
}

pub fn evaluate(args: &EvalArgs) -> Result<EvalReport> {
    ensure!(args.batch_size > 0, "--batch-size must be positive");
    ensure!(args.importance_samples > 0, "--k must be positive");
    let loaded = load_for_sampling(
        &args.checkpoint,
        &args.device,
        args.plain.as_ref(),
        args.raw,
    )?;
    let model = loaded.model.as_ref();
    ensure!(
        (args.locator.is_none() && args.prior_weights.is_none()) || model.as_puzzle().is_some(),
        "--locator and --prior-weights place Puzzle-GAN's patches, and {} is a checkpoint of model `{}`",
        args.checkpoint.display(),
        loaded.run.model
    );
    if model.as_translator().is_some() {
        return translation(&loaded, args);
    }
    if let Some(puzzle) = model.as_puzzle() {
        return puzzle_report(&loaded, puzzle, args);
    }
    let sample_quality = match args.samples {
        0 => None,
        n => Some(evaluate_samples(
            model,
            n,
            args.seed,
            args.data.as_deref(),
            args.classifier.as_deref(),
            &args.device,
        )?),
    };
    let mut report = EvalReport {
        sample_quality,
        ..EvalReport::of(&loaded, args)
    };
    if model.as_likelihood().is_some() {
        likelihoods(&loaded, args, &mut report)?;
    } else {
        ensure!(
            report.sample_quality.is_some(),
            "model `{}` is implicit (no likelihood): its evaluation is the sample metrics, so --samples must be positive",
            loaded.run.model
        );
    }
    if let Some(captioned) = model.as_captioned() {
        let held_out = held_out_args(&loaded, args);
        report.text = Some(crate::report::text::evaluate(captioned, &held_out)?);
    }
    if let Some(coded) = model.as_coded() {
        let assignment = code_assignment(coded, model.image_shape(), args)?;
        report.code_accuracy = assignment.as_ref().map(|c| c.accuracy);
        report.code_assignment = assignment;
    }
    Ok(report)
}

/// A translation model's figures on the test images of its data.
fn translation(loaded: &Loaded, args: &EvalArgs) -> Result<EvalReport> {
    let report = crate::report::translation::evaluate(
        loaded.model.as_ref(),
        &TranslationArgs {
            run: &loaded.run,
            checkpoint: &args.checkpoint,
            data: args.data.as_deref(),
            limit: args.limit,
            batch_size: args.batch_size,
            classifier: args.classifier.as_deref(),
            attribute_classifier: args.attribute_classifier.clone(),
            device: &args.device,
        },
    )?;
    Ok(EvalReport {
        images: report.images,
        translation: Some(report),
        ..EvalReport::of(loaded, args)
    })
}

/// What the reports on held-out digits read, from the command's arguments.
fn held_out_args<'a>(loaded: &'a Loaded, args: &'a EvalArgs) -> crate::report::HeldOutArgs<'a> {
    crate::report::HeldOutArgs {
        run: &loaded.run,
        data: args.data.as_deref(),
        classifier: args.classifier.as_deref(),
        limit: args.limit,
        batch_size: args.batch_size,
        seed: args.seed,
        device: &args.device,
    }
}

/// Puzzle-GAN's figures: it completes images rather than drawing them.
fn puzzle_report(
    loaded: &Loaded,
    model: &dyn layers::Puzzle,
    args: &EvalArgs,
) -> Result<EvalReport> {
    let spec = loaded.model.data_spec();
    let locator =
        crate::report::locator::find(args.locator.as_deref(), &args.checkpoint, &args.device)?;
    let file = args
        .locator
        .clone()
        .unwrap_or_else(|| crate::report::locator::beside(&args.checkpoint));
    ensure!(
        locator.is_some() || args.prior_weights.is_none(),
        "--prior-weights weighs a locator's priors, and there is none at {} (pass --locator FILE)",
        file.display()
    );
    let arg = locator
        .as_ref()
        .map(|locator| crate::report::puzzle::LocatorArg {
            locator,
            file: file.display().to_string(),
            weights: args.prior_weights.unwrap_or(PRIOR_WEIGHTS),
            asked_for: args.locator.is_some(),
        });
    let report = crate::report::puzzle::evaluate(model, &spec, &held_out_args(loaded, args), arg)?;
    Ok(EvalReport {
        dataset: report.dataset.clone(),
        images: report.images,
        puzzle: Some(report),
        ..EvalReport::of(loaded, args)
    })
}

/// `-log p(x)` and the model's other per-image figures on the test digits.
fn likelihoods(loaded: &Loaded, args: &EvalArgs, report: &mut EvalReport) -> Result<()> {
    let model = loaded
        .model
        .as_likelihood()
        .context("the model has no likelihood")?;
    let mut data = load_split(args.data.as_deref(), Split::Test, model.image_shape())?;
    if args.limit > 0 {
        data.truncate(args.limit);
    }
    // Likelihoods are reported on deterministically binarized data (pixel >= 128).
    let binarize = match loaded.run.train.binarize {
        Binarization::None => Binarization::None,
        _ => Binarization::Threshold,
    };
    let opts = LikelihoodOptions {
        importance_samples: args.importance_samples,
    };
    let order: Vec<usize> = (0..data.len()).collect();
    let mut sums: Vec<(String, f64)> = Vec::new();
    for k in 0..batches_per_epoch(data.len(), args.batch_size) {
        let idx = batch_indices(&order, args.batch_size, k);
        let mut rng = Rng::derive(args.seed, Stream::Eval, k as u64);
        let x = make_batch(&data, idx, binarize, &mut rng, &args.device)?;
        let mut per_image: Vec<(String, Tensor)> =
            vec![("nll".into(), model.log_prob(&x, &opts, &mut rng)?.neg()?)];
        per_image.extend(model.extra_metrics(&x, &mut rng)?);
        for (i, (name, t)) in per_image.into_iter().enumerate() {
            let total = t
                .to_dtype(candle_core::DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            if sums.len() <= i {
                sums.push((name, 0.0));
            }
            sums[i].1 += total;
        }
    }
    let dims = model.dims();
    report.metrics = sums
        .into_iter()
        .map(|(name, total)| {
            let nats = total / data.len() as f64;
            MetricRow {
                description: describe(&name).to_string(),
                name,
                nats,
                bits_per_dim: bits_per_dim(nats, dims),
            }
        })
        .collect();
    let likelihood = model.likelihood();
    report.dataset = data.name.clone();
    report.images = data.len();
    report.binarization = format!("{binarize:?}").to_lowercase();
    report.likelihood = Some(likelihood);
    report.importance_samples =
        (likelihood == Likelihood::ImportanceWeighted).then_some(args.importance_samples);
    Ok(())
}

/// For a model whose discriminator predicts a categorical code (InfoGAN's Q): how well that
/// code classifies the test digits under the best one-to-one assignment of codes to digits.
fn code_assignment(
    coded: &dyn CodedModel,
    shape: layers::ImageShape,
    args: &EvalArgs,
) -> Result<Option<ClusterAssignment>> {
    let spec = DataSpec::images(shape);
    let test = SplitSources::load(
        &spec,
        &DataConfig::default(),
        args.data.as_deref(),
        Split::Test,
    )?;
    let n = test.images.len();
    let labels: Option<Vec<usize>> = (0..n)
        .map(|i| match test.images.label(i) {
            Label::Class(c) => Some(c as usize),
            _ => None,
        })
        .collect();
    let Some(labels) = labels else {
        return Ok(None);
    };
    let order: Vec<usize> = (0..n).collect();
    let mut clusters = Vec::with_capacity(n);
    for b in 0..batches_per_epoch(n, args.batch_size) {
        let idx = batch_indices(&order, args.batch_size, b);
        let batch = test.batch(idx, &[], Binarization::None, &args.device)?;
        let predicted = coded
            .category_logits(&batch.images)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        clusters.extend(predicted.into_iter().map(|c| c as usize));
    }
    let k = coded.categories();
    Ok(Some(best_assignment(&clusters, &labels, k.max(10))))
}

/// The categorical code's accuracy, then one line per category: its digit and how pure it is.
fn print_code_assignment(a: &ClusterAssignment) {
    println!(
        "categorical code as digit (through Q, best one-to-one assignment): {:.1}% of the test digits",
        100.0 * a.accuracy
    );
    for (code, (&digit, (&images, &matched))) in a
        .class_of_cluster
        .iter()
        .zip(a.images.iter().zip(&a.matched))
        .enumerate()
    {
        let purity = 100.0 * matched as f64 / images.max(1) as f64;
        println!("  code {code:>2} -> digit {digit}: {images:>4} test digits, {purity:5.1}% of them a {digit}");
    }
}

pub fn print_table(r: &EvalReport) {
    println!("model       {} (step {})", r.model, r.step);
    println!("checkpoint  {}", r.checkpoint);
    if let Some(t) = &r.translation {
        crate::report::translation::print(t);
        return;
    }
    if let Some(p) = &r.puzzle {
        crate::report::puzzle::print(p);
        return;
    }
    let Some(likelihood) = r.likelihood else {
        println!("likelihood  none (implicit model)");
        if let Some(q) = &r.sample_quality {
            crate::report::quality::print(q);
        }
        if let Some(a) = &r.code_assignment {
            print_code_assignment(a);
        }
        if let Some(t) = &r.text {
            crate::report::text::print(t);
        }
        return;
    };
    println!(
        "data        {} ({} images, binarization: {})",
        r.dataset, r.images, r.binarization
    );
    let how = match (likelihood, r.importance_samples) {
        (Likelihood::Exact, _) => "exact".to_string(),
        (Likelihood::ImportanceWeighted, Some(k)) => {
            format!("importance-weighted estimate, k = {k}")
        }
        (Likelihood::ImportanceWeighted, None) => "importance-weighted estimate".to_string(),
    };
    println!("likelihood  {how}");
    println!();
    println!(
        "{:<16} {:>12} {:>10}  meaning",
        "metric", "nats/image", "bits/dim"
    );
    for m in &r.metrics {
        println!(
            "{:<16} {:>12.3} {:>10.4}  {}",
            m.name, m.nats, m.bits_per_dim, m.description
        );
    }
    if let Some(q) = &r.sample_quality {
        crate::report::quality::print(q);
    }
}
