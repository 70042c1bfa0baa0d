//! Implicit models, trained adversarially. One-generator GANs implement
//! `layers::gan::Adversarial` and train through its shared step: the GAN ([`gan`]), DCGAN
//! ([`dcgan`]), the conditional GAN ([`cgan`]) and InfoGAN ([`infogan`]). Translation models own
//! their step (`layers::Trainable`): CycleGAN ([`cyclegan`]), StarGAN ([`stargan`]) and the
//! Progressive GAN ([`progan`]), which grows, the text-to-image GAN ([`text2image`]), whose
//! text encoder trains before its GAN, and Puzzle-GAN ([`puzzle`]), which completes images from
//! key patches.

pub mod cgan;
pub mod cyclegan;
pub mod dcgan;
pub mod gan;
pub mod infogan;
pub mod progan;
pub mod puzzle;
pub mod puzzle_locator;
pub mod stargan;
pub mod text2image;
