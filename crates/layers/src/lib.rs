//! Shared pieces of genzoo, by what they are:
//!
//! - the contracts every model fulfils: what a model is ([`model`]), how it trains ([`step`]),
//!   what adversarial models share ([`gan`]), and the losses and log-densities ([`loss`]);
//! - [`nn`]: building blocks with PyTorch's names (`nn.Sequential` numbering, masked
//!   convolutions, seeded initialisation);
//! - [`kernels`]: the fused CPU ops and vector kernels under them, each with Candle's ops as the
//!   fallback and the reference its tests compare against;
//! - [`train`]: training state (Adam with savable moments, checkpoints, the seeded RNG);
//! - [`eval`]: the digit classifier and the metrics computed through it;
//! - [`device`]: `--device` parsing and the CPU thread pool;
//! - [`backprop`]: backward passes that compute only the gradients an optimiser reads.

pub mod backprop;
pub mod device;
pub mod eval;
pub mod gan;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod nn;
pub mod placement;
pub mod step;
pub mod train;

pub use model::{
    CodedModel, Domains, ExplicitModel, GenerativeModel, ImageShape, LatentVariableModel,
    Likelihood, LikelihoodModel, LikelihoodOptions, Loss, ModelKind, Objective, Puzzle, Target,
    Translator, Values,
};
pub use step::{Batch, DataSpec, Labels, Model, StepContext, Trainable};
pub use train::checkpoint::Checkpoint;
pub use train::optim::{Adam, AdamConfig};
pub use train::rng::{Rng, Stream};
