//! Implicit models: GAN, DCGAN, conditional GAN, InfoGAN, text-to-image GAN, Puzzle-GAN,
//! CycleGAN, StarGAN and Progressive GAN. None is built yet: `genzoo list` shows the status.
