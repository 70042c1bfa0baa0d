//! `genzoo`: train, sample, evaluate and inspect deep generative image models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use layers::kernels::precision;
use runner::commands;
use runner::commands::classifier::ClassifierCmd;
use runner::commands::convert::ConvertCmd;
use runner::commands::eval::EvalCmd;
use runner::commands::sample::SampleCmd;
use runner::commands::train::TrainCmd;
use runner::data::download;

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
    /// cpu, cuda, cuda:N, metal or auto: where train, sample, eval, bench and classifier
    /// compute (inspect, params, export, convert, list and download read files on the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16: the precision of the convolutions and dense layers in train, sample,
    /// eval, bench and classifier, as PyTorch's autocast (weights, gradients, optimiser state
    /// and checkpoints stay f32; everything else computes in f32). bf16 needs a GPU.
    #[arg(long, global = true, default_value = "f32")]
    dtype: String,
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
        /// A path, or hf:OWNER/REPO[@REVISION]/FILE.safetensors (see `genzoo sample --help`).
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Time the workloads of docs/BENCHMARKS.md (all by default): images/s, ms/step, peak memory.
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
    Export {
        /// A path, or hf:OWNER/REPO[@REVISION]/FILE.safetensors (see `genzoo sample --help`).
        checkpoint: PathBuf,
        out: PathBuf,
        /// Keep only the weight average, as the weights (half the size of a GAN's file; `--raw`
        /// then has no trained weights to use).
        #[arg(long)]
        averaged: bool,
        /// Leave out the networks only training uses (a GAN's discriminator; not InfoGAN's,
        /// whose Q head `eval` reads): the file samples and evaluates alike, and cannot be
        /// resumed.
        #[arg(long)]
        sampling_only: bool,
        /// Store weight matrices and kernels in half precision (f16): about half the size, each
        /// weight within a relative 2^-11; biases and norms stay f32. For shipping; a run
        /// resumes from its checkpoints, not from exports.
        #[arg(long)]
        half: bool,
    },
    /// Turn PyTorch weights (.pth, .pt, .ckpt, safetensors) into a genzoo file for a model.
    Convert(ConvertCmd),
    /// Every model of genzoo's mission: family, explicit or implicit, built yet or not.
    List {
        #[arg(long)]
        json: bool,
        /// Where to look for shipped weights (genzoo files, by the model their metadata names).
        #[arg(long, default_value = "models")]
        weights_dir: PathBuf,
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

fn run(cli: Cli) -> Result<ExitCode> {
    let dtype = precision::parse_dtype(&cli.dtype)?;
    let device = || -> Result<candle_core::Device> {
        let device = layers::device::parse_device(&cli.device)?;
        precision::check_device(dtype, &device)?;
        if dtype != candle_core::DType::F32 {
            tracing::info!("convolutions and dense layers compute in {dtype:?} (--dtype)");
            if device.is_cpu() {
                tracing::warn!(
                    "on the CPU, --dtype {} runs Candle's generic ops instead of genzoo's f32 kernels: for checking numerics, many times slower than f32",
                    cli.dtype
                );
            }
        }
        Ok(device)
    };
    precision::with_compute_dtype(dtype, || run_command(cli.command, device))
}

fn run_command(
    command: Command,
    device: impl Fn() -> Result<candle_core::Device>,
) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|_| ExitCode::SUCCESS);
    match command {
        Command::Train(cmd) => commands::train::run(cmd, device()?),
        Command::Sample(cmd) => done(commands::sample::run(cmd, device()?)),
        Command::Eval(cmd) => done(commands::eval::run(cmd, device()?)),
        Command::Inspect { file, json } => done(commands::inspect::run(&file, json)),
        Command::Bench {
            workloads,
            steps,
            json,
        } => done(commands::bench::run(&workloads, steps, json, &device()?)),
        Command::Params { size, json } => done(commands::params::run(size, json)),
        Command::Export {
            checkpoint,
            out,
            averaged,
            sampling_only,
            half,
        } => done(commands::export::run(
            &checkpoint,
            &out,
            runner::run::checkpoint::ExportOptions {
                averaged,
                sampling_only,
                half,
            },
        )),
        Command::Convert(cmd) => done(commands::convert::run(cmd)),
        Command::List { json, weights_dir } => done(commands::list::run(json, &weights_dir)),
        Command::Classifier(cmd) => done(commands::classifier::run(cmd, device()?)),
        Command::Download {
            dataset,
            out,
            mirror,
        } => done(commands::download::run(dataset, &out, mirror)),
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
    let verbose = cli.verbose > 0;
    match layers::device::run_on_compute_threads(|| run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_message(&e, verbose));
            ExitCode::FAILURE
        }
    }
}

/// The error chain as one line. Candle attaches a backtrace to its errors whenever
/// RUST_BACKTRACE is set (30 lines under a one-line message); `-v` shows it, and otherwise only
/// the messages are printed.
fn error_message(e: &anyhow::Error, verbose: bool) -> String {
    if verbose {
        return format!("{e:#}");
    }
    e.chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(c) => candle_message(c),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), candle_message(inner))
        }
        other => other.to_string(),
    }
}
