//! What measures and draws: the digit classifier behind the sample metrics, the metrics
//! themselves, image grids and loss plots.

pub mod attributes;
pub mod classifier;
pub mod grid;
pub mod plot;
pub mod puzzle;
pub mod quality;
pub mod text;
pub mod translation;
