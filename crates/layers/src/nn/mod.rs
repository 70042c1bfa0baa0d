//! Building blocks that models assemble, under the reference PyTorch names.

pub mod init;
pub mod masked;
pub mod negation;
pub mod progressive;
pub mod resample;
pub mod sequential;
pub mod stands;
pub mod symmetry;
pub mod translation;
