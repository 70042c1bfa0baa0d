//! StarGAN against yunjey/stargan: the Generator and Discriminator (small widths, 16 x 16 RGB,
//! three attributes) with the weights torch initialised, loaded by their reference names; the
//! critic's step (outputs, the four loss terms, the gradient penalty) and the generator's step
//! (translation, reconstruction, the three loss terms), the gradient of every parameter, and
//! the weights and running statistics after one critic and one generator Adam step, each to
//! 1e-5; the single-label (RaFD) classification loss on the same outputs. Fixtures from
//! `scripts/make_translation_fixtures.py`. Its own test binary: the gradient penalty switches
//! Candle's second-order gradients on for the process.

#[path = "common/parity.rs"]
mod parity;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use gan_variants::stargan::{Config, LabelMode, StarGan};
use layers::gan::{enable_second_order_gradients, to_unit_range};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors, vars_with_prefix};
use layers::{Adam, AdamConfig, Checkpoint, Target, Translator};
use parity::{
    assert_close, assert_gradients_close, assert_step_close, fixture, gradient_pairs, tagged,
};

fn model(ck: &Checkpoint, mode: LabelMode) -> Result<(StarGan, VarMap)> {
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let cfg = Config {
        image_size: 16,
        channels: 3,
        c_dim: 3,
        mode,
        g_conv_dim: 4,
        d_conv_dim: 8,
        g_repeat_num: 2,
        d_repeat_num: 3,
        ..Config::default()
    };
    let m = StarGan::new(&cfg, vb)?;
    let unused = load_into_varmap(&varmap, &tagged(ck, "before"), &fixture("stargan"))?;
    assert!(
        unused.is_empty(),
        "reference tensors the model lacks: {unused:?}"
    );
    Ok((m, varmap))
}

/// The fixture's batch: images, their attributes, the permuted targets, the interpolation
/// weights of the penalty.
struct Inputs {
    x_real: Tensor,
    c_org: Tensor,
    c_trg: Tensor,
    alpha: Tensor,
}

fn inputs(ck: &Checkpoint) -> Result<Inputs> {
    let t = |name: &str| ck.tensors[name].clone();
    Ok(Inputs {
        x_real: t("x_real"),
        c_org: t("label_org"),
        c_trg: t("label_trg"),
        alpha: t("alpha").flatten_all()?,
    })
}

fn scalar(name: &str, got: &Tensor, ck: &Checkpoint) -> Result<()> {
    assert_close(name, &got.reshape(1)?, &ck.tensors[name], 1e-5)
}

#[test]
fn one_iteration_matches_yunjey() -> Result<()> {
    enable_second_order_gradients()?;
    let ck = Checkpoint::load(&fixture("stargan"), &Device::Cpu)?;
    let (m, varmap) = model(&ck, LabelMode::MultiLabel)?;
    let t = |name: &str| ck.tensors[name].clone();
    let Inputs {
        x_real,
        c_org,
        c_trg,
        alpha,
    } = inputs(&ck)?;
    let want_grads = tagged(&ck, "grad");
    let adam = AdamConfig {
        lr: 1e-4,
        beta1: 0.5,
        beta2: 0.999,
        ..AdamConfig::default()
    };

    // The critic: its outputs on real images and translations, each loss term, its gradients.
    let real = m.critique(&x_real)?;
    assert_close("d_out_src_real", &real.src, &t("d_out_src_real"), 1e-5)?;
    assert_close("d_out_cls_real", &real.cls, &t("d_out_cls_real"), 1e-5)?;
    let d = m.critic_terms(&x_real, &c_org, &c_trg, &alpha)?;
    for (name, got) in [
        ("d_loss_real", &d.real),
        ("d_loss_fake", &d.fake),
        ("d_loss_cls", &d.cls),
        ("d_loss_gp", &d.gp),
        ("d_loss", &d.total),
    ] {
        scalar(name, got, &ck)?;
    }
    let grads = d.total.backward()?;
    let mut critic = Adam::from_named_vars(vars_with_prefix(&varmap, "discriminator."), adam)?;
    let critic_vars = vars_with_prefix(&varmap, "discriminator.");
    assert_gradients_close(&gradient_pairs(&grads, &critic_vars, &want_grads))?;
    critic.step(&grads)?;

    // The generator, after the critic's step.
    let x_fake = m.generate(&x_real, &c_trg)?;
    assert_close("g_x_fake", &x_fake, &t("g_x_fake"), 1e-5)?;
    let g = m.generator_terms(&x_real, &c_org, &c_trg, true)?;
    for (name, got) in [
        ("g_loss_fake", &g.fake),
        ("g_loss_rec", &g.rec),
        ("g_loss_cls", &g.cls),
        ("g_loss", &g.total),
    ] {
        scalar(name, got, &ck)?;
    }
    let grads = g.total.backward()?;
    let params: Vec<_> = vars_with_prefix(&varmap, "generator.")
        .into_iter()
        .filter(|(n, _)| !n.contains("running_"))
        .collect();
    assert_gradients_close(&gradient_pairs(&grads, &params, &want_grads))?;
    let mut generator = Adam::from_named_vars(params, adam)?;
    generator.step(&grads)?;
    // The weights after the iteration. The running statistics are checked on a model that ran
    // exactly yunjey's three training passes of G (the next test): `generate` above was a
    // fourth here.
    let (after, before) = (tagged(&ck, "after"), tagged(&ck, "before"));
    let ours = varmap_tensors(&varmap);
    for (name, want) in after.iter().filter(|(n, _)| !n.contains("running_")) {
        assert_step_close(
            name,
            &ours[name],
            want,
            &before[name],
            &want_grads[name],
            1e-4,
        )?;
    }
    Ok(())
}

#[test]
fn running_statistics_follow_three_training_passes() -> Result<()> {
    enable_second_order_gradients()?;
    let ck = Checkpoint::load(&fixture("stargan"), &Device::Cpu)?;
    let (m, varmap) = model(&ck, LabelMode::MultiLabel)?;
    let Inputs {
        x_real,
        c_org,
        c_trg,
        alpha,
    } = inputs(&ck)?;
    // yunjey's three training passes of G: the critic's translation, then the generator
    // step's translation and reconstruction (after the critic's step, which moves D only).
    let d = m.critic_terms(&x_real, &c_org, &c_trg, &alpha)?;
    let mut critic = Adam::from_named_vars(
        vars_with_prefix(&varmap, "discriminator."),
        AdamConfig {
            lr: 1e-4,
            beta1: 0.5,
            ..AdamConfig::default()
        },
    )?;
    critic.backward_step(&d.total)?;
    m.generator_terms(&x_real, &c_org, &c_trg, true)?;
    let after = tagged(&ck, "after");
    let ours = varmap_tensors(&varmap);
    let mut compared = 0;
    for (name, want) in after.iter().filter(|(n, _)| n.contains("running_")) {
        assert_close(name, &ours[name], want, 1e-5)?;
        compared += 1;
    }
    assert!(compared >= 14, "{compared} running statistics compared");
    // Translation leaves them alone.
    let before = varmap_tensors(&varmap);
    m.translate(&to_unit_range(&x_real)?, &Target::Attributes(c_trg))?;
    for (name, t) in varmap_tensors(&varmap) {
        assert_close(
            &format!("{name} after translating"),
            &t,
            &before[&name],
            0.0,
        )?;
    }
    Ok(())
}

#[test]
fn single_label_classification_matches_yunjey() -> Result<()> {
    let ck = Checkpoint::load(&fixture("stargan"), &Device::Cpu)?;
    let (m, _) = model(&ck, LabelMode::SingleLabel)?;
    let one_hot = |labels: &Tensor| -> Result<Tensor> {
        let ids: Vec<f32> = labels.to_vec1()?;
        let mut v = vec![0f32; ids.len() * 3];
        for (i, id) in ids.iter().enumerate() {
            v[i * 3 + *id as usize] = 1.0;
        }
        Ok(Tensor::from_vec(v, (ids.len(), 3), &Device::Cpu)?)
    };
    let t = |name: &str| ck.tensors[name].clone();
    let d = m.classification_loss(&t("d_out_cls_real"), &one_hot(&t("ce.label_org"))?)?;
    assert_close("ce.d_loss_cls", &d.reshape(1)?, &t("ce.d_loss_cls"), 1e-5)?;
    let g = m.classification_loss(&t("g_out_cls"), &one_hot(&t("ce.label_trg"))?)?;
    assert_close("ce.g_loss_cls", &g.reshape(1)?, &t("ce.g_loss_cls"), 1e-5)?;
    Ok(())
}
