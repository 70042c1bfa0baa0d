//! DCGAN against pytorch/examples `dcgan/main.py`: the networks (32 x 32, small widths) with
//! the weights torch initialised, loaded by their reference names; three iterations of the
//! script's loop (a discriminator Adam step, then a generator Adam step on the same fake batch),
//! each compared in the generator's and the discriminator's outputs (training mode) and both
//! losses to 1e-5, the gradient of every parameter to 1e-5 of its largest entry, and every
//! weight and BatchNorm buffer after the third to 1e-5. The first Adam step moves each weight by the learning rate times the sign of its
//! gradient whatever the gradient's size: the gradients and the later steps are what pin the
//! magnitudes down. Fixtures from `scripts/make_dcgan_fixtures.py`.

#[path = "common/parity.rs"]
mod parity;

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use gan_variants::dcgan::{Config, Dcgan};
use layers::gan::{discriminator_loss, generator_loss, Adversarial, GanLoss, GeneratorInput};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors, vars_with_prefix};
use layers::{Adam, AdamConfig, Checkpoint};
use parity::{fixture, tagged, Tally};

const ITERATIONS: usize = 3;

fn model(ck: &Checkpoint) -> Result<(Dcgan, VarMap)> {
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let cfg = Config {
        image_size: 32,
        channels: 1,
        nz: 16,
        ngf: 8,
        ndf: 8,
    };
    let model = Dcgan::new(&cfg, vb)?;
    let unused = load_into_varmap(&varmap, &tagged(ck, "before"), &fixture("dcgan"))?;
    assert!(
        unused.is_empty(),
        "reference tensors the model lacks: {unused:?}"
    );
    Ok((model, varmap))
}

/// Compares `loss`'s gradient of every variable in `vars` with the reference's
/// `iter<k>.grad.<name>`, then takes the optimiser's step with it.
fn compare_gradients_and_step(
    loss: &Tensor,
    vars: &[(String, Var)],
    want: &HashMap<String, Tensor>,
    opt: &mut Adam,
    tally: &mut Tally,
) -> Result<()> {
    let grads = loss.backward()?;
    let mut compared = 0;
    for (name, var) in vars {
        // BatchNorm's running statistics are variables without a gradient.
        let Some(want) = want.get(name) else { continue };
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        tally.gradient(name, got, want, 1e-5)?;
        eprintln!(
            "G {name} {:.2e}",
            parity::max_abs(&(got - want)?)? / parity::max_abs(want)?
        );
        compared += 1;
    }
    assert!(compared > 0, "no gradient compared");
    opt.step(&grads)
}

#[test]
fn three_training_iterations_match_pytorch_examples() -> Result<()> {
    let ck = Checkpoint::load(&fixture("dcgan"), &Device::Cpu)?;
    let (model, varmap) = model(&ck)?;
    let adam = AdamConfig {
        lr: 2e-4,
        beta1: 0.5,
        ..AdamConfig::default()
    };
    let (d_vars, g_vars) = (
        vars_with_prefix(&varmap, "discriminator."),
        vars_with_prefix(&varmap, "generator."),
    );
    let mut opt_d = Adam::from_named_vars(d_vars.clone(), adam)?;
    let mut opt_g = Adam::from_named_vars(g_vars.clone(), adam)?;
    let (mut gradients, mut tally) = (0, Tally::default());
    for k in 1..=ITERATIONS {
        let it = tagged(&ck, &format!("iter{k}"));
        let close = |tally: &mut Tally, kind, name: &str, got: &Tensor| {
            tally.close(
                kind,
                &format!("iteration {k}: {name}"),
                got,
                &it[name],
                1e-5,
            )
        };
        let input = GeneratorInput {
            noise: it["z"].clone(),
            classes: None,
            codes: None,
        };
        let fake = model.generate(&input, true)?;
        close(&mut tally, "outputs", "fake", &fake)?;
        let d_real = model.discriminate(&it["real"], None, true)?.logits;
        let d_fake = model.discriminate(&fake.detach(), None, true)?.logits;
        close(&mut tally, "outputs", "d_real", &d_real)?;
        close(&mut tally, "outputs", "d_fake", &d_fake)?;
        let err_d = discriminator_loss(GanLoss::NonSaturating, &d_real, &d_fake)?;
        close(&mut tally, "losses", "err_d", &err_d.reshape(1)?)?;
        let want = tagged(&ck, &format!("iter{k}.grad"));
        compare_gradients_and_step(&err_d, &d_vars, &want, &mut opt_d, &mut tally)?;
        let d_fake_after = model.discriminate(&fake, None, true)?.logits;
        close(&mut tally, "outputs", "d_fake_after", &d_fake_after)?;
        let err_g = generator_loss(GanLoss::NonSaturating, &d_fake_after)?;
        close(&mut tally, "losses", "err_g", &err_g.reshape(1)?)?;
        compare_gradients_and_step(&err_g, &g_vars, &want, &mut opt_g, &mut tally)?;
        gradients += want.len();
    }
    let params = varmap_tensors(&varmap)
        .keys()
        .filter(|n| !n.contains("running_"))
        .count();
    assert_eq!(gradients, ITERATIONS * params, "a gradient per parameter");

    let after = tagged(&ck, "after");
    let ours = varmap_tensors(&varmap);
    assert_eq!(ours.len(), after.len(), "same tensors on both sides");
    for (name, want) in &after {
        tally.close(
            "weights after the last iteration",
            &format!("{name} after {ITERATIONS} iterations"),
            &ours[name],
            want,
            1e-5,
        )?;
    }
    tally.print("dcgan");
    Ok(())
}
