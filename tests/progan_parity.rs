//! Progressive GAN against the torch networks of `scripts/progan_reference.py` (the zoo's GNet
//! and DNet names, 16 x 16 grey, depths 8, 8, 4): at two stages, 8 x 8 fading in (alpha 0.3)
//! and 16 x 16 stable, the real images as D sees them, G's and D's outputs, the critic's terms
//! (Wasserstein estimate, gradient penalty, drift, total), the generator's loss, the gradient of
//! every parameter the stage uses, and the weights after one Adam step of D and then of G, each
//! to 1e-5. Fixtures from `scripts/make_progan_fixtures.py`. The penalty's gradients here come
//! from the critic's hand-written input gradient (`ProGan::critic_input_grad`), so they check it
//! against torch's `create_graph` too.

#[path = "common/parity.rs"]
mod parity;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use gan_variants::progan::{Config, Phase, ProGan};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors, vars_with_prefix};
use layers::{Adam, AdamConfig, Checkpoint};
use parity::{
    assert_close, assert_gradients_close, assert_step_close, fixture, gradient_pairs, tagged,
};

fn model(ck: &Checkpoint) -> Result<(ProGan, VarMap)> {
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let cfg = Config {
        resolution: 16,
        channels: 1,
        latent_dim: 8,
        depths: vec![8, 8, 4],
        minibatch_group: 2,
        ..Config::default()
    };
    let m = ProGan::new(&cfg, vb)?;
    let unused = load_into_varmap(&varmap, &tagged(ck, "before"), &fixture("progan"))?;
    assert!(
        unused.is_empty(),
        "reference tensors the model lacks: {unused:?}"
    );
    Ok((m, varmap))
}

fn scalar(ck: &Checkpoint, name: &str) -> Result<f32> {
    Ok(ck.tensors[name].flatten_all()?.to_vec1::<f32>()?[0])
}

/// The variables under `prefix` that have a reference gradient at this stage (the layers of
/// other resolutions take no part), checking that every other one got none from us either.
fn used_vars(
    varmap: &VarMap,
    prefix: &str,
    grads: &candle_core::backprop::GradStore,
    want: &std::collections::HashMap<String, Tensor>,
) -> Vec<(String, candle_core::Var)> {
    vars_with_prefix(varmap, prefix)
        .into_iter()
        .filter(|(name, var)| {
            let used = want.contains_key(name);
            if !used {
                let ours = grads.get(var.as_tensor());
                let zero = ours.is_none_or(|g| parity::max_abs(g).unwrap() == 0.0);
                assert!(zero, "{name} has a gradient where the reference has none");
            }
            used
        })
        .collect()
}

fn one_stage(tag: &str) -> Result<()> {
    let ck = Checkpoint::load(&fixture("progan"), &Device::Cpu)?;
    let (m, varmap) = model(&ck)?;
    let t = |name: &str| ck.tensors[&format!("{tag}.{name}")].clone();
    let phase = Phase {
        level: scalar(&ck, &format!("{tag}.level"))? as usize,
        alpha: scalar(&ck, &format!("{tag}.alpha"))? as f64,
        index: 0,
    };
    let reals = m.reals_at(&ck.tensors["x_full"], phase)?;
    assert_close("reals", &reals, &t("reals"), 1e-6)?;
    // G has no output activation: its values reach 2.5 here, held to 1e-5 of that scale.
    let fake = t("fake");
    let scale = parity::max_abs(&fake)?.max(1.0);
    assert_close("fake", &m.generate(&t("z"), phase)?, &fake, 1e-5 * scale)?;
    assert_close("d_real", &m.critique(&reals, phase)?, &t("d_real"), 1e-5)?;

    let d = m.critic_terms(&reals, &t("z"), &t("mix").flatten_all()?, phase)?;
    for (name, got) in [
        ("wasserstein", &d.wasserstein),
        ("gp", &d.gp),
        ("drift", &d.drift),
        ("d_loss", &d.total),
    ] {
        assert_close(name, &got.reshape(1)?, &t(name), 1e-5)?;
    }
    let want_grads = tagged(&ck, &format!("{tag}.grad"));
    let adam = AdamConfig {
        lr: 1e-3,
        beta1: 0.0,
        beta2: 0.99,
        ..AdamConfig::default()
    };
    let grads = d.total.backward()?;
    let critic_vars = used_vars(&varmap, "discriminator.", &grads, &want_grads);
    assert!(
        critic_vars.len() >= 8,
        "{} critic variables",
        critic_vars.len()
    );
    assert_gradients_close(&gradient_pairs(&grads, &critic_vars, &want_grads))?;
    Adam::from_named_vars(vars_with_prefix(&varmap, "discriminator."), adam)?.step(&grads)?;

    let g_loss = m.generator_loss(&t("z2"), phase)?;
    assert_close("g_loss", &g_loss.reshape(1)?, &t("g_loss"), 1e-5)?;
    let grads = g_loss.backward()?;
    let generator_vars = used_vars(&varmap, "generator.", &grads, &want_grads);
    assert!(
        generator_vars.len() >= 8,
        "{} generator variables",
        generator_vars.len()
    );
    for (n, g, w) in gradient_pairs(&grads, &generator_vars, &want_grads) {
        eprintln!(
            "{n} {} {}",
            parity::max_abs(&(&g - &w)?)?,
            parity::max_abs(&w)?
        );
    }
    assert_gradients_close(&gradient_pairs(&grads, &generator_vars, &want_grads))?;
    Adam::from_named_vars(vars_with_prefix(&varmap, "generator."), adam)?.step(&grads)?;

    let (after, before) = (tagged(&ck, &format!("{tag}.after")), tagged(&ck, "before"));
    let ours = varmap_tensors(&varmap);
    for (name, want) in &after {
        match want_grads.get(name) {
            Some(grad) => {
                assert_step_close(name, &ours[name], want, &before[name], grad, 1e-3)?;
            }
            None => assert_close(&format!("{name} (unused)"), &ours[name], want, 0.0)?,
        }
    }
    Ok(())
}

#[test]
fn a_fading_stage_matches_the_reference() -> Result<()> {
    one_stage("fade")
}

#[test]
fn a_stable_stage_matches_the_reference() -> Result<()> {
    one_stage("stable")
}
