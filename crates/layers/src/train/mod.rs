//! Training state that outlives a step: the optimiser and its moments, checkpoints, the seeded
//! random streams.

pub mod checkpoint;
pub mod optim;
pub mod rng;
