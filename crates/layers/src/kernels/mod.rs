//! Fused CPU ops where Candle's composition of ops is slow, and the vector kernels under them.
//! Every op checks [`ops::fused_cpu_f32`] (f32 on the CPU, first-order gradients) and otherwise
//! falls back to Candle's ops, which its tests compare it against in values and gradients; the
//! convolution, the bias and activation and the dense layer also serve second-order passes
//! ([`ops::twice_differentiable_cpu_f32`]), their backward passes being recorded ops.

pub mod activation;
pub mod conv;
pub mod instance_norm;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod pad;
pub mod pixel_norm;
pub mod precision;
pub mod recurrence;
mod reduce;
pub(crate) mod resample;
pub mod sigmoid_scan;
pub mod simd;
