//! The VAEs against torch, their weights loaded by the reference names: the MLP VAE against
//! the pytorch/examples VAE (hidden width 32; `scripts/make_vae_fixtures.py`) and the conv VAE
//! against the same network written in torch (4 and 8 channels, latent 4;
//! `scripts/make_conv_vae_fixtures.py`). For each: the encoder's and decoder's outputs, both
//! ELBO terms, and three Adam steps on the summed negative ELBO with the gradient of every
//! parameter at the first (to 1e-5 of its largest entry) and the weights after the third.

#[path = "common/parity.rs"]
mod parity;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use layers::train::checkpoint::{load_into_varmap, vars_with_prefix};
use layers::{Adam, AdamConfig, Checkpoint};
use parity::{fixture, max_abs, tagged, Tally};
use vae::{Arch, Config, Vae};

/// The MLP fixture's hidden width (pytorch/examples' is 400).
const HIDDEN: usize = 32;

/// A fixture and the configuration torch's network was built with.
fn config(name: &str) -> Config {
    match name {
        "vae_mlp" => Config {
            hidden_dim: HIDDEN,
            ..Config::default()
        },
        "vae_conv" => Config {
            arch: Arch::Conv,
            conv_channels: [4, 8],
            latent_dim: 4,
            ..Config::default()
        },
        _ => unreachable!("no fixture {name}"),
    }
}

fn setup(name: &str) -> Result<(Vae, VarMap, Checkpoint)> {
    let dev = Device::Cpu;
    let ck = Checkpoint::load(&fixture(name), &dev)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &dev);
    let model = Vae::new(&config(name), vb)?;
    let unused = load_into_varmap(&varmap, &ck.tensors, &fixture(name))?;
    // Every weight name of the reference was used: the rest are inputs, outputs and steps.
    let data = ["input.", "output.", "step", "after_adam."];
    let weights: Vec<_> = unused
        .iter()
        .filter(|n| !data.iter().any(|p| n.starts_with(p)))
        .collect();
    assert!(weights.is_empty(), "weights the model lacks: {weights:?}");
    Ok((model, varmap, ck))
}

/// Largest absolute difference, and the largest difference relative to the reference's scale
/// (an image's summed reconstruction term is in the hundreds); the relative one is tallied.
fn assert_close(name: &str, got: &Tensor, want: &Tensor, abs: f32, rel: f32) -> Result<f32> {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let diff = max_abs(&(got - want)?)?;
    let scale = max_abs(want)?.max(1.0);
    assert!(
        diff <= abs || diff / scale <= rel,
        "{name}: max |diff| = {diff:e} (scale {scale})"
    );
    Ok(diff / scale)
}

/// The fixture's 8 digits as images.
fn images(ck: &Checkpoint) -> Result<Tensor> {
    Ok(ck.tensors["input.x"].reshape((8, 1, 28, 28))?)
}

fn encoder_and_decoder(name: &str) -> Result<()> {
    let (model, _, ck) = setup(name)?;
    let t = |n: &str| ck.tensors[n].clone();
    let (mu, logvar) = model.encode(&images(&ck)?)?;
    let logits = model.decode_logits(&t("input.z"))?;
    let mut tally = Tally::default();
    for (label, got, want) in [
        ("mu", &mu, "output.mu"),
        ("logvar", &logvar, "output.logvar"),
        ("decoder logits", &logits, "output.logits_z"),
    ] {
        let diff = assert_close(label, got, &t(want), 1e-5, 1e-6)?;
        tally.note("outputs (relative)", diff);
    }
    tally.print(name);
    Ok(())
}

fn elbo_terms(name: &str) -> Result<()> {
    let (model, _, ck) = setup(name)?;
    let t = |n: &str| ck.tensors[n].clone();
    let terms = model.elbo_terms(&images(&ck)?, &t("input.eps"))?;
    let mut tally = Tally::default();
    for (label, got, want) in [
        (
            "reconstruction",
            &terms.reconstruction,
            "output.reconstruction",
        ),
        ("kl", &terms.kl, "output.kl"),
    ] {
        let diff = assert_close(label, got, &t(want), 1e-5, 1e-6)?;
        tally.note("ELBO terms (relative)", diff);
    }
    tally.print(name);
    Ok(())
}

/// Three steps of `torch.optim.Adam` on the summed negative ELBO, each with fresh noise: the
/// loss at each step, every parameter's gradient at the first, the weights after the third
/// (which depend on every step's gradient magnitudes, where the first step alone moves each
/// weight by the learning rate times the sign of its gradient). Later steps' gradients are
/// not compared: they are taken at weights that already differ from torch's by float32
/// rounding, which the summed loss amplifies to about 1e-5 of the gradient.
fn three_adam_steps(name: &str) -> Result<()> {
    let (model, varmap, ck) = setup(name)?;
    let t = |n: &str| ck.tensors[n].clone();
    let x = images(&ck)?;
    let adam = AdamConfig {
        lr: 1e-3,
        ..Default::default()
    };
    let mut opt = Adam::new(&varmap, adam)?;
    let vars = vars_with_prefix(&varmap, "");
    let mut tally = Tally::default();
    for k in 1..=3 {
        let terms = model.elbo_terms(&x, &t(&format!("step{k}.eps")))?;
        let loss = (terms.reconstruction.sum_all()? + terms.kl.sum_all()?)?;
        // Summed over 8 x 784 pixels: 1e-5 of its size.
        let (label, want) = (format!("step {k}: loss"), t(&format!("step{k}.loss")));
        let tol = 1e-5 * max_abs(&want)?;
        tally.close("losses", &label, &loss.reshape(1)?, &want, tol)?;
        let grads = loss.backward()?;
        if k == 1 {
            let want = tagged(&ck, "step1.grad");
            assert_eq!(want.len(), vars.len(), "a gradient per parameter");
            for (name, var) in &vars {
                let got = grads
                    .get(var.as_tensor())
                    .expect("every weight has a gradient");
                tally.gradient(name, got, &want[name], 1e-5)?;
            }
        }
        opt.step(&grads)?;
    }
    let after = tagged(&ck, "after_adam");
    assert_eq!(after.len(), vars.len(), "same weights on both sides");
    for (name, var) in &vars {
        let label = format!("{name} after 3 steps");
        let kind = "weights after the last step";
        tally.close(kind, &label, var.as_tensor(), &after[name], 1e-5)?;
    }
    tally.print(name);
    Ok(())
}

/// pytorch/examples `vae/main.py`'s encoder and decoder.
#[test]
fn encoder_and_decoder_match_pytorch() -> Result<()> {
    encoder_and_decoder("vae_mlp")
}

/// pytorch/examples `vae/main.py`'s ELBO terms, and its own loss on sigmoid outputs.
#[test]
fn elbo_terms_match_pytorch() -> Result<()> {
    elbo_terms("vae_mlp")?;
    let (model, _, ck) = setup("vae_mlp")?;
    let terms = model.elbo_terms(&images(&ck)?, &ck.tensors["input.eps"])?;
    // The stable logits form equals pytorch/examples' BCE on sigmoid outputs.
    let total = (terms.reconstruction.sum_all()? + terms.kl.sum_all()?)?.reshape(1)?;
    let want = &ck.tensors["output.examples_loss"];
    assert_close("examples loss", &total, want, 1e-5, 1e-5)?;
    Ok(())
}

/// pytorch/examples `vae/main.py` trained by `torch.optim.Adam`.
#[test]
fn three_adam_steps_match_torch_optim_adam() -> Result<()> {
    three_adam_steps("vae_mlp")
}

/// The conv VAE's encoder and decoder against torch's `nn.Conv2d` / `nn.ConvTranspose2d`.
#[test]
fn conv_encoder_and_decoder_match_torch() -> Result<()> {
    encoder_and_decoder("vae_conv")
}

/// The conv VAE's ELBO terms against torch's.
#[test]
fn conv_elbo_terms_match_torch() -> Result<()> {
    elbo_terms("vae_conv")
}

/// The conv VAE trained by `torch.optim.Adam`.
#[test]
fn conv_three_adam_steps_match_torch_optim_adam() -> Result<()> {
    three_adam_steps("vae_conv")
}
