//! Training state that outlives a step: Adam and its moments, learning-rate schedules, the
//! generator weight average, checkpoints, the seeded random streams.

pub mod average;
pub mod checkpoint;
pub mod optim;
pub mod pool;
pub mod rng;
pub mod schedule;
