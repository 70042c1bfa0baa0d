//! `genzoo train`: the run config from a model name, a run file or a checkpoint to resume, then
//! the one training loop ([`crate::run`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use candle_core::Device;
use clap::Args;

use crate::config::RunConfig;
use crate::registry;
use crate::run::checkpoint::META_MODEL;
use crate::run::{train, TrainArgs, TrainOverrides};

#[derive(Args)]
pub struct TrainCmd {
    /// Model name (see `genzoo list`); may be given by --config instead.
    model: Option<String>,
    /// A run file: `model = ".."`, `[train]`, `[gan]`, `[data]` and `[model_config]` tables.
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
    /// Stop after this many steps in all, saving a checkpoint.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Run directory (default: runs/<model>-<date>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue exactly from a checkpoint of this model: a path, or a file on the Hugging Face
    /// Hub (`hf:OWNER/REPO[@REVISION]/PATH.safetensors`, with --out for the resumed run).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Attributes of an attribute file to train on (StarGAN on your own images):
    /// `--attrs Black_Hair,Blond_Hair,Brown_Hair,Male,Young` with `list_attr_celeba.txt` in
    /// --data.
    #[arg(long, value_delimiter = ',')]
    attrs: Vec<String>,
}

/// The run config the command names: a run file, a model's defaults, or a checkpoint's model.
fn run_config(cmd: &TrainCmd) -> Result<RunConfig> {
    let run = match (&cmd.config, &cmd.model, &cmd.resume) {
        (Some(path), model, _) => RunConfig::from_file(path, model.as_deref())?,
        (None, Some(model), _) => {
            registry::find(model)?;
            RunConfig::new(model)
        }
        (None, None, Some(resume)) => {
            let ck = crate::run::checkpoint::load_checkpoint(resume, &Device::Cpu)?;
            RunConfig::new(ck.require_meta(META_MODEL, resume)?)
        }
        (None, None, None) => anyhow::bail!(
            "name a model (`genzoo train vae`), a --config file, or a --resume checkpoint"
        ),
    };
    registry::builder(&run.model)?;
    let mut run = run;
    if !cmd.attrs.is_empty() {
        anyhow::ensure!(
            cmd.resume.is_none(),
            "--attrs chooses the data of a new run; a resumed run keeps its own"
        );
        run.data.attrs = cmd.attrs.clone();
    }
    Ok(run)
}

pub fn run(cmd: TrainCmd, device: Device) -> Result<ExitCode> {
    if let Some(resume) = cmd.resume.as_deref().filter(|r| crate::hub::is_spec(r)) {
        // Before anything is downloaded: a checkpoint on the hub has no run directory here.
        crate::run::dir::resumed_run_dir(cmd.out.as_deref(), resume)?;
    }
    let run = run_config(&cmd)?;
    let outcome = train(TrainArgs {
        run,
        data: cmd.data,
        out: cmd.out,
        resume: cmd.resume,
        device,
        overrides: TrainOverrides {
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
