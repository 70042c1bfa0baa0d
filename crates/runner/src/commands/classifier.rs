//! `genzoo classifier`: train or check the digit classifier behind the sample metrics.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Subcommand;

use crate::data::{load_split, Split};
use crate::report::classifier;

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

pub fn run(cmd: ClassifierCmd, device: Device) -> Result<()> {
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
    Ok(())
}
