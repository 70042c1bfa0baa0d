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
