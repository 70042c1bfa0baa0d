//! DCGAN against pytorch/examples `dcgan/main.py`: the networks (32 x 32, small widths) with
//! the weights torch initialised, loaded by their reference names; the generator's and the
//! discriminator's outputs in training mode, both losses, and one iteration of the script's
//! loop (a discriminator Adam step, then a generator Adam step on the same fake batch), after
//! which every weight and BatchNorm buffer must match. Fixtures from
//! `scripts/make_dcgan_fixtures.py`.

#[path = "common/parity.rs"]
mod parity;

use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use gan_variants::dcgan::{Config, Dcgan};
use layers::gan::{discriminator_loss, generator_loss, Adversarial, GanLoss, GeneratorInput};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors, vars_with_prefix};
use layers::{Adam, AdamConfig, Checkpoint};
use parity::{assert_close, fixture, tagged};

#[test]
fn one_training_iteration_matches_pytorch_examples() -> Result<()> {
    let dev = Device::Cpu;
    let ck = Checkpoint::load(&fixture("dcgan"), &dev)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &dev);
    let cfg = Config {
        image_size: 32,
        channels: 1,
        nz: 16,
        ngf: 8,
        ndf: 8,
    };
    let model = Dcgan::new(&cfg, vb)?;
    let before = tagged(&ck, "before");
    let unused = load_into_varmap(&varmap, &before, &fixture("dcgan"))?;
    assert!(
        unused.is_empty(),
        "reference tensors the model lacks: {unused:?}"
    );

    let t = |name: &str| ck.tensors[name].clone();
    let input = GeneratorInput {
        noise: t("z"),
        classes: None,
        codes: None,
    };
    let fake = model.generate(&input, true)?;
    assert_close("G(z)", &fake, &t("fake"), 1e-5)?;
    let d_real = model.discriminate(&t("real"), None, true)?.logits;
    let d_fake = model.discriminate(&fake.detach(), None, true)?.logits;
    assert_close("D(real)", &d_real, &t("d_real"), 1e-5)?;
    assert_close("D(G(z))", &d_fake, &t("d_fake"), 1e-5)?;
    let err_d = discriminator_loss(GanLoss::NonSaturating, &d_real, &d_fake)?;
    assert_close("errD", &err_d.reshape(1)?, &t("err_d"), 1e-5)?;

    let adam = AdamConfig {
        lr: 2e-4,
        beta1: 0.5,
        ..AdamConfig::default()
    };
    let mut opt_d = Adam::from_named_vars(vars_with_prefix(&varmap, "discriminator."), adam)?;
    let mut opt_g = Adam::from_named_vars(vars_with_prefix(&varmap, "generator."), adam)?;
    opt_d.backward_step(&err_d)?;
    let d_fake_after = model.discriminate(&fake, None, true)?.logits;
    assert_close(
        "D(G(z)) after D's step",
        &d_fake_after,
        &t("d_fake_after"),
        1e-5,
    )?;
    let err_g = generator_loss(GanLoss::NonSaturating, &d_fake_after)?;
    assert_close("errG", &err_g.reshape(1)?, &t("err_g"), 1e-5)?;
    opt_g.backward_step(&err_g)?;

    let after = tagged(&ck, "after");
    let ours = varmap_tensors(&varmap);
    assert_eq!(ours.len(), after.len(), "same tensors on both sides");
    for (name, want) in &after {
        assert_close(
            &format!("{name} after one iteration"),
            &ours[name],
            want,
            1e-5,
        )?;
    }
    Ok(())
}
