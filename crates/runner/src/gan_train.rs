//! The one training loop of every GAN (`layers::gan::Adversarial`): per batch, `d_steps`
//! discriminator steps on real images and detached generated ones (plus WGAN-GP's penalty),
//! then one generator step, each network with its own Adam; the generator's weight average
//! after every step; a JSONL log, per-epoch grids from a fixed noise batch drawn with the
//! averaged weights, a loss plot and checkpoints (both optimisers and the average, so
//! `--resume` continues exactly). A non-finite loss or a discriminator that wins outright for
//! `collapse_steps` steps stops the run, naming the step, with the last good checkpoint kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use layers::gan::{
    discriminator_loss, enable_second_order_gradients, generator_loss, gradient_penalty,
    to_tanh_range, vars_with_prefix, AdversarialModel, GanLoss, WeightAverage,
};
use layers::{Adam, Rng, Stream};
use serde_json::json;

use crate::checkpoint::{
    build_adversarial, load_adversarial, restore_optimizer_at, save_train_state, Progress,
    TrainState, AVERAGE_PREFIX,
};
use crate::config::RunConfig;
use crate::data::{
    batches_per_epoch, is_idx_dir, load_split, make_batch, Batches, Binarization, Dataset, Split,
};
use crate::grid::{save_image, GridOptions};
use crate::plot::{plot_curves, Series};
use crate::train::{
    finish_run, new_run_dir, open_run, resumed_config, resumed_run_dir, start_progress, RunDir,
    TrainArgs, TrainOutcome, INTERRUPTED,
};

const G_OPTIMIZER: &str = "optimizer.generator";
const D_OPTIMIZER: &str = "optimizer.discriminator";

/// The model, its variables, the two optimisers and the weight average.
pub(crate) struct Networks {
    model: Box<dyn AdversarialModel>,
    varmap: VarMap,
    generator: Adam,
    discriminator: Adam,
    average: WeightAverage,
}

pub(crate) fn networks(
    model: Box<dyn AdversarialModel>,
    varmap: VarMap,
    run: &RunConfig,
) -> Result<Networks> {
    let g_vars = vars_with_prefix(&varmap, "generator.");
    let mut d_vars = vars_with_prefix(&varmap, "discriminator.");
    if g_vars.is_empty() || d_vars.is_empty() {
        bail!(
            "model `{}` must name its variables generator.* and discriminator.*",
            run.model
        );
    }
    // An auxiliary head steps with the generator (see `Adversarial::auxiliary_head`).
    let mut g_optimized = g_vars.clone();
    if let Some(head) = model.auxiliary_head() {
        let (head_vars, trunk): (Vec<_>, Vec<_>) = d_vars
            .into_iter()
            .partition(|(name, _)| name.starts_with(head));
        g_optimized.extend(head_vars);
        d_vars = trunk;
    }
    Ok(Networks {
        generator: Adam::from_named_vars(g_optimized, run.gan.generator_adam(&run.train))?,
        discriminator: Adam::from_named_vars(d_vars, run.train.adam())?,
        average: WeightAverage::new(g_vars, run.gan.ema_decay)?,
        model,
        varmap,
    })
}

/// Fresh networks, or those of the checkpoint to resume, with the run config and directory.
fn start(args: &TrainArgs) -> Result<(RunConfig, Networks, Progress, std::path::PathBuf)> {
    match &args.resume {
        Some(path) => {
            let loaded = load_adversarial(path, &args.device, None, false)?;
            if loaded.run.model != args.run.model {
                bail!(
                    "{} is a checkpoint of model `{}`, not `{}`",
                    path.display(),
                    loaded.run.model,
                    args.run.model
                );
            }
            let run = resumed_config(&loaded.run, &args.overrides)?;
            let mut nets = networks(loaded.model, loaded.varmap, &run)?;
            let ck = &loaded.checkpoint;
            restore_optimizer_at(&mut nets.generator, ck, G_OPTIMIZER, path)?;
            restore_optimizer_at(&mut nets.discriminator, ck, D_OPTIMIZER, path)?;
            for (name, _, avg) in &mut nets.average.slots {
                let key = format!("{AVERAGE_PREFIX}.{name}");
                match ck.tensors.get(&key) {
                    Some(t) => *avg = t.clone(),
                    None => bail!(
                        "{}: missing tensor `{key}` (the weight average)",
                        path.display()
                    ),
                }
            }
            // One average update per step.
            nets.average.updates = loaded.progress.step;
            let dir = resumed_run_dir(args.out.as_deref(), path)?;
            Ok((run, nets, loaded.progress, dir))
        }
        None => {
            let mut run = args.run.clone();
            args.overrides.apply(&mut run);
            run.train.validate()?;
            let (model, varmap, run) = build_adversarial(&run, &args.device)?;
            let dir = new_run_dir(args.out.as_deref(), &run.model)?;
            let nets = networks(model, varmap, &run)?;
            Ok((run, nets, Progress::default(), dir))
        }
    }
}

/// Digits are 28 x 28; a larger model (DCGAN's 32 x 32) gets them centred on a black border.
pub(crate) fn load_images(data: Option<&Path>, split: Split, shape: [usize; 3]) -> Result<Dataset> {
    let [c, h, w] = shape;
    let digits = data.is_none_or(is_idx_dir);
    if digits && h > 28 && w > 28 {
        load_split(data, split, [c, 28, 28])
    } else {
        load_split(data, split, shape)
    }
}

/// A batch in [-1, 1] at the model's size, and its class labels when the model wants them.
pub(crate) fn real_batch(
    data: &Dataset,
    idx: &[usize],
    shape: [usize; 3],
    conditional: bool,
    device: &Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let x = make_batch(data, idx, Binarization::None, &mut Rng::new(0), device)?;
    let (pad_h, pad_w) = (
        (shape[1] - data.shape[1]) / 2,
        (shape[2] - data.shape[2]) / 2,
    );
    let x = x
        .pad_with_zeros(2, pad_h, pad_h)?
        .pad_with_zeros(3, pad_w, pad_w)?;
    let labels = if conditional {
        let Some(labels) = &data.labels else {
            bail!("{} has no class labels for a conditional model", data.name);
        };
        let l: Vec<u32> = idx.iter().map(|&i| labels[i] as u32).collect();
        Some(Tensor::new(l, device)?)
    } else {
        None
    };
    Ok((to_tanh_range(&x)?, labels))
}

/// One batch: `d_steps` discriminator steps, one generator step, the average's update.
/// Returns the step's metrics.
pub(crate) fn adversarial_step(
    nets: &mut Networks,
    run: &RunConfig,
    real: &Tensor,
    labels: Option<&Tensor>,
    rng: &mut Rng,
) -> Result<Vec<(String, f64)>> {
    let gan = &run.gan;
    let b = real.dim(0)?;
    let model = nets.model.as_ref();
    let scalar = |t: &Tensor| -> Result<f64> {
        Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
    };
    let (mut d_loss_value, mut d_real, mut d_fake) = (0.0, 0.0, 0.0);
    for _ in 0..gan.d_steps {
        let input = model.draw_input(b, rng)?;
        let fake = model.generate(&input, true)?.detach();
        let real_verdict = model.discriminate(real, labels, true)?;
        let fake_verdict = model.discriminate(&fake, input.classes.as_ref(), true)?;
        let mut loss = discriminator_loss(gan.loss, &real_verdict.logits, &fake_verdict.logits)?;
        if gan.loss == GanLoss::WganGp {
            let alpha = rng.uniform(b, real.device())?;
            let critic = |x: &Tensor| Ok(model.discriminate(x, labels, true)?.logits);
            loss = (loss + (gradient_penalty(&critic, real, &fake, &alpha)? * gan.gp_weight)?)?;
        }
        if model.auxiliary_head().is_none() {
            if let Some(aux) = model.auxiliary_loss(&input, &fake_verdict)? {
                loss = (loss + aux)?;
            }
        }
        d_loss_value = scalar(&loss)?;
        d_real = scalar(&real_verdict.logits.mean_all()?)?;
        d_fake = scalar(&fake_verdict.logits.mean_all()?)?;
        nets.discriminator.backward_step(&loss)?;
    }
    let input = model.draw_input(b, rng)?;
    let fake = model.generate(&input, true)?;
    let verdict = model.discriminate(&fake, input.classes.as_ref(), true)?;
    let mut loss = generator_loss(gan.loss, &verdict.logits)?;
    let mut metrics = Vec::new();
    if let Some(aux) = model.auxiliary_loss(&input, &verdict)? {
        metrics.push(("info_loss".to_string(), scalar(&aux)?));
        loss = (loss + aux)?;
    }
    let g_loss_value = scalar(&loss)?;
    nets.generator.backward_step(&loss)?;
    nets.average.update()?;
    let mut all = vec![
        ("d_loss".to_string(), d_loss_value),
        ("g_loss".to_string(), g_loss_value),
        ("d_real".to_string(), d_real),
        ("d_fake".to_string(), d_fake),
    ];
    all.extend(metrics);
    Ok(all)
}

/// Saves the run: weights, both optimisers, the average.
fn save(
    nets: &Networks,
    run: &RunConfig,
    progress: &Progress,
    dataset: &str,
    path: &Path,
) -> Result<()> {
    let extra: HashMap<String, Tensor> = nets
        .average
        .slots
        .iter()
        .map(|(name, _, avg)| (format!("{AVERAGE_PREFIX}.{name}"), avg.clone()))
        .collect();
    save_train_state(
        &TrainState {
            run,
            varmap: &nets.varmap,
            optimizers: &[
                (G_OPTIMIZER, &nets.generator),
                (D_OPTIMIZER, &nets.discriminator),
            ],
            extra,
            progress,
            dataset,
        },
        path,
    )
}

pub fn train(args: TrainArgs) -> Result<TrainOutcome> {
    let device = args.device.clone();
    let (run, mut nets, mut progress, run_dir) = start(&args)?;
    run.gan.validate()?;
    if run.gan.loss == GanLoss::WganGp {
        enable_second_order_gradients();
    }
    let shape = nets.model.image_shape();
    let conditional = layers::gan::Adversarial::classes(nets.model.as_ref()).is_some();
    let mut train_data = load_images(args.data.as_deref(), Split::Train, shape)?;
    if run.train.limit > 0 {
        train_data.truncate(run.train.limit);
    }
    let dir = RunDir { root: run_dir };
    let mut logger = open_run(&dir, &run, progress.step)?;
    let t = &run.train;
    let steps_per_epoch = batches_per_epoch(train_data.len(), t.batch_size) as u64;
    let total_steps = t.total_steps(steps_per_epoch);
    tracing::info!(
        "training {} ({:?} loss) on {} ({} images, {} steps/epoch) into {}",
        run.model,
        run.gan.loss,
        train_data.name,
        train_data.len(),
        steps_per_epoch,
        dir.root.display()
    );
    let bar = start_progress(total_steps, progress.step);
    // The grid's fixed input: the same noise (and classes, codes) every epoch.
    let grid_input = nets
        .model
        .grid_input(t.sample_count, &mut Rng::derive(t.seed, Stream::Sample, 0))?;
    let save_to = |nets: &Networks, progress: &Progress, path: &Path| {
        save(nets, &run, progress, &train_data.name, path)
    };
    let mut window = (Instant::now(), 0usize);
    let mut collapsed_for = 0u64;
    let mut interrupted = false;
    let mut batches = Batches::new(train_data.len(), t.batch_size, t.seed);
    while progress.step < total_steps {
        let epoch = progress.step / steps_per_epoch;
        let idx = batches.at(progress.step);
        let (real, labels) = real_batch(&train_data, idx, shape, conditional, &device)?;
        let mut rng = Rng::derive(t.seed, Stream::Step, progress.step);
        let metrics = adversarial_step(&mut nets, &run, &real, labels.as_ref(), &mut rng)?;
        if let Some((name, v)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
            bail!(
                "training diverged at step {} (epoch {}): {name} is {v}; the last good checkpoint is {}",
                progress.step + 1,
                epoch + 1,
                dir.last_checkpoint().display()
            );
        }
        let d_loss = metrics[0].1;
        collapsed_for = if d_loss < run.gan.collapse_loss {
            collapsed_for + 1
        } else {
            0
        };
        if run.gan.collapse_steps > 0 && collapsed_for >= run.gan.collapse_steps {
            bail!(
                "the discriminator collapsed at step {} (epoch {}): its loss stayed below {} for {} steps, so the generator gets no signal; the last good checkpoint is {}",
                progress.step + 1,
                epoch + 1,
                run.gan.collapse_loss,
                collapsed_for,
                dir.last_checkpoint().display()
            );
        }
        progress.step += 1;
        progress.epoch_steps += 1;
        window.1 += idx.len();
        for (name, v) in &metrics {
            *progress.epoch_sums.entry(name.clone()).or_default() += v;
        }
        if progress.step.is_multiple_of(t.log_every) || progress.step == total_steps {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let mut line = json!({
                "type": "step", "step": progress.step, "epoch": epoch + 1, "lr": t.lr,
                "images_per_sec": window.1 as f64 / secs,
            });
            for (name, v) in &metrics {
                line[name] = json!(v);
            }
            bar.set_message(format!(
                "d {:.3} g {:.3} | {:.0} img/s",
                metrics[0].1,
                metrics[1].1,
                window.1 as f64 / secs
            ));
            logger.write(line)?;
            window = (Instant::now(), 0);
        }
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, t.epochs));
        bar.set_position(progress.step);
        let end_of_epoch = progress.step.is_multiple_of(steps_per_epoch);
        if end_of_epoch {
            let mut line = json!({"type": "epoch", "step": progress.step, "epoch": epoch + 1});
            let mut summary = Vec::new();
            for (name, sum) in &progress.epoch_sums {
                let mean = sum / progress.epoch_steps.max(1) as f64;
                line[format!("train_{name}")] = json!(mean);
                summary.push(format!("{name} {mean:.3}"));
            }
            logger.write(line)?;
            bar.println(format!(
                "epoch {}/{}: {}",
                epoch + 1,
                t.epochs,
                summary.join(", ")
            ));
            progress.epoch_sums.clear();
            progress.epoch_steps = 0;
            progress.epoch = epoch + 1;
            save_grid(
                &mut nets,
                &grid_input,
                &dir.samples().join(format!("epoch-{:04}.png", epoch + 1)),
            )?;
            plot_losses(&logger, &run, &dir)?;
            save_to(&nets, &progress, &dir.last_checkpoint())?;
            if t.checkpoint_every > 0 && (epoch + 1).is_multiple_of(t.checkpoint_every) {
                let p = dir
                    .checkpoints()
                    .join(format!("epoch-{:04}.safetensors", epoch + 1));
                save_to(&nets, &progress, &p)?;
            }
        } else if progress.step == total_steps {
            save_to(&nets, &progress, &dir.last_checkpoint())?;
            save_grid(
                &mut nets,
                &grid_input,
                &dir.samples().join(format!("step-{:07}.png", progress.step)),
            )?;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            if !end_of_epoch {
                save_to(&nets, &progress, &dir.last_checkpoint())?;
            }
            interrupted = true;
            break;
        }
    }
    Ok(finish_run(
        &bar,
        interrupted,
        progress.step,
        &dir,
        &run.model,
    ))
}

/// The grid of the fixed input, drawn with the averaged generator in inference mode.
fn save_grid(nets: &mut Networks, input: &layers::gan::GeneratorInput, path: &Path) -> Result<()> {
    nets.average.swap()?;
    let images = nets
        .model
        .generate(input, false)
        .and_then(|x| layers::gan::to_unit_range(&x));
    nets.average.swap()?;
    let grid = GridOptions {
        nrow: nets.model.grid_columns(),
        ..GridOptions::default()
    };
    save_image(&images?, path, grid)
}

fn plot_losses(logger: &crate::train::Logger, run: &RunConfig, dir: &RunDir) -> Result<()> {
    let d = logger.curve("step", "d_loss");
    let g = logger.curve("step", "g_loss");
    plot_curves(
        &dir.plot(),
        &format!("{} training", run.model),
        "loss",
        &[
            Series {
                name: "discriminator",
                points: &d,
            },
            Series {
                name: "generator",
                points: &g,
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The parameters each optimiser steps, by name.
    fn stepped(adam: &Adam) -> Vec<String> {
        let prefix = "x.exp_avg.";
        adam.state("x")
            .expect("moments of the optimiser's own parameters")
            .0
            .into_keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// InfoGAN's paper network: Q's head steps with G and D's trunk without it;
    /// PyTorch-GAN's: each network's variables with its own optimiser.
    #[test]
    fn an_auxiliary_head_steps_with_the_generator() -> Result<()> {
        for (network, size, head_with_g) in [("paper", 28, true), ("pytorch-gan", 32, false)] {
            let mut run = RunConfig::new("infogan");
            run.model_config =
                toml::from_str(&format!("network = \"{network}\"\nimage_size = {size}"))?;
            let (model, varmap, run) = build_adversarial(&run, &Device::Cpu)?;
            let nets = networks(model, varmap, &run)?;
            let (g, d) = (stepped(&nets.generator), stepped(&nets.discriminator));
            let head = |names: &[String]| names.iter().any(|n| n.contains("q_head"));
            assert_eq!(head(&g), head_with_g, "{network}: {g:?}");
            assert!(!head(&d), "{network}: {d:?}");
            assert!(g.iter().all(|n| n.starts_with("generator.") || head_with_g));
            assert!(
                d.iter().any(|n| n.starts_with("discriminator.conv")),
                "{network}: {d:?}"
            );
            let average: Vec<&String> = nets.average.slots.iter().map(|(n, _, _)| n).collect();
            assert!(
                average.iter().all(|n| n.starts_with("generator.")),
                "{average:?}"
            );
        }
        Ok(())
    }
}
