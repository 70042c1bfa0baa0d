//! Shared pieces of genzoo: what a model is ([`model`]), losses and log-densities ([`loss`]),
//! the seeded random generator ([`rng`]), PyTorch-compatible initialisation ([`init`]), Adam
//! with savable state ([`optim`]), checkpoints ([`checkpoint`]) and device selection
//! ([`device`]).

pub mod activation;
pub mod checkpoint;
pub mod classifier;
pub mod conv;
pub mod device;
pub mod gan;
pub mod init;
pub mod linear;
pub mod loss;
pub mod masked;
pub mod metrics;
pub mod model;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod recurrence;
pub mod rng;
pub mod sequential;
pub mod sigmoid_scan;
pub mod simd;
pub mod stats;

pub use checkpoint::Checkpoint;
pub use model::{
    ExplicitModel, GenerativeModel, ImageShape, LatentVariableModel, Likelihood, LikelihoodModel,
    LikelihoodOptions, Loss, ModelKind, Objective, Values,
};
pub use optim::{Adam, AdamConfig};
pub use rng::{Rng, Stream};
