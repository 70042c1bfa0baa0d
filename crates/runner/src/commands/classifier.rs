//! `genzoo classifier`: train or check the digit classifier behind the sample metrics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Subcommand;

use crate::config::RunConfig;
use crate::data::{load_split, Split};
use crate::report::classifier;

/// The run config of a run file, or of the checkpoint a run saved.
fn run_of(path: &Path) -> Result<RunConfig> {
    if path.extension().is_some_and(|e| e == "toml") {
        return RunConfig::from_file(path, None);
    }
    let ck = layers::Checkpoint::load(path, &Device::Cpu)?;
    let json = ck.require_meta(crate::run::checkpoint::META_CONFIG, path)?;
    RunConfig::from_json(json)
        .with_context(|| format!("{}: not a valid run config", path.display()))
}

#[derive(Subcommand)]
pub enum ClassifierCmd {
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
        /// Train an attribute classifier on the data of `--config` (a run file or a
        /// checkpoint) instead of the digit classifier: what `genzoo eval` reads to say whether
        /// a multi-domain translation shows the attributes asked for.
        #[arg(long, requires = "config", conflicts_with = "locator")]
        attributes: bool,
        /// Train Puzzle-GAN's locator on the key patches of `--config`'s data instead (a
        /// Puzzle-GAN run file or checkpoint): where its patches sit, which `genzoo eval` and
        /// `genzoo sample --mode puzzle` add to placing them (default out:
        /// NAME-locator.safetensors beside the run file).
        #[arg(long, requires = "config")]
        locator: bool,
        /// With --locator: the last this many training images are held out to report on.
        #[arg(long, default_value_t = 500, requires = "locator")]
        validation: usize,
        /// The run (file or checkpoint) whose data an attribute classifier learns.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write the weights (default: models/mnist-classifier.safetensors, or
        /// NAME-attributes.safetensors beside the run file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Test accuracy of a classifier file (default: the shipped one).
    Eval {
        weights: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

pub fn run(cmd: ClassifierCmd, device: Device) -> Result<()> {
    match cmd {
        ClassifierCmd::Train {
            data,
            epochs,
            batch_size,
            lr,
            seed,
            attributes: true,
            config: Some(config),
            out,
            ..
        } => {
            let run = run_of(&config)?;
            let out = out.unwrap_or_else(|| crate::report::attributes::beside(&config));
            let args = crate::report::attributes::TrainArgs {
                run,
                data,
                epochs,
                batch_size,
                lr,
                seed,
                out: out.clone(),
                device,
            };
            crate::report::attributes::train(&args, |r| {
                let each: Vec<String> = r
                    .test_accuracy
                    .iter()
                    .map(|a| format!("{:.2}%", 100.0 * a))
                    .collect();
                println!(
                    "epoch {:>3}  train loss {:.4}  test accuracy per attribute {}",
                    r.epoch,
                    r.train_loss,
                    each.join(" ")
                )
            })?;
            println!("wrote {}", out.display());
        }
        ClassifierCmd::Train {
            data,
            epochs,
            batch_size,
            lr,
            seed,
            locator: true,
            validation,
            config: Some(config),
            out,
            ..
        } => {
            let run = run_of(&config)?;
            let out = out.unwrap_or_else(|| crate::report::locator::beside(&config));
            let args = crate::report::locator::TrainArgs {
                run,
                data,
                epochs,
                batch_size,
                lr,
                seed,
                validation,
                out: out.clone(),
                device,
            };
            crate::report::locator::train(&args, |r| {
                println!(
                    "epoch {:>3}  train loss {:.4}  held out: position {:.2}%  offset {:.2}%",
                    r.epoch,
                    r.train_loss,
                    100.0 * r.position_accuracy,
                    100.0 * r.offset_accuracy
                )
            })?;
            println!("wrote {}", out.display());
        }
        ClassifierCmd::Train {
            data,
            epochs,
            batch_size,
            lr,
            seed,
            max_shift,
            out,
            ..
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from("models/mnist-classifier.safetensors"));
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
    Ok(())
}
