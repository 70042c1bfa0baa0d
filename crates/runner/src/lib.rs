//! The `genzoo` runner: data, training loops, checkpoints, evaluation. It is glue: the models
//! live in their family crates and the shared pieces in `layers`.

pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod data;
pub mod download;
pub mod eval;
pub mod gan_train;
pub mod grid;
pub mod inspect;
pub mod params;
pub mod plot;
pub mod quality;
pub mod registry;
pub mod sample;
pub mod train;
