//! CycleGAN against junyanz/pytorch-CycleGAN-and-pix2pix: the ResnetGenerators and PatchGANs
//! (small widths, 16 x 16 one-channel images) with the weights torch initialised, loaded by
//! their reference names; the forward pass, every loss term of `backward_G` and `backward_D_A`
//! / `backward_D_B`, the gradient of every parameter, and the weights after one whole
//! `optimize_parameters` (both Adam steps), each to 1e-5. Fixtures from
//! `scripts/make_translation_fixtures.py` (pools of size 0, so the iteration is deterministic).

#[path = "common/parity.rs"]
mod parity;

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use gan_variants::cyclegan::{Config, CycleGan};
use layers::gan::{to_unit_range, GanLoss};
use layers::step::{Optimizers, StepContext, StepProgress, Trainable};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors, vars_with_prefix};
use layers::{Adam, AdamConfig, Batch, Checkpoint, Rng};
use parity::{
    assert_close, assert_gradients_close, assert_step_close, fixture, gradient_pairs, tagged,
};

fn model(ck: &Checkpoint) -> Result<(CycleGan, VarMap)> {
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let cfg = Config {
        image_size: 16,
        channels: 1,
        ngf: 4,
        ndf: 8,
        n_blocks: 2,
        n_layers_d: 2,
        gan_loss: GanLoss::Lsgan,
        lambda_a: 10.0,
        lambda_b: 10.0,
        lambda_identity: 0.5,
        pool_size: 0,
        coordinates: false,
        symmetries: false,
        symmetry_lr: 1e-2,
    };
    let m = CycleGan::new(&cfg, vb)?;
    let unused = load_into_varmap(&varmap, &tagged(ck, "before"), &fixture("cyclegan"))?;
    assert!(
        unused.is_empty(),
        "reference tensors the model lacks: {unused:?}"
    );
    Ok((m, varmap))
}

/// The fixture's inputs (uniform in [-1, 1]) as a batch of images in [0, 1].
fn batch(ck: &Checkpoint) -> Result<Batch> {
    Ok(Batch {
        images: to_unit_range(&ck.tensors["real_A"])?,
        labels: None,
        domain_b: Some(to_unit_range(&ck.tensors["real_B"])?),
        captions: None,
        patches: None,
    })
}

#[test]
fn forward_losses_and_gradients_match_junyanz() -> Result<()> {
    let ck = Checkpoint::load(&fixture("cyclegan"), &Device::Cpu)?;
    let (m, varmap) = model(&ck)?;
    let t = |name: &str| ck.tensors[name].clone();
    let f = m.forward(&batch(&ck)?)?;
    for (name, got) in [
        ("real_A", &f.real_a),
        ("fake_B", &f.fake_b),
        ("rec_A", &f.rec_a),
        ("fake_A", &f.fake_a),
        ("rec_B", &f.rec_b),
    ] {
        assert_close(name, got, &t(name), 1e-5)?;
    }
    let g = m.generator_terms(&f)?;
    let (idt_a, idt_b) = g
        .idt
        .as_ref()
        .expect("identity terms at lambda_identity 0.5");
    for (name, got) in [
        ("loss_idt_A", idt_a),
        ("loss_idt_B", idt_b),
        ("loss_G_A", &g.g_a),
        ("loss_G_B", &g.g_b),
        ("loss_cycle_A", &g.cycle_a),
        ("loss_cycle_B", &g.cycle_b),
        ("loss_G", &g.total),
    ] {
        assert_close(name, &got.reshape(1)?, &t(name), 1e-5)?;
    }
    // Gradients of the generators from loss_G (junyanz freezes D for this pass).
    let grads = g.total.backward()?;
    let want = tagged(&ck, "grad");
    let generators = gradient_pairs(&grads, &vars_with_prefix(&varmap, "netG_"), &want);
    assert_gradients_close(&generators)?;
    // The discriminators' losses on the same (detached) fakes, and their gradients.
    let d_a = m.d_a_loss(&f.real_b, &f.fake_b)?;
    let d_b = m.d_b_loss(&f.real_a, &f.fake_a)?;
    assert_close("loss_D_A", &d_a.reshape(1)?, &t("loss_D_A"), 1e-5)?;
    assert_close("loss_D_B", &d_b.reshape(1)?, &t("loss_D_B"), 1e-5)?;
    let grads = (d_a + d_b)?.backward()?;
    let critics = gradient_pairs(&grads, &vars_with_prefix(&varmap, "netD_"), &want);
    assert_gradients_close(&critics)?;
    assert_eq!(
        generators.len() + critics.len(),
        want.len(),
        "a gradient per parameter"
    );
    Ok(())
}

#[test]
fn one_optimize_parameters_matches_junyanz() -> Result<()> {
    let ck = Checkpoint::load(&fixture("cyclegan"), &Device::Cpu)?;
    let (mut m, varmap) = model(&ck)?;
    let adam = AdamConfig {
        lr: 2e-4,
        beta1: 0.5,
        ..AdamConfig::default()
    };
    let group = |prefixes: &[&str]| -> Result<Adam> {
        let vars = prefixes
            .iter()
            .flat_map(|p| vars_with_prefix(&varmap, p))
            .collect();
        Adam::from_named_vars(vars, adam)
    };
    let mut optimizers = Optimizers {
        groups: vec![
            ("generator".into(), group(&["netG_A.", "netG_B."])?),
            ("discriminator".into(), group(&["netD_A.", "netD_B."])?),
        ],
    };
    // The model's own step, as the training loop runs it.
    let b = batch(&ck)?;
    let mut take = |_: u64| Ok(b.clone());
    let progress = StepProgress {
        step: 0,
        total_steps: 1,
        steps_per_epoch: 1,
        images_per_step: b.size()? as u64,
    };
    let mut ctx = StepContext::new(progress, Rng::new(0), &mut take, 1, &mut optimizers);
    m.train_step(&mut ctx)?;
    let terms: HashMap<String, f64> = ctx.into_terms().into_iter().collect();
    for (ours, theirs) in [
        ("d_a", "loss_D_A"),
        ("d_b", "loss_D_B"),
        ("g_loss", "loss_G"),
    ] {
        let want = ck.tensors[theirs].to_vec1::<f32>()?[0] as f64;
        assert!(
            (terms[ours] - want).abs() < 1e-5,
            "{ours}: {} vs {want}",
            terms[ours]
        );
    }
    let (after, before, grads) = (
        tagged(&ck, "after"),
        tagged(&ck, "before"),
        tagged(&ck, "grad"),
    );
    let ours = varmap_tensors(&varmap);
    assert_eq!(ours.len(), after.len(), "same tensors on both sides");
    let mut noise = HashMap::new();
    for (name, want) in &after {
        let n = assert_step_close(name, &ours[name], want, &before[name], &grads[name], 2e-4)?;
        noise.insert(name.clone(), n);
    }
    // The gradient is all noise for the biases that an instance norm cancels (every
    // convolution of the generators but the last), and for none of the output layer's.
    for g in ["netG_A", "netG_B"] {
        for layer in [
            "1",
            "4",
            "7",
            "10.conv_block.1",
            "11.conv_block.5",
            "12",
            "15",
        ] {
            let name = format!("{g}.model.{layer}.bias");
            let size = before[&name].elem_count();
            assert_eq!(noise[&name], size, "{name}: an instance norm cancels it");
        }
        assert_eq!(noise[&format!("{g}.model.19.bias")], 0);
    }
    Ok(())
}
