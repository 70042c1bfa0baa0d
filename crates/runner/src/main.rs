//! `genzoo`: train, sample, evaluate and inspect deep generative image models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use runner::config::RunConfig;
use runner::grid::GridOptions;
use runner::{download, eval, inspect, registry, sample, train};

/// Training allocates and frees many large tensors per step; glibc's malloc returns each to the
/// kernel and page-faults it back in (13% of a DCGAN step in CANDLE_NOTES.md). mimalloc keeps
/// freed memory for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 2's `mi_option_purge_delay` (`MIMALLOC_PURGE_DELAY`), which the `mimalloc` crate
/// does not expose (libmimalloc-sys's `extended` feature would pull in another crate).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    /// From the mimalloc library that the `mimalloc` crate links.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Keeps freed memory mapped instead of returning it to the kernel after mimalloc's default
/// 10 ms: a training step frees and reallocates the same large buffers, and each return cost
/// their pages' faults and zeroing again (PixelCNN bench, one thread: 9,496 -> 452 page faults
/// and 6% less CPU time per 6 steps).
fn keep_freed_memory_mapped() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's global options; safe to call at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "genzoo",
    version,
    about = "Deep generative image models on Candle",
    propagate_version = true
)]
struct Cli {
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// More log output (-v: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes a run directory (config, checkpoints, log, samples, loss plot).
    Train(TrainCmd),
    /// Draw samples (or reconstructions, interpolations, a manifold) into a PNG grid.
    Sample(SampleCmd),
    /// Report a model's quality metrics on held-out data.
    Eval(EvalCmd),
    /// List the tensors, shapes, dtypes, metadata and parameter count of a safetensors file.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Time the workloads of BENCHMARKS.md (all by default): images/s, ms/step, peak memory.
    Bench {
        workloads: Vec<String>,
        /// Timed steps per training workload (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long)]
        json: bool,
    },
    /// Parameter counts: the full joint table, independent pixels, and every explicit model.
    Params {
        /// Image side (images are side x side binary).
        #[arg(long, default_value_t = 28)]
        size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Copy a checkpoint's weights and metadata without the optimizer state (to share or ship).
    Export { checkpoint: PathBuf, out: PathBuf },
    /// Every model of genzoo's mission: family, explicit or implicit, built yet or not.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Train or check the digit classifier behind the sample metrics of `genzoo eval`.
    #[command(subcommand)]
    Classifier(ClassifierCmd),
    /// Download the full MNIST or Fashion-MNIST (IDX files) for use with --data.
    Download {
        #[arg(value_enum)]
        dataset: download::Dataset,
        /// Directory to write the four .gz files into.
        #[arg(long, default_value = "data/full")]
        out: PathBuf,
        /// Base URL to fetch from instead of the default mirror.
        #[arg(long)]
        mirror: Option<String>,
    },
}

#[derive(Args)]
struct TrainCmd {
    /// Model name (see `genzoo list`); may be given by --config instead.
    model: Option<String>,
    /// A run file: `model = ".."`, `[train]` and `[model_config]` tables.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MNIST-format IDX directory or image folder (default: the bundled MNIST subset).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many optimiser steps in all, saving a checkpoint.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Run directory (default: runs/<model>-<date>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue exactly from a checkpoint of this model.
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// How to read a plain weights file (no genzoo metadata).
#[derive(Args)]
struct PlainWeights {
    /// Model of a plain weights file, e.g. converted from PyTorch.
    #[arg(long)]
    model: Option<String>,
    /// Run file with the plain weights' `[model_config]`.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl PlainWeights {
    fn run_config(&self) -> Result<Option<RunConfig>> {
        match (&self.model, &self.config) {
            (None, None) => Ok(None),
            (model, Some(path)) => Ok(Some(RunConfig::from_file(path, model.as_deref())?)),
            (Some(model), None) => {
                registry::any_builder(model)?;
                Ok(Some(RunConfig::new(model)))
            }
        }
    }
}

#[derive(Subcommand)]
enum ClassifierCmd {
    /// Train LeNet on the training digits; prints test accuracy per epoch, saves the weights.
    Train {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 12)]
        epochs: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Random translation of training images by up to this many pixels.
        #[arg(long, default_value_t = 2)]
        max_shift: usize,
        #[arg(long, default_value = "models/mnist-classifier.safetensors")]
        out: PathBuf,
    },
    /// Test accuracy of a classifier file (default: the shipped one).
    Eval {
        weights: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn run_classifier(cmd: ClassifierCmd, device: candle_core::Device) -> Result<ExitCode> {
    use runner::classifier;
    use runner::data::{load_split, Split};
    match cmd {
        ClassifierCmd::Train {
            data,
            epochs,
            batch_size,
            lr,
            seed,
            max_shift,
            out,
        } => {
            let args = classifier::TrainArgs {
                data,
                epochs,
                batch_size,
                lr,
                seed,
                max_shift,
                out: out.clone(),
                device,
            };
            classifier::train(&args, |r| {
                println!(
                    "epoch {:>3}  train loss {:.4}  test accuracy {:.2}%",
                    r.epoch,
                    r.train_loss,
                    100.0 * r.test_accuracy
                )
            })?;
            println!("wrote {}", out.display());
        }
        ClassifierCmd::Eval { weights, data } => {
            let net = classifier::load(weights.as_deref(), &device)?;
            let test = load_split(data.as_deref(), Split::Test, [1, 28, 28])?;
            let labels = test
                .labels
                .clone()
                .with_context(|| format!("{} has no labels", test.name))?;
            let acc = classifier::accuracy(&net, &test, &labels, &device)?;
            println!(
                "test accuracy {:.2}% on {} images of {}",
                100.0 * acc,
                test.len(),
                test.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct SampleCmd {
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
    mode: sample::SampleMode,
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

#[derive(Args)]
struct EvalCmd {
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
    #[command(flatten)]
    plain: PlainWeights,
}

fn run_train(cmd: TrainCmd, device: candle_core::Device) -> Result<ExitCode> {
    let run = match (&cmd.config, &cmd.model, &cmd.resume) {
        (Some(path), model, _) => RunConfig::from_file(path, model.as_deref())?,
        (None, Some(model), _) => {
            registry::find(model)?;
            RunConfig::new(model)
        }
        (None, None, Some(resume)) => {
            let ck = layers::Checkpoint::load(resume, &candle_core::Device::Cpu)?;
            RunConfig::new(ck.require_meta(runner::checkpoint::META_MODEL, resume)?)
        }
        (None, None, None) => anyhow::bail!(
            "name a model (`genzoo train vae`), a --config file, or a --resume checkpoint"
        ),
    };
    registry::any_builder(&run.model)?;
    let outcome = train::train(train::TrainArgs {
        run,
        data: cmd.data,
        out: cmd.out,
        resume: cmd.resume,
        device,
        overrides: train::TrainOverrides {
            epochs: cmd.epochs,
            lr: cmd.lr,
            max_steps: cmd.max_steps,
            batch_size: cmd.batch_size,
            seed: cmd.seed,
        },
    })?;
    if outcome.interrupted {
        return Ok(ExitCode::from(130));
    }
    println!("run directory: {}", outcome.run_dir.display());
    println!(
        "checkpoint:    {} (step {})",
        outcome.last_checkpoint.display(),
        outcome.step
    );
    Ok(ExitCode::SUCCESS)
}

fn run_list(json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = registry::MODELS
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "family": m.family, "kind": m.kind, "built": m.is_built(), "summary": m.summary}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<13} {:<9} {:<14} description",
        "model", "family", "kind", "status"
    );
    for m in registry::MODELS {
        let status = if m.is_built() {
            "built"
        } else {
            "not built yet"
        };
        println!(
            "{:<16} {:<13} {:<9} {:<14} {}",
            m.name,
            m.family,
            m.kind.to_string(),
            status,
            m.summary
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let device = || layers::device::parse_device(&cli.device);
    match cli.command {
        Command::Train(cmd) => run_train(cmd, device()?),
        Command::Sample(cmd) => {
            let n = sample::sample(&sample::SampleArgs {
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
                device: device()?,
            })?;
            println!("wrote {} images to {}", n, cmd.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(cmd) => {
            let report = eval::evaluate(&eval::EvalArgs {
                plain: cmd.plain.run_config()?,
                checkpoint: cmd.checkpoint,
                data: cmd.data,
                importance_samples: cmd.k,
                batch_size: cmd.batch_size,
                limit: cmd.limit,
                seed: cmd.seed,
                device: device()?,
                samples: cmd.samples,
                classifier: cmd.classifier,
            })?;
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eval::print_table(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file, json } => {
            let i = inspect::inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                inspect::print(&i);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            workloads,
            steps,
            json,
        } => {
            anyhow::ensure!(steps > 0, "--steps must be positive");
            let device = device()?;
            let chosen: Vec<&runner::bench::Workload> = if workloads.is_empty() {
                runner::bench::WORKLOADS.iter().collect()
            } else {
                workloads
                    .iter()
                    .map(|w| runner::bench::find(w))
                    .collect::<Result<_>>()?
            };
            let mut results = Vec::new();
            for w in chosen {
                match runner::bench::run_workload(w, &device, steps) {
                    Ok(r) => {
                        if !json {
                            runner::bench::print_line(&r);
                        }
                        results.push(r);
                    }
                    Err(e) => eprintln!("{:<22} skipped: {e:#}", w.name),
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Params { size, json } => {
            anyhow::ensure!(size >= 2, "--size must be at least 2");
            let rows = runner::params::params_table(size)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                runner::params::print(size, &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { checkpoint, out } => {
            let (kept, dropped) = runner::checkpoint::export_weights(&checkpoint, &out)?;
            println!(
                "wrote {} ({kept} tensors; {dropped} optimizer tensors left out)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => run_list(json).map(|_| ExitCode::SUCCESS),
        Command::Classifier(cmd) => run_classifier(cmd, device()?),
        Command::Download {
            dataset,
            out,
            mirror,
        } => {
            let mirror = mirror.unwrap_or_else(|| dataset.default_mirror().to_string());
            download::download(dataset, &mirror, &out, None).context("download failed")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    layers::device::configure_cpu_threads();
    keep_freed_memory_mapped();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("warn,runner={level},genzoo={level}"))
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match layers::device::run_on_compute_threads(|| run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
