//! What measures and draws: the digit classifier behind the sample metrics, the metrics
//! themselves, image grids and loss plots.

pub mod attributes;
pub mod classifier;
pub mod grid;
pub mod locator;
pub mod plot;
pub mod puzzle;
pub mod quality;
pub mod text;
pub mod translation;

/// An evaluator's file (`genzoo.kind` = `kind`: an attribute classifier, a locator), read
/// whole, or an error naming the file and what it is instead.
pub fn load_evaluator(
    path: &std::path::Path,
    kind: &str,
    what: &str,
    device: &candle_core::Device,
) -> anyhow::Result<layers::Checkpoint> {
    use crate::run::checkpoint::META_KIND;
    let ck = crate::run::checkpoint::load_checkpoint(path, device)?;
    match ck.meta(META_KIND) {
        Some(k) if k == kind => Ok(ck),
        Some(other) => anyhow::bail!("{} is a `{other}` file, not {what}", path.display()),
        None => anyhow::bail!("{} has no genzoo metadata: not {what}", path.display()),
    }
}

/// The JSON value of an evaluator file's metadata `key`, or an error naming the file, the key
/// and what it should have been (`what`: "a locator config").
pub fn meta_json<T: serde::de::DeserializeOwned>(
    ck: &layers::Checkpoint,
    key: &str,
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<T> {
    use anyhow::Context;
    serde_json::from_str(ck.require_meta(key, path)?)
        .with_context(|| format!("{}: `{key}` is not {what}", path.display()))
}

/// Where an evaluator's file for a checkpoint is looked for by default: beside it, named
/// after it (`models/puzzle.safetensors`, `locator` -> `models/puzzle-locator.safetensors`).
pub fn beside(checkpoint: &std::path::Path, role: &str) -> std::path::PathBuf {
    let stem = checkpoint
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    checkpoint.with_file_name(format!("{stem}-{role}.safetensors"))
}

/// What the reports measured on held-out digits read (the text-to-image and puzzle metrics).
pub struct HeldOutArgs<'a> {
    pub run: &'a crate::config::RunConfig,
    pub data: Option<&'a std::path::Path>,
    pub classifier: Option<&'a std::path::Path>,
    /// The first N test images only (0: all).
    pub limit: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub device: &'a candle_core::Device,
}
