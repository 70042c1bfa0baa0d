//! The one training loop of every model. The model owns its step ([`layers::Trainable`]); the
//! loop owns the rest: batches from a seeded order, the optimisers and their learning-rate
//! schedules, the weight average, a JSONL log of the terms the model records, a grid per epoch
//! (drawn by the model, with the averaged weights), held-out metrics where the model has them,
//! a loss plot, checkpoints that resume exactly, Ctrl-C, and the stops (a non-finite term, a
//! discriminator that wins outright).

pub mod checkpoint;
pub mod dir;
pub mod stops;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use candle_core::Device;
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use layers::step::{check_groups, LrRole, Optimizers, StepContext, StepProgress};
use layers::train::average::WeightAverage;
use layers::train::checkpoint::vars_with_prefix;
use layers::{Adam, Model, Rng, Stream};
use serde_json::json;

use crate::config::RunConfig;
use crate::data::pipeline::{fit_model_to_data, DataOptions, TrainData};
use crate::report::grid::{save_image, GridOptions};
use crate::report::plot::{plot_curves, Series};
use checkpoint::{
    build_model, load_model, restore_average, restore_optimizers, save_train_state, Progress,
    TrainState,
};
use dir::{new_run_dir, open_run, resumed_run_dir, Logger, RunDir};
use stops::Stops;

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once per process: it only raises a flag, and the loop saves a
/// checkpoint at the end of the current step.
fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)) {
            tracing::warn!("cannot install the Ctrl-C handler: {e}");
        }
    });
}

pub struct TrainArgs {
    pub run: RunConfig,
    pub data: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub device: Device,
    /// Train-config fields given on the command line, applied over a resumed run's config.
    pub overrides: TrainOverrides,
}

#[derive(Debug, Default, Clone)]
pub struct TrainOverrides {
    pub epochs: Option<u64>,
    pub lr: Option<f64>,
    pub max_steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
}

impl TrainOverrides {
    fn apply(&self, run: &mut RunConfig) {
        let t = &mut run.train;
        if let Some(v) = self.epochs {
            t.epochs = v;
        }
        if let Some(v) = self.lr {
            t.lr = v;
        }
        if let Some(v) = self.max_steps {
            t.max_steps = v;
        }
        if let Some(v) = self.batch_size {
            t.batch_size = v;
        }
        if let Some(v) = self.seed {
            t.seed = v;
        }
    }
}

#[derive(Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub step: u64,
    pub interrupted: bool,
    pub last_checkpoint: PathBuf,
}

/// A saved run's config with the command line's overrides, which may not change what makes
/// the continuation exact (batch size and seed).
fn resumed_config(saved: &RunConfig, overrides: &TrainOverrides) -> Result<RunConfig> {
    let mut run = saved.clone();
    overrides.apply(&mut run);
    ensure!(
        run.train.batch_size == saved.train.batch_size && run.train.seed == saved.train.seed,
        "--resume continues a run exactly: its batch size ({}) and seed ({}) cannot change",
        saved.train.batch_size,
        saved.train.seed
    );
    run.train.validate()?;
    Ok(run)
}

/// What a run trains with.
struct Session {
    run: RunConfig,
    model: Box<dyn Model>,
    varmap: VarMap,
    optimizers: Optimizers,
    average: Option<WeightAverage>,
    progress: Progress,
    dir: RunDir,
    /// The terms the progress bar and the plot show (known after the first step).
    headline: Vec<String>,
}

/// One Adam per optimiser the model declares, each over the variables it owns, at its rate.
pub(crate) fn optimizers(
    model: &dyn Model,
    varmap: &VarMap,
    run: &RunConfig,
) -> Result<Optimizers> {
    let specs = model.optimizers();
    let all = vars_with_prefix(varmap, "");
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    check_groups(&specs, &names).map_err(|e| anyhow::anyhow!("model `{}`: {e:#}", run.model))?;
    let groups = specs
        .iter()
        .map(|spec| {
            let vars = all.iter().filter(|(n, _)| spec.owns(n)).cloned().collect();
            let adam = match spec.lr {
                LrRole::Main => run.train.adam(),
                LrRole::Generator => run.gan.generator_adam(&run.train),
                LrRole::Own { lr, beta1, beta2 } => layers::AdamConfig {
                    lr,
                    beta1,
                    beta2,
                    ..Default::default()
                },
            };
            Ok((spec.name.clone(), Adam::from_named_vars(vars, adam)?))
        })
        .collect::<Result<_>>()?;
    Ok(Optimizers { groups })
}

/// The weight average over the variables the model names, if it names any.
fn average(model: &dyn Model, varmap: &VarMap, run: &RunConfig) -> Result<Option<WeightAverage>> {
    let prefixes = model.averaged();
    if prefixes.is_empty() {
        return Ok(None);
    }
    let vars = prefixes
        .iter()
        .flat_map(|p| vars_with_prefix(varmap, p))
        .collect();
    Ok(Some(WeightAverage::new(vars, run.gan.ema_decay)?))
}

/// Fresh model, optimisers and average, or those of the checkpoint to resume.
fn start(args: &TrainArgs) -> Result<Session> {
    let Some(path) = &args.resume else {
        let mut run = args.run.clone();
        args.overrides.apply(&mut run);
        run.train.validate()?;
        run.gan.validate()?;
        run.data.validate()?;
        fit_to_data(&mut run, args.data.as_deref())?;
        let (model, varmap, run) = build_model(&run, &args.device)?;
        let dir = RunDir {
            root: new_run_dir(args.out.as_deref(), &run.model)?,
        };
        return Ok(Session {
            optimizers: optimizers(model.as_ref(), &varmap, &run)?,
            average: average(model.as_ref(), &varmap, &run)?,
            run,
            model,
            varmap,
            progress: Progress::default(),
            dir,
            headline: Vec::new(),
        });
    };
    let loaded = load_model(path, &args.device, None)?;
    if loaded.run.model != args.run.model {
        bail!(
            "{} is a checkpoint of model `{}`, not `{}`",
            path.display(),
            loaded.run.model,
            args.run.model
        );
    }
    let run = resumed_config(&loaded.run, &args.overrides)?;
    run.gan.validate()?;
    let mut optimizers = optimizers(loaded.model.as_ref(), &loaded.varmap, &run)?;
    restore_optimizers(&mut optimizers, &loaded, path)?;
    let mut average = average(loaded.model.as_ref(), &loaded.varmap, &run)?;
    if let Some(average) = &mut average {
        restore_average(average, &loaded, path)?;
    }
    let dir = RunDir {
        root: resumed_run_dir(args.out.as_deref(), path)?,
    };
    Ok(Session {
        run,
        model: loaded.model,
        varmap: loaded.varmap,
        optimizers,
        average,
        progress: loaded.progress,
        dir,
        headline: Vec::new(),
    })
}

/// Sets the model's channels and attribute count from the data where the run file leaves them
/// open, and says so.
pub(crate) fn fit_to_data(run: &mut RunConfig, dir: Option<&Path>) -> Result<()> {
    let folder = dir.is_some_and(|d| d.is_dir() && !crate::data::is_idx_dir(d));
    let attributes = !run.data.attributes.is_empty() || !run.data.attrs.is_empty();
    if !folder && !attributes {
        return Ok(());
    }
    let defaults = crate::registry::default_config(&run.model)?;
    for line in fit_model_to_data(&mut run.model_config, &defaults, &run.data, dir)? {
        tracing::info!("{line}");
    }
    Ok(())
}

/// Starts the progress bar at `step` of `total`, with the Ctrl-C flag installed.
fn start_progress(total: u64, step: u64) -> ProgressBar {
    install_interrupt_handler();
    INTERRUPTED.store(false, Ordering::SeqCst);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(step);
    bar
}

pub fn train(args: TrainArgs) -> Result<TrainOutcome> {
    let mut s = start(&args)?;
    if s.model.needs_second_order() {
        layers::gan::enable_second_order_gradients()?;
    }
    let spec = s.model.data_spec();
    let t = s.run.train.clone();
    let mut data = TrainData::load(
        &spec,
        &DataOptions {
            dir: args.data.as_deref(),
            config: &s.run.data,
            binarize: t.binarize,
            seed: t.seed,
            batch_size: t.batch_size,
            limit: t.limit,
            held_out: s.model.has_held_out_metrics(),
            held_out_grid: spec.held_out_grid,
        },
        &args.device,
    )?;
    let dataset = data.name();
    let mut logger = open_run(&s.dir, &s.run, s.progress.step)?;
    let batches_per_step = s.model.batches_per_step();
    let steps_per_epoch = (data.batches_per_epoch() / batches_per_step).max(1);
    let total_steps = t.total_steps(steps_per_epoch);
    let decay_start = t.decay_start_step(steps_per_epoch);
    tracing::info!(
        "training {} on {} ({} images, {} steps/epoch) into {}",
        s.run.model,
        data.name(),
        data.len(),
        steps_per_epoch,
        s.dir.root.display()
    );
    let base_lrs: Vec<f64> = s
        .optimizers
        .groups
        .iter()
        .map(|(_, adam)| adam.config().lr)
        .collect();
    let held_out_grid = match spec.held_out_grid {
        true => Some(data.held_out_grid(t.sample_count)?),
        false => None,
    };
    let bar = start_progress(total_steps, s.progress.step);
    let mut stops = Stops::new(&s.run, s.model.collapse_term());
    let images_per_step = batches_per_step * t.batch_size as u64;
    let progress_at = |step: u64| StepProgress {
        step,
        total_steps,
        steps_per_epoch,
        images_per_step,
    };
    let mut stage = s
        .model
        .stage(&progress_at(s.progress.step.saturating_sub(1)));
    let mut window = (Instant::now(), 0usize);
    let mut interrupted = false;
    while s.progress.step < total_steps {
        let step = s.progress.step;
        let epoch = step / steps_per_epoch;
        let at = progress_at(step);
        // A new stage starts its optimisers afresh (Progressive GAN at each resolution).
        let now = s.model.stage(&at);
        if now != stage {
            // The model as the finished stage left it, for measuring each stage.
            if step > 0 {
                let p = s
                    .dir
                    .checkpoints()
                    .join(format!("stage-{stage:02}.safetensors"));
                save(&s, &dataset, &p)?;
            }
            for (_, adam) in &mut s.optimizers.groups {
                adam.reset()?;
            }
            if let Some(average) = s.average.as_mut().filter(|_| s.model.restarts_average()) {
                average.restart()?;
            }
            stage = now;
        }
        let factor = t.schedule.factor(step, total_steps, decay_start);
        for ((_, adam), base) in s.optimizers.groups.iter_mut().zip(&base_lrs) {
            adam.set_lr(base * factor);
        }
        let mut images = 0;
        let mut take_batch = |k: u64| {
            let batch = data.train_batch(step * batches_per_step + k)?;
            images += batch.size()?;
            Ok(batch)
        };
        let mut ctx = StepContext::new(
            at,
            Rng::derive(t.seed, Stream::Step, step),
            &mut take_batch,
            batches_per_step,
            &mut s.optimizers,
        );
        s.model.train_step(&mut ctx)?;
        let terms = ctx.into_terms();
        stops.check(&terms, step, epoch, &s.dir.last_checkpoint())?;
        if s.headline.is_empty() {
            s.headline = headline_names(s.model.as_ref(), &terms);
        }
        if let Some(average) = &mut s.average {
            average.update()?;
        }
        s.progress.step += 1;
        s.progress.add_terms(&terms);
        window.1 += images;
        if s.progress.step.is_multiple_of(t.log_every) || s.progress.step == total_steps {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let speed = window.1 as f64 / secs;
            let mut line = json!({
                "type": "step", "step": s.progress.step, "epoch": epoch + 1,
                "lr": t.lr * factor, "images_per_sec": speed,
            });
            for (name, v) in &terms {
                line[name] = json!(v);
            }
            bar.set_message(format!(
                "{} | {speed:.0} img/s",
                headline(&s.headline, &terms)
            ));
            logger.write(line)?;
            window = (Instant::now(), 0);
        }
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, t.epochs));
        bar.set_position(s.progress.step);
        let end_of_epoch = s.progress.step.is_multiple_of(steps_per_epoch);
        if end_of_epoch {
            finish_epoch(&mut s, &data, &mut logger, &bar, held_out_grid.as_ref())?;
            save(&s, &dataset, &s.dir.last_checkpoint())?;
            if t.checkpoint_every > 0 && (epoch + 1).is_multiple_of(t.checkpoint_every) {
                let p = s
                    .dir
                    .checkpoints()
                    .join(format!("epoch-{:04}.safetensors", epoch + 1));
                save(&s, &dataset, &p)?;
            }
        } else if s.progress.step == total_steps {
            save(&s, &dataset, &s.dir.last_checkpoint())?;
            if s.model.grid_when_stopping() {
                let name = format!("step-{:07}.png", s.progress.step);
                save_grid(&mut s, held_out_grid.as_ref(), &name)?;
            }
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            if !end_of_epoch {
                save(&s, &dataset, &s.dir.last_checkpoint())?;
            }
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    let last = s.dir.last_checkpoint();
    if interrupted {
        eprintln!(
            "interrupted at step {}: saved {}; continue with `genzoo train {} --resume {}`",
            s.progress.step,
            last.display(),
            s.run.model,
            last.display()
        );
    }
    Ok(TrainOutcome {
        run_dir: s.dir.root.clone(),
        step: s.progress.step,
        interrupted,
        last_checkpoint: last,
    })
}

/// The terms the model puts first, or the first it recorded: what the progress bar and the
/// plot show.
fn headline_names(model: &dyn Model, terms: &[(String, f64)]) -> Vec<String> {
    let named = model.headline_terms();
    if named.is_empty() {
        terms.iter().take(1).map(|(n, _)| n.clone()).collect()
    } else {
        named
    }
}

/// `name value` of each headline term.
fn headline(names: &[String], terms: &[(String, f64)]) -> String {
    terms
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(n, v)| format!("{n} {v:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Saves the run: weights, optimisers, average, the model's training state.
fn save(s: &Session, dataset: &str, path: &Path) -> Result<()> {
    save_train_state(
        &TrainState {
            run: &s.run,
            varmap: &s.varmap,
            optimizers: &s.optimizers,
            average: s.average.as_ref(),
            model_state: s.model.training_state()?,
            progress: &s.progress,
            dataset,
        },
        path,
    )
}

/// End of an epoch: the epoch's mean training terms and held-out metrics in the log, a grid,
/// the loss plot.
fn finish_epoch(
    s: &mut Session,
    data: &TrainData,
    logger: &mut Logger,
    bar: &ProgressBar,
    held_out_grid: Option<&layers::Batch>,
) -> Result<()> {
    let epoch = s.progress.epoch + 1;
    let t = &s.run.train;
    let mut line = json!({"type": "epoch", "step": s.progress.step, "epoch": epoch});
    let mut summary = Vec::new();
    for (name, mean) in s.progress.epoch_means() {
        line[format!("train_{name}")] = json!(mean);
        summary.push(format!("train {name} {mean:.3}"));
    }
    if s.model.has_held_out_metrics() {
        let mut rng = Rng::derive(t.seed, Stream::Eval, epoch);
        for (name, v) in held_out_metrics(s.model.as_ref(), data, &mut rng)? {
            line[format!("test_{name}")] = json!(v);
            summary.push(format!("test {name} {v:.3}"));
        }
    }
    logger.write(line)?;
    bar.println(format!(
        "epoch {epoch}/{}: {}",
        t.epochs,
        summary.join(", ")
    ));
    s.progress.clear_epoch();
    s.progress.epoch = epoch;
    save_grid(s, held_out_grid, &format!("epoch-{epoch:04}.png"))?;
    plot_terms(&s.headline, logger, &s.run, &s.dir)
}

/// Mean of each held-out metric over the test split, weighted by batch size.
fn held_out_metrics(
    model: &dyn Model,
    data: &TrainData,
    rng: &mut Rng,
) -> Result<BTreeMap<String, f64>> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut count = 0usize;
    for batch in data.held_out_batches()? {
        let n = batch.size()?;
        for (name, v) in model.held_out_metrics(&batch, rng)? {
            *sums.entry(name).or_default() += v * n as f64;
        }
        count += n;
    }
    Ok(sums
        .into_iter()
        .map(|(k, v)| (k, v / count.max(1) as f64))
        .collect())
}

/// The model's grid from a fixed stream (and fixed held-out inputs), drawn with the averaged
/// weights.
fn save_grid(s: &mut Session, held_out: Option<&layers::Batch>, file: &str) -> Result<()> {
    let t = &s.run.train;
    if t.sample_count == 0 {
        // `sample_count = 0`: no grids.
        return Ok(());
    }
    let mut rng = Rng::derive(t.seed, Stream::Sample, 0);
    if let Some(average) = &mut s.average {
        average.swap()?;
    }
    let grid = s.model.grid(t.sample_count, &mut rng, held_out);
    if let Some(average) = &mut s.average {
        average.swap()?;
    }
    let grid = grid?;
    let options = GridOptions {
        nrow: grid.columns,
        ..GridOptions::default()
    };
    save_image(&grid.images, &s.dir.samples().join(file), options)
}

/// Each headline term per step, and its held-out value per epoch where there is one.
fn plot_terms(names: &[String], logger: &Logger, run: &RunConfig, dir: &RunDir) -> Result<()> {
    let mut curves = Vec::new();
    for name in names {
        curves.push((format!("{name} (per step)"), logger.curve("step", name)));
        let test = logger.curve("epoch", &format!("test_{name}"));
        if !test.is_empty() {
            curves.push((format!("test {name} (per epoch)"), test));
        }
    }
    let series: Vec<Series> = curves
        .iter()
        .map(|(name, points)| Series { name, points })
        .collect();
    plot_curves(
        &dir.plot(),
        &format!("{} training", run.model),
        "loss (per image)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variables an optimiser steps, by name.
    fn stepped(adam: &Adam) -> Vec<String> {
        adam.state("x")
            .expect("moments of the optimiser's own variables")
            .0
            .into_keys()
            .filter_map(|k| k.strip_prefix("x.exp_avg.").map(str::to_string))
            .collect()
    }

    /// InfoGAN's paper network: Q's head steps with G (at G's rate), D's trunk without it;
    /// PyTorch-GAN's: each network's variables with its own optimiser. The weight average
    /// covers the generator alone.
    #[test]
    fn an_auxiliary_head_steps_with_the_generator() -> Result<()> {
        for (network, size, head_with_g) in [("paper", 28, true), ("pytorch-gan", 32, false)] {
            let mut run = RunConfig::new("infogan");
            run.gan.g_lr = 1e-3;
            run.model_config =
                toml::from_str(&format!("network = \"{network}\"\nimage_size = {size}"))?;
            let (model, varmap, run) = build_model(&run, &Device::Cpu)?;
            let groups = optimizers(model.as_ref(), &varmap, &run)?.groups;
            let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["generator", "discriminator"]);
            let (g, d) = (stepped(&groups[0].1), stepped(&groups[1].1));
            let q_head = |n: &String| n.starts_with("discriminator.q_head.");
            assert_eq!(g.iter().any(q_head), head_with_g, "{network}: {g:?}");
            assert!(!d.iter().any(q_head), "{network}: {d:?}");
            // G steps the generator and, for the paper's network, Q's head: nothing else.
            assert!(
                g.iter().all(|n| n.starts_with("generator.") || q_head(n)),
                "{network}: {g:?}"
            );
            assert!(g.iter().any(|n| n.starts_with("generator.")));
            assert!(d.iter().all(|n| n.starts_with("discriminator.")), "{d:?}");
            assert_eq!(groups[0].1.config().lr, 1e-3);
            assert_eq!(groups[1].1.config().lr, run.train.lr);
            let average = average(model.as_ref(), &varmap, &run)?.expect("a GAN averages G");
            assert!(average
                .slots
                .iter()
                .all(|(n, _, _)| n.starts_with("generator.")));
        }
        Ok(())
    }

    /// A likelihood model has one optimiser over everything, saved as `optimizer`, and no
    /// average; a translation model names its own groups.
    #[test]
    fn optimizers_follow_what_the_model_declares() -> Result<()> {
        let (model, varmap, run) = build_model(&RunConfig::new("vae"), &Device::Cpu)?;
        let groups = optimizers(model.as_ref(), &varmap, &run)?.groups;
        assert_eq!(groups.len(), 1);
        assert_eq!(checkpoint::optimizer_prefix(&groups[0].0), "optimizer");
        assert_eq!(
            stepped(&groups[0].1).len(),
            vars_with_prefix(&varmap, "").len()
        );
        assert!(average(model.as_ref(), &varmap, &run)?.is_none());
        let mut run = RunConfig::new("cyclegan");
        run.model_config =
            toml::from_str("image_size = 16\nngf = 2\nndf = 2\nn_blocks = 1\nn_layers_d = 1")?;
        let (model, varmap, run) = build_model(&run, &Device::Cpu)?;
        let groups = optimizers(model.as_ref(), &varmap, &run)?.groups;
        let g = stepped(&groups[0].1);
        assert!(
            g.iter().any(|n| n.starts_with("netG_A."))
                && g.iter().any(|n| n.starts_with("netG_B."))
        );
        assert!(stepped(&groups[1].1).iter().all(|n| n.starts_with("netD_")));
        Ok(())
    }

    /// Each group steps at the rates its role says: the run's `[train]` Adam, G's own rate, and
    /// a model's own settings (the text encoders' stage here): mutants that dropped them to
    /// Adam's defaults survived every training test, whose runs compare with themselves.
    #[test]
    fn each_optimizer_takes_the_rates_of_its_role() -> Result<()> {
        let mut run = RunConfig::new("text2image-gan");
        (run.train.lr, run.train.beta1, run.train.beta2) = (2e-4, 0.5, 0.99);
        run.gan.g_lr = 3e-4;
        run.model_config =
            toml::from_str("ngf = 4\nndf = 4\nencoder_width = 8\nencoder_lr = 0.0042")?;
        let (model, varmap, run) = build_model(&run, &Device::Cpu)?;
        let groups = optimizers(model.as_ref(), &varmap, &run)?.groups;
        let rates: Vec<(&str, f64, f64, f64)> = groups
            .iter()
            .map(|(name, adam)| {
                let c = adam.config();
                (name.as_str(), c.lr, c.beta1, c.beta2)
            })
            .collect();
        assert_eq!(
            rates,
            [
                ("encoder", 0.0042, 0.9, 0.999),
                ("generator", 3e-4, 0.5, 0.99),
                ("discriminator", 2e-4, 0.5, 0.99)
            ]
        );
        // CycleGAN's symmetries: their own rate at the generators' beta1 (Adam's default beta2,
        // which every model's own group keeps, so a mutant dropping it cannot be told apart).
        let mut run = RunConfig::new("cyclegan");
        run.model_config = toml::from_str(
            "image_size = 16\nngf = 2\nndf = 2\nn_blocks = 1\nn_layers_d = 1\nsymmetries = true\nsymmetry_lr = 0.02",
        )?;
        let (model, varmap, run) = build_model(&run, &Device::Cpu)?;
        let groups = optimizers(model.as_ref(), &varmap, &run)?.groups;
        let (_, symmetry) = groups
            .iter()
            .find(|(name, _)| name == "symmetry")
            .expect("a symmetry optimiser");
        assert_eq!((symmetry.config().lr, symmetry.config().beta1), (0.02, 0.5));
        Ok(())
    }
}
