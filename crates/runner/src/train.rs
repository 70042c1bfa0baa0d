//! The training loop of likelihood models: batches from a seeded order, one optimiser step per
//! batch, a JSONL log, a sample grid and a checkpoint per epoch, a loss plot, Ctrl-C handling.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use layers::{Adam, LikelihoodModel, Rng, Stream};
use serde_json::{json, Value};

use crate::checkpoint::{
    build_model, load_model, restore_optimizer, save_train_state, Progress, TrainState,
    OPTIMIZER_PREFIX,
};
use crate::config::RunConfig;
use crate::data::{
    batch_indices, batches_per_epoch, load_split, make_batch, Batches, Binarization, Dataset, Split,
};
use crate::grid::{save_image, GridOptions};
use crate::plot::{plot_curves, Series};

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once per process: it only raises a flag, and the loop saves a
/// checkpoint at the end of the current step.
pub(crate) fn install_interrupt_handler() {
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
    pub(crate) fn apply(&self, run: &mut RunConfig) {
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

/// The files of a run directory.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("log.jsonl")
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn plot(&self) -> PathBuf {
        self.root.join("loss.png")
    }

    pub(crate) fn create(&self) -> Result<()> {
        for d in [self.root.clone(), self.checkpoints(), self.samples()] {
            fs::create_dir_all(&d)
                .with_context(|| format!("cannot create output directory {}", d.display()))?;
        }
        Ok(())
    }
}

/// Creates the run directory (or reopens it at `step` for a resumed run), writes the config,
/// and opens the log for appending.
pub(crate) fn open_run(dir: &RunDir, run: &RunConfig, step: u64) -> Result<Logger> {
    dir.create()?;
    let history = truncate_log(&dir.log(), step)?;
    layers::train::checkpoint::write_atomically(&dir.config(), run.to_toml()?.as_bytes())?;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .with_context(|| format!("cannot open {}", dir.log().display()))?;
    Ok(Logger { file, history })
}

/// Installs the Ctrl-C flag and starts the progress bar at `step` of `total`.
pub(crate) fn start_progress(total: u64, step: u64) -> ProgressBar {
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

/// The directory a resumed run continues in: `--out`, or the one holding its checkpoint.
pub(crate) fn resumed_run_dir(out: Option<&Path>, checkpoint: &Path) -> Result<PathBuf> {
    out.map(Path::to_path_buf)
        .or_else(|| run_dir_of(checkpoint))
        .with_context(|| {
            format!(
                "cannot tell the run directory of {}: pass --out",
                checkpoint.display()
            )
        })
}

/// The directory of a new run: `--out` or `runs/<model>-<time>`, refusing one that holds a run.
pub(crate) fn new_run_dir(out: Option<&Path>, model: &str) -> Result<PathBuf> {
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_run_dir(model));
    if dir.join("log.jsonl").exists() {
        bail!(
            "{} already holds a run (log.jsonl); choose another --out, or --resume its checkpoint",
            dir.display()
        );
    }
    Ok(dir)
}

/// A saved run's config with the command line's overrides, which may not change what makes
/// the continuation exact (batch size and seed).
pub(crate) fn resumed_config(saved: &RunConfig, overrides: &TrainOverrides) -> Result<RunConfig> {
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

pub(crate) fn default_run_dir(model: &str) -> PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    PathBuf::from("runs").join(format!("{model}-{stamp}"))
}

/// The run directory of a checkpoint `DIR/checkpoints/x.safetensors`.
pub(crate) fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    let parent = checkpoint.parent()?;
    (parent.file_name()? == "checkpoints").then(|| parent.parent().map(Path::to_path_buf))?
}

/// Keeps the log lines up to `step`, so a resumed run appends where its checkpoint stood.
pub(crate) fn truncate_log(path: &Path, step: u64) -> Result<Vec<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Ok(Vec::new()),
    };
    let kept: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["step"].as_u64().is_some_and(|s| s <= step))
        .collect();
    let mut out = String::new();
    for v in &kept {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    layers::train::checkpoint::write_atomically(path, out.as_bytes())?;
    Ok(kept)
}

pub(crate) struct Logger {
    pub(crate) file: fs::File,
    pub(crate) history: Vec<Value>,
}

impl Logger {
    pub(crate) fn write(&mut self, v: Value) -> Result<()> {
        writeln!(self.file, "{v}").context("cannot write log.jsonl")?;
        self.history.push(v);
        Ok(())
    }

    pub(crate) fn curve(&self, kind: &str, key: &str) -> Vec<(f64, f64)> {
        self.history
            .iter()
            .filter(|v| v["type"] == kind)
            .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
            .collect()
    }
}

/// Mean of each metric of the model's objective over a dataset (no parameter update).
fn evaluate_objective(
    model: &dyn LikelihoodModel,
    data: &Dataset,
    run: &RunConfig,
    device: &Device,
    rng: &mut Rng,
) -> Result<BTreeMap<String, f64>> {
    let order: Vec<usize> = (0..data.len()).collect();
    let b = run.train.batch_size;
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    // Evaluation uses the deterministic binarization whatever the training option.
    let binarize = match run.train.binarize {
        Binarization::None => Binarization::None,
        _ => Binarization::Threshold,
    };
    for k in 0..batches_per_epoch(data.len(), b) {
        let idx = batch_indices(&order, b, k);
        let x = make_batch(data, idx, binarize, rng, device)?;
        let loss = model.loss(&x, rng)?;
        for (name, v) in loss.metrics {
            *sums.entry(name).or_default() += v * idx.len() as f64;
        }
    }
    Ok(sums
        .into_iter()
        .map(|(k, v)| (k, v / data.len() as f64))
        .collect())
}

pub fn train(args: TrainArgs) -> Result<TrainOutcome> {
    if crate::registry::is_adversarial(&args.run.model) {
        return crate::gan_train::train(args);
    }
    let device = args.device.clone();
    // Model, optimiser and progress: fresh, or from the checkpoint to resume.
    let (run, model, varmap, optimizer, progress, run_dir) = match &args.resume {
        Some(path) => {
            let loaded = load_model(path, &device, None)?;
            if loaded.run.model != args.run.model {
                bail!(
                    "{} is a checkpoint of model `{}`, not `{}`",
                    path.display(),
                    loaded.run.model,
                    args.run.model
                );
            }
            let run = resumed_config(&loaded.run, &args.overrides)?;
            let mut optimizer = Adam::new(&loaded.varmap, run.train.adam())?;
            restore_optimizer(&mut optimizer, &loaded, path)?;
            let dir = resumed_run_dir(args.out.as_deref(), path)?;
            (
                run,
                loaded.model,
                loaded.varmap,
                optimizer,
                loaded.progress,
                dir,
            )
        }
        None => {
            let mut run = args.run.clone();
            args.overrides.apply(&mut run);
            run.train.validate()?;
            let (model, varmap, run) = build_model(&run, &device)?;
            let dir = new_run_dir(args.out.as_deref(), &run.model)?;
            let optimizer = Adam::new(&varmap, run.train.adam())?;
            (run, model, varmap, optimizer, Progress::default(), dir)
        }
    };
    let (mut optimizer, mut progress) = (optimizer, progress);

    let image_shape = model.image_shape();
    let mut train_data = load_split(args.data.as_deref(), Split::Train, image_shape)?;
    if run.train.limit > 0 {
        train_data.truncate(run.train.limit);
    }
    let test_data = load_split(args.data.as_deref(), Split::Test, image_shape)?;

    let dir = RunDir { root: run_dir };
    let mut logger = open_run(&dir, &run, progress.step)?;

    let t = &run.train;
    let steps_per_epoch = batches_per_epoch(train_data.len(), t.batch_size) as u64;
    let total_steps = t.total_steps(steps_per_epoch);
    tracing::info!(
        "training {} on {} ({} images, {} steps/epoch) into {}",
        run.model,
        train_data.name,
        train_data.len(),
        steps_per_epoch,
        dir.root.display()
    );

    let bar = start_progress(total_steps, progress.step);

    let mut batches = Batches::new(train_data.len(), t.batch_size, t.seed);
    let mut window = (Instant::now(), 0usize);
    let save = |progress: &Progress, optimizer: &Adam, path: &Path| -> Result<()> {
        save_train_state(
            &TrainState {
                run: &run,
                varmap: &varmap,
                optimizers: &[(OPTIMIZER_PREFIX, optimizer)],
                extra: Default::default(),
                progress,
                dataset: &train_data.name,
            },
            path,
        )
    };
    let mut interrupted = false;
    while progress.step < total_steps {
        let epoch = progress.step / steps_per_epoch;
        let idx = batches.at(progress.step);
        let x = make_batch(
            &train_data,
            idx,
            t.binarize,
            &mut Rng::derive(t.seed, Stream::Binarize, progress.step),
            &device,
        )?;
        let loss = model.loss(&x, &mut Rng::derive(t.seed, Stream::Step, progress.step))?;
        let value = loss
            .value
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!(
                "training diverged at step {} (epoch {}): the loss is {value}; the last good checkpoint is {}",
                progress.step + 1,
                epoch + 1,
                dir.last_checkpoint().display()
            );
        }
        optimizer.backward_step(&loss.value)?;
        progress.step += 1;
        progress.epoch_steps += 1;
        window.1 += idx.len();
        for (name, v) in &loss.metrics {
            *progress.epoch_sums.entry(name.clone()).or_default() += v;
        }

        // The first metric is the model's loss per image: the one the bar and the plot show.
        let first = &loss.metrics[0];
        if progress.step % t.log_every == 0 || progress.step == total_steps {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let mut line = json!({
                "type": "step",
                "step": progress.step,
                "epoch": epoch + 1,
                "lr": t.lr,
                "images_per_sec": window.1 as f64 / secs,
            });
            for (name, v) in &loss.metrics {
                line[name] = json!(v);
            }
            bar.set_message(format!(
                "{} {:.3} | {:.0} img/s",
                first.0,
                first.1,
                window.1 as f64 / secs
            ));
            logger.write(line)?;
            window = (Instant::now(), 0);
        }
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, t.epochs));
        bar.set_position(progress.step);

        let end_of_epoch = progress.step % steps_per_epoch == 0;
        if end_of_epoch {
            finish_epoch(
                model.as_ref(),
                &loss.metrics[0].0,
                &mut progress,
                &run,
                &test_data,
                &device,
                &mut logger,
                &dir,
                &bar,
            )?;
            progress.epoch = epoch + 1;
            save(&progress, &optimizer, &dir.last_checkpoint())?;
            if t.checkpoint_every > 0 && (epoch + 1).is_multiple_of(t.checkpoint_every) {
                let p = dir
                    .checkpoints()
                    .join(format!("epoch-{:04}.safetensors", epoch + 1));
                save(&progress, &optimizer, &p)?;
            }
        } else if progress.step == total_steps {
            save(&progress, &optimizer, &dir.last_checkpoint())?;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            if !end_of_epoch {
                save(&progress, &optimizer, &dir.last_checkpoint())?;
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

/// Closes the progress bar; after an interruption, says how to continue.
pub(crate) fn finish_run(
    bar: &ProgressBar,
    interrupted: bool,
    step: u64,
    dir: &RunDir,
    model: &str,
) -> TrainOutcome {
    bar.finish_and_clear();
    if interrupted {
        eprintln!(
            "interrupted at step {step}: saved {}; continue with `genzoo train {model} --resume {}`",
            dir.last_checkpoint().display(),
            dir.last_checkpoint().display()
        );
    }
    TrainOutcome {
        run_dir: dir.root.clone(),
        step,
        interrupted,
        last_checkpoint: dir.last_checkpoint(),
    }
}

/// End of an epoch: the epoch's mean training metrics, the test metrics, a sample grid from a
/// fixed noise stream, the loss plot.
#[allow(clippy::too_many_arguments)]
fn finish_epoch(
    model: &dyn LikelihoodModel,
    metric: &str,
    progress: &mut Progress,
    run: &RunConfig,
    test_data: &Dataset,
    device: &Device,
    logger: &mut Logger,
    dir: &RunDir,
    bar: &ProgressBar,
) -> Result<()> {
    let epoch_index = progress.epoch + 1;
    let t = &run.train;
    let mut line = json!({"type": "epoch", "step": progress.step, "epoch": epoch_index});
    let mut summary = Vec::new();
    for (name, sum) in &progress.epoch_sums {
        let mean = sum / progress.epoch_steps.max(1) as f64;
        line[format!("train_{name}")] = json!(mean);
        summary.push(format!("train {name} {mean:.3}"));
    }
    let test = evaluate_objective(
        model,
        test_data,
        run,
        device,
        &mut Rng::derive(t.seed, Stream::Eval, epoch_index),
    )?;
    for (name, v) in &test {
        line[format!("test_{name}")] = json!(v);
        summary.push(format!("test {name} {v:.3}"));
    }
    logger.write(line)?;
    bar.println(format!(
        "epoch {epoch_index}/{}: {}",
        t.epochs,
        summary.join(", ")
    ));
    progress.epoch_sums.clear();
    progress.epoch_steps = 0;

    let samples = model.sample(t.sample_count, &mut Rng::derive(t.seed, Stream::Sample, 0))?;
    save_image(
        &samples,
        &dir.samples().join(format!("epoch-{epoch_index:04}.png")),
        GridOptions::default(),
    )?;

    let train_curve = logger.curve("step", metric);
    let test_curve = logger.curve("epoch", &format!("test_{metric}"));
    plot_curves(
        &dir.plot(),
        &format!("{} training", run.model),
        &format!("{metric} (per image)"),
        &[
            Series {
                name: "train (per step)",
                points: &train_curve,
            },
            Series {
                name: "test (per epoch)",
                points: &test_curve,
            },
        ],
    )
}
