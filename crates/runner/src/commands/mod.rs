//! One file per command of `genzoo`; `main.rs` only parses the command line.

pub mod bench;
pub mod classifier;
pub mod convert;
pub mod download;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod list;
pub mod params;
pub mod sample;
pub mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::RunConfig;
use crate::registry;

/// How to read a plain weights file (no genzoo metadata).
#[derive(Args)]
pub struct PlainWeights {
    /// Model of a plain weights file, e.g. converted from PyTorch.
    #[arg(long)]
    model: Option<String>,
    /// Run file with the plain weights' `[model_config]`.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl PlainWeights {
    pub fn run_config(&self) -> Result<Option<RunConfig>> {
        match (&self.model, &self.config) {
            (None, None) => Ok(None),
            (model, Some(path)) => Ok(Some(RunConfig::from_file(path, model.as_deref())?)),
            (Some(model), None) => {
                registry::builder(model)?;
                Ok(Some(RunConfig::new(model)))
            }
        }
    }
}
