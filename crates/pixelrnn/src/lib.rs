//! Autoregressive models with an exact likelihood, `log p(x) = sum_i log p(x_i | x_<i)`:
//! the fully visible sigmoid belief network and AR-N ([`fvsbn`]), NADE ([`nade`]) and
//! PixelCNN ([`pixelcnn`]). What they share is in [`ar`].

pub mod ar;
pub mod fvsbn;
pub mod nade;
pub mod pixelcnn;
