//! `genzoo eval`: a model's quality on held-out data.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use layers::loss::bits_per_dim;
use layers::{Likelihood, LikelihoodOptions, Rng, Stream};
use serde::Serialize;

use crate::checkpoint::{load_any, Loaded, LoadedAdversarial};
use crate::config::RunConfig;
use crate::data::{batch_indices, batches_per_epoch, load_split, make_batch, Binarization, Split};
use crate::gan_train::{load_images, real_batch};
use crate::quality::{evaluate_samples, QualityReport};
use anyhow::Context;
use layers::eval::metrics::{best_assignment, ClusterAssignment};

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
    let loaded = load_any(&args.checkpoint, &args.device, args.plain.as_ref())?;
    let generative = loaded.generative();
    let sample_quality = match args.samples {
        0 => None,
        n => Some(evaluate_samples(
            generative,
            n,
            args.seed,
            args.data.as_deref(),
            args.classifier.as_deref(),
            &args.device,
        )?),
    };
    let loaded = match loaded {
        Loaded::Likelihood(l) => l,
        Loaded::Adversarial(a) => {
            ensure!(
                sample_quality.is_some(),
                "model `{}` is implicit (no likelihood): its evaluation is the sample metrics, so --samples must be positive",
                a.run.model
            );
            let code_assignment = code_assignment(&a, args)?;
            return Ok(EvalReport {
                code_accuracy: code_assignment.as_ref().map(|c| c.accuracy),
                code_assignment,
                model: a.run.model.clone(),
                checkpoint: args.checkpoint.display().to_string(),
                step: a.progress.step,
                dataset: String::new(),
                images: 0,
                binarization: "none".into(),
                likelihood: None,
                importance_samples: None,
                metrics: Vec::new(),
                sample_quality,
            });
        }
    };
    let model = loaded.model.as_ref();
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
    let metrics = sums
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
    Ok(EvalReport {
        model: loaded.run.model.clone(),
        checkpoint: args.checkpoint.display().to_string(),
        step: loaded.progress.step,
        dataset: data.name.clone(),
        images: data.len(),
        binarization: format!("{binarize:?}").to_lowercase(),
        likelihood: Some(likelihood),
        importance_samples: (likelihood == Likelihood::ImportanceWeighted)
            .then_some(args.importance_samples),
        metrics,
        sample_quality,
        code_accuracy: None,
        code_assignment: None,
    })
}

/// For a model whose discriminator predicts a categorical code (InfoGAN's Q): how well that
/// code classifies the test digits under the best one-to-one assignment of codes to digits.
fn code_assignment(
    model: &LoadedAdversarial,
    args: &EvalArgs,
) -> Result<Option<ClusterAssignment>> {
    let gan = model.model.as_ref();
    let Some(k) = gan.categories() else {
        return Ok(None);
    };
    let shape = gan.output_shape();
    let test = load_images(args.data.as_deref(), Split::Test, shape)?;
    let Some(labels) = &test.labels else {
        return Ok(None);
    };
    let order: Vec<usize> = (0..test.len()).collect();
    let mut clusters = Vec::with_capacity(test.len());
    for b in 0..batches_per_epoch(test.len(), args.batch_size) {
        let idx = batch_indices(&order, args.batch_size, b);
        let (x, _) = real_batch(&test, idx, shape, false, &args.device)?;
        let verdict = gan.discriminate(&x, None, false)?;
        let q = verdict
            .q
            .with_context(|| format!("model `{}` has no Q head", model.run.model))?;
        let predicted = q.narrow(1, 0, k)?.argmax(1)?.to_vec1::<u32>()?;
        clusters.extend(predicted.into_iter().map(|c| c as usize));
    }
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
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
    let Some(likelihood) = r.likelihood else {
        println!("likelihood  none (implicit model)");
        if let Some(q) = &r.sample_quality {
            crate::quality::print(q);
        }
        if let Some(a) = &r.code_assignment {
            print_code_assignment(a);
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
        crate::quality::print(q);
    }
}
