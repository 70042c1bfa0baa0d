//! Latent-variable models with a likelihood bound: the VAE (see [`vae`]).

pub mod conv;
pub mod mlp;
pub mod vae;

pub use vae::{Arch, Config, Vae};
