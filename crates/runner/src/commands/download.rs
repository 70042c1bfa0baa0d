//! `genzoo download`: the full MNIST or Fashion-MNIST, MD5-checked.

use std::path::Path;

use anyhow::{Context, Result};

use crate::data::download::{download, Dataset};

pub fn run(dataset: Dataset, out: &Path, mirror: Option<String>) -> Result<()> {
    let mirror = mirror.unwrap_or_else(|| dataset.default_mirror().to_string());
    download(dataset, &mirror, out, None).context("download failed")
}
