//! Evaluation through the digit classifier: the classifier itself and the metrics on its
//! features and predictions.

pub mod classifier;
pub mod metrics;
pub mod stats;
pub mod swd;
