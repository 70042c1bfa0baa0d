//! The MLP VAE against the pytorch/examples VAE: weights, inputs and outputs made by
//! `scripts/make_vae_fixtures.py` with torch, loaded here by their reference names.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use layers::train::checkpoint::load_into_varmap;
use layers::{Adam, AdamConfig, Checkpoint};
use vae::{Config, Vae};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vae_mlp.safetensors")
}

fn setup() -> Result<(Vae, VarMap, Checkpoint)> {
    let dev = Device::Cpu;
    let ck = Checkpoint::load(&fixture(), &dev)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &dev);
    let model = Vae::new(&Config::default(), vb)?;
    let unused = load_into_varmap(&varmap, &ck.tensors, &fixture())?;
    // Every weight name of the reference was used: the rest are inputs and outputs.
    assert!(unused.iter().all(|n| !n.starts_with("fc")), "{unused:?}");
    Ok((model, varmap, ck))
}

/// Largest absolute difference, and the largest difference relative to the reference's scale.
fn assert_close(name: &str, got: &Tensor, want: &Tensor, abs: f32, rel: f32) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let diff = (got - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = want
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        .max(1.0);
    assert!(
        diff <= abs || diff / scale <= rel,
        "{name}: max |diff| = {diff:e} (scale {scale})"
    );
    Ok(())
}

#[test]
fn encoder_and_decoder_match_pytorch() -> Result<()> {
    let (model, _, ck) = setup()?;
    let t = |n: &str| ck.tensors[n].clone();
    let x = t("input.x").reshape((8, 1, 28, 28))?;
    let (mu, logvar) = model.encode(&x)?;
    assert_close("mu", &mu, &t("output.mu"), 1e-5, 1e-6)?;
    assert_close("logvar", &logvar, &t("output.logvar"), 1e-5, 1e-6)?;
    let logits = model.decode_logits(&t("input.z"))?;
    assert_close("decoder logits", &logits, &t("output.logits_z"), 1e-5, 1e-6)?;
    Ok(())
}

#[test]
fn elbo_terms_match_pytorch() -> Result<()> {
    let (model, _, ck) = setup()?;
    let t = |n: &str| ck.tensors[n].clone();
    let x = t("input.x").reshape((8, 1, 28, 28))?;
    let terms = model.elbo_terms(&x, &t("input.eps"))?;
    assert_close(
        "reconstruction",
        &terms.reconstruction,
        &t("output.reconstruction"),
        1e-5,
        1e-6,
    )?;
    assert_close("kl", &terms.kl, &t("output.kl"), 1e-5, 1e-6)?;
    // The stable logits form equals pytorch/examples' BCE on sigmoid outputs.
    let total = (terms.reconstruction.sum_all()? + terms.kl.sum_all()?)?.reshape(1)?;
    assert_close(
        "examples loss",
        &total,
        &t("output.examples_loss"),
        1e-5,
        1e-5,
    )?;
    Ok(())
}

#[test]
fn three_adam_steps_match_torch_optim_adam() -> Result<()> {
    let (model, varmap, ck) = setup()?;
    let t = |n: &str| ck.tensors[n].clone();
    let x = t("input.x").reshape((8, 1, 28, 28))?;
    let mut opt = Adam::new(
        &varmap,
        AdamConfig {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    for _ in 0..3 {
        let terms = model.elbo_terms(&x, &t("input.eps"))?;
        opt.backward_step(&(terms.reconstruction.sum_all()? + terms.kl.sum_all()?)?)?;
    }
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        assert_close(
            name,
            var.as_tensor(),
            &t(&format!("after_adam.{name}")),
            1e-5,
            1e-5,
        )?;
    }
    Ok(())
}
