//! Implicit models, trained adversarially. One-generator GANs implement
//! `layers::gan::Adversarial` and train through its shared step: the GAN ([`gan`]), DCGAN
//! ([`dcgan`]), the conditional GAN ([`cgan`]) and InfoGAN ([`infogan`]). Translation models own
//! their step (`layers::Trainable`): CycleGAN ([`cyclegan`]) and StarGAN ([`stargan`]). The
//! text-to-image GAN, Puzzle-GAN and Progressive GAN are listed by `genzoo list` and not built
//! yet.

pub mod cgan;
pub mod cyclegan;
pub mod dcgan;
pub mod gan;
pub mod infogan;
pub mod stargan;
