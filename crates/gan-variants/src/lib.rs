//! Implicit models, trained adversarially through `layers::gan::Adversarial`: GAN and DCGAN so
//! far; conditional GAN, InfoGAN, text-to-image GAN, Puzzle-GAN, CycleGAN, StarGAN and
//! Progressive GAN are listed by `genzoo list` and not built yet.

pub mod cgan;
pub mod dcgan;
pub mod gan;
pub mod infogan;
