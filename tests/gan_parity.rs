//! The GAN, the conditional GAN and InfoGAN against torch, at the widths genzoo trains: the
//! GAN and conditional GAN of PyTorch-GAN (`implementations/gan/gan.py`,
//! `implementations/cgan/cgan.py`) and InfoGAN with the paper's networks
//! (`scripts/train_infogan_reference.py`, Natsu6767's names), on fixed digits and fixed
//! generator inputs. For each, at the initial weights: both passes' outputs (G(z), D's logits,
//! Q's predictions) and every loss term (InfoGAN's information loss included) to 1e-5, and the
//! gradient of every parameter of each optimiser to 1e-5 of its largest entry; where torch's
//! own float32 result is farther than a quarter of that from its float64 one (InfoGAN's deeper
//! layers), to four times torch's distance. Then genzoo's own GAN step
//! (`AdversarialTraining::train_step`, what `genzoo train` runs): the terms it records, the
//! gradients its optimisers stepped with (read back from Adam's first moments, which after one
//! step are `(1 - beta1)` times the gradient), and for the GAN and conditional GAN the terms of
//! three steps and the networks' outputs after them. Fixtures from
//! `scripts/make_gan_fixtures.py`, whose weights both sides compute from the parameters' names
//! and whose largest gradients are stored as the layer inputs and output gradients whose
//! product they are.

#[path = "common/parity.rs"]
mod parity;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use gan_variants::{cgan, gan, infogan};
use layers::gan::{
    discriminator_loss, generator_loss, to_tanh_range, Adversarial, AdversarialSettings,
    AdversarialTraining, GanLoss, GeneratorInput, Verdict,
};
use layers::step::{LrRole, Optimizers, StepContext, StepProgress, Trainable};
use layers::train::checkpoint::vars_with_prefix;
use layers::{Adam, AdamConfig, Batch, Checkpoint, ImageShape, Labels, Rng};
use parity::{fixture, max_abs, Tally};

/// Both optimisers' beta1 in every run file of these models.
const BETA1: f64 = 0.5;
/// How many times torch's own float32 error (its distance from its float64 result) a value may
/// differ by where that is more than the tolerance: two float32 computations part by the sum of
/// their errors, and genzoo's may be up to three times torch's (InfoGAN's D trunk: 2.3 times).
const FLOAT32_ERRORS: f32 = 4.0;
/// What the training steps are compared to once D has taken an Adam step: an entry of its
/// gradient within float32 rounding of zero moves its weight by anything up to the learning
/// rate (`lr g / (|g| + 1e-8)`), so from there the two sides part by more than rounding
/// (measured: 8e-6 after three steps of the GAN, 1.5e-5 for InfoGAN's generator step).
const TRAJECTORY_TOL: f32 = 1e-4;

/// InfoGAN's three float64 steps against torch's: the losses within this (measured: 4.4e-10)
/// and the networks' outputs after them within [`FLOAT64_OUTPUT_TOL`] (measured: 8.9e-8), where
/// float32 rounding grows past 1e-3 by the second step. How sensitive those steps are (a slope
/// off by 1.5e-8 moves step 3's losses by 1e-2): see `make_gan_fixtures.py`.
const FLOAT64_TOL: f64 = 1e-8;
const FLOAT64_OUTPUT_TOL: f32 = 1e-6;

/// Which of the fixture's runs a training is compared with: torch's float32 steps (`step<k>.*`,
/// `after.*`), or its float64 steps from the same weights and inputs (`f64.step<k>.*`,
/// `f64.after.*`, InfoGAN's).
#[derive(Clone, Copy)]
struct Precision {
    prefix: &'static str,
    dtype: DType,
}

const FLOAT32: Precision = Precision {
    prefix: "",
    dtype: DType::F32,
};
const FLOAT64: Precision = Precision {
    prefix: "f64.",
    dtype: DType::F64,
};

/// How a run file trains the model: its `[gan]` loss and the learning rates of D and G.
struct Training {
    name: &'static str,
    loss: GanLoss,
    lr_d: f64,
    lr_g: f64,
}

/// FNV-1a of a parameter's name: the seed of its weights.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// `n` values in [-1, 1) on a 2^-23 grid, splitmix64 of the name's hash plus 1, 2, ..., n:
/// `unit_uniform` of the fixture script, bit for bit.
fn unit_uniform(name: &str, n: usize) -> Vec<f32> {
    let seed = fnv1a(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / 16_777_216.0 * 2.0 - 1.0
        })
        .collect()
}

/// Sets every variable to `shift + scale * unit_uniform(name)` with the fixture's `init.<name>`,
/// as torch's networks were set, after checking that both sides have the same names and shapes.
fn formula_weights(varmap: &VarMap, ck: &Checkpoint) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    let reference = ck.tensors.keys().filter(|k| k.starts_with("init.")).count();
    assert_eq!(data.len(), reference, "as many tensors as the reference");
    for (name, var) in data.iter() {
        let init = ck.tensors.get(&format!("init.{name}"));
        let init = init.unwrap_or_else(|| panic!("the reference has no {name}"));
        let [shift, scale] = init.to_vec1::<f32>()?[..] else {
            panic!("init.{name}: [shift, scale]")
        };
        let shape: Vec<usize> = ck.tensors[&format!("shape.{name}")]
            .to_vec1::<f32>()?
            .into_iter()
            .map(|d| d as usize)
            .collect();
        assert_eq!(var.dims(), shape.as_slice(), "{name}: shape");
        let values: Vec<f32> = unit_uniform(name, var.elem_count())
            .into_iter()
            .map(|u| shift + scale * u)
            .collect();
        let values = Tensor::from_vec(values, var.shape(), var.device())?;
        var.set(&values.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The fixture's `<prefix>.<name>`, or the product `left^T right` of its factors (a linear
/// layer's inputs and output gradients, in float64).
fn reference_gradient(ck: &Checkpoint, prefix: &str, name: &str) -> Result<Option<Tensor>> {
    let key = format!("{prefix}.{name}");
    if let Some(g) = ck.tensors.get(&key) {
        return Ok(Some(g.clone()));
    }
    let (Some(left), Some(right)) = (
        ck.tensors.get(&format!("{key}.left")),
        ck.tensors.get(&format!("{key}.right")),
    ) else {
        return Ok(None);
    };
    let product = left
        .to_dtype(DType::F64)?
        .t()?
        .matmul(&right.to_dtype(DType::F64)?)?;
    Ok(Some(product.to_dtype(DType::F32)?))
}

/// The model, drawing the fixture's generator inputs in order instead of random ones.
struct Scripted<M> {
    model: M,
    inputs: RefCell<VecDeque<GeneratorInput>>,
}

impl<M: Adversarial> Adversarial for Scripted<M> {
    fn output_shape(&self) -> ImageShape {
        self.model.output_shape()
    }

    fn draw_input(&self, n: usize, _rng: &mut Rng) -> candle_core::Result<GeneratorInput> {
        let input = self.inputs.borrow_mut().pop_front();
        let input = input.expect("the step drew more inputs than torch's");
        assert_eq!(input.noise.dim(0)?, n, "batch size");
        Ok(input)
    }

    fn generate(&self, input: &GeneratorInput, train: bool) -> candle_core::Result<Tensor> {
        self.model.generate(input, train)
    }

    fn discriminate(
        &self,
        x: &Tensor,
        classes: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Verdict> {
        self.model.discriminate(x, classes, train)
    }

    fn classes(&self) -> Option<usize> {
        self.model.classes()
    }

    fn categories(&self) -> Option<usize> {
        self.model.categories()
    }

    fn continuous_codes(&self) -> usize {
        self.model.continuous_codes()
    }

    fn auxiliary_loss(
        &self,
        input: &GeneratorInput,
        verdict: &Verdict,
    ) -> candle_core::Result<Option<Tensor>> {
        self.model.auxiliary_loss(input, verdict)
    }

    fn auxiliary_head(&self) -> Option<&'static str> {
        self.model.auxiliary_head()
    }
}

/// `(b)` u32 classes from the fixture's float32 indices.
fn classes(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::U32)?)
}

/// The generator input saved under `tag` (`step<k>.d_input`, `step<k>.g_input`), its noise and
/// codes in `dtype`.
fn input(ck: &Checkpoint, tag: &str, dtype: DType) -> Result<GeneratorInput> {
    let get = |part: &str| ck.tensors.get(&format!("{tag}.{part}"));
    let float = |t: &Tensor| t.to_dtype(dtype);
    Ok(GeneratorInput {
        noise: float(get("noise").expect("noise"))?,
        classes: get("classes").map(classes).transpose()?,
        codes: get("codes").map(float).transpose()?,
    })
}

/// Step `k`'s digits in [0, 1] (in `dtype`), with their classes where the model is conditional.
fn batch(ck: &Checkpoint, k: usize, dtype: DType) -> Result<Batch> {
    let labels = ck.tensors.get(&format!("step{k}.labels"));
    Ok(Batch {
        images: ck.tensors[&format!("step{k}.images")].to_dtype(dtype)?,
        labels: labels.map(classes).transpose()?.map(Labels::Classes),
        domain_b: None,
        captions: None,
        patches: None,
    })
}

/// One Adam per optimiser the model declares, as `genzoo train` builds them.
fn optimizers(model: &dyn Trainable, varmap: &VarMap, training: &Training) -> Result<Optimizers> {
    let all = vars_with_prefix(varmap, "");
    let groups = model
        .optimizers()
        .iter()
        .map(|spec| {
            let vars = all.iter().filter(|(n, _)| spec.owns(n)).cloned().collect();
            let lr = match spec.lr {
                LrRole::Main => training.lr_d,
                LrRole::Generator => training.lr_g,
                LrRole::Own { .. } => panic!("{}: these GANs use the run's rates", spec.name),
            };
            let adam = AdamConfig {
                lr,
                beta1: BETA1,
                ..AdamConfig::default()
            };
            Ok((spec.name.clone(), Adam::from_named_vars(vars, adam)?))
        })
        .collect::<Result<_>>()?;
    Ok(Optimizers { groups })
}

/// The variables each optimiser steps, as `AdversarialTraining::optimizers` groups them: Q's
/// head (InfoGAN's auxiliary head) with G, D's trunk alone.
fn groups<M: Adversarial>(m: &M, varmap: &VarMap) -> [(&'static str, Vec<(String, Var)>); 2] {
    let head = m.auxiliary_head();
    let in_head = |n: &str| head.is_some_and(|h| n.starts_with(h));
    let all = vars_with_prefix(varmap, "");
    let (d, g): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|(n, _)| n.starts_with("generator.") || n.starts_with("discriminator."))
        .partition(|(n, _)| n.starts_with("discriminator.") && !in_head(n));
    [("discriminator", d), ("generator", g)]
}

/// How a gradient of the first step is compared, from torch's float64 gradient: `None` where
/// that is zero up to rounding (below 1e-6 of the optimiser's `largest` entry: a bias that
/// BatchNorm cancels, whose float32 value is noise), else the tolerance: 1e-5 of its largest
/// entry, or [`FLOAT32_ERRORS`] times the distance of torch's own float32 gradient from the
/// float64 one where that is farther (InfoGAN's Q head and first layer, at up to 1.5e-5 of the
/// entry: BatchNorm over 4 images cancels most of each gradient there).
fn gradient_tolerance(
    ck: &Checkpoint,
    optimizer: &str,
    name: &str,
    largest: f32,
) -> Result<Option<f32>> {
    let exact = ck.tensors[&format!("grad_exact.{optimizer}.{name}")].to_vec1::<f32>()?;
    let (scale, err) = (exact[0], exact[1]);
    Ok((scale >= 1e-6 * largest).then(|| (1e-5 * scale).max(FLOAT32_ERRORS * err)))
}

/// A gradient against torch's with [`gradient_tolerance`]; where torch's is noise, ours must
/// be noise too (below 1e-6 of the optimiser's largest entry).
fn compare_gradient(
    tally: &mut Tally,
    label: &str,
    tol: Option<f32>,
    largest: f32,
    got: &Tensor,
    want: &Tensor,
) -> Result<()> {
    match tol {
        Some(tol) => tally.gradient_to(label, got, want, tol),
        None => {
            let noise = max_abs(got)?;
            assert!(
                noise < 1e-6 * largest,
                "{label}: {noise} where torch's is noise"
            );
            Ok(())
        }
    }
}

/// The largest entry of the optimiser's float64 gradients.
fn largest_gradient(ck: &Checkpoint, optimizer: &str) -> Result<f32> {
    let prefix = format!("grad_exact.{optimizer}.");
    let mut largest = 0f32;
    for (_, v) in ck.tensors.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        largest = largest.max(v.to_vec1::<f32>()?[0]);
    }
    Ok(largest)
}

/// Every variable's gradient in `grads` against `grad.<optimizer>.<name>`; a variable without a
/// reference gradient (a BatchNorm running statistic) must have none.
fn compare_gradients(
    grads: &GradStore,
    optimizer: &str,
    vars: &[(String, Var)],
    ck: &Checkpoint,
    tally: &mut Tally,
) -> Result<()> {
    let (mut compared, largest) = (0, largest_gradient(ck, optimizer)?);
    for (name, var) in vars {
        let got = grads.get(var.as_tensor());
        match (
            reference_gradient(ck, &format!("grad.{optimizer}"), name)?,
            got,
        ) {
            (Some(want), Some(got)) => {
                let (label, want) = (format!("{optimizer}: {name}"), want.reshape(got.shape())?);
                let tol = gradient_tolerance(ck, optimizer, name, largest)?;
                compare_gradient(tally, &label, tol, largest, got, &want)?;
                compared += 1;
            }
            (Some(_), None) => panic!("{name}: no gradient where torch has one"),
            (None, Some(got)) => assert_eq!(max_abs(got)?, 0.0, "{name}: a gradient torch has not"),
            (None, None) => {}
        }
    }
    assert_eq!(
        compared,
        references(ck, &format!("grad.{optimizer}.")),
        "{optimizer}"
    );
    Ok(())
}

/// How many gradients the fixture holds under `prefix` (a factored one once).
fn references(ck: &Checkpoint, prefix: &str) -> usize {
    ck.tensors
        .keys()
        .filter(|k| k.starts_with(prefix) && !k.ends_with(".right"))
        .count()
}

/// Both passes of the first step at the initial weights, on step 1's inputs: D on real digits
/// and on G(z) detached, D's loss and its optimiser's gradients; then G's pass (D not yet
/// stepped), its adversarial and information losses, and its optimiser's gradients.
fn first_step<M: Adversarial>(
    m: &M,
    varmap: &VarMap,
    ck: &Checkpoint,
    loss: GanLoss,
    tally: &mut Tally,
) -> Result<()> {
    let t = |name: &str| ck.tensors[&format!("first.{name}")].clone();
    let close = |tally: &mut Tally, kind, name: &str, got: &Tensor| {
        // 1e-5, or a multiple of torch's own float32 error (InfoGAN's Q: up to 6.8e-6).
        let err = ck.tensors[&format!("first_error.{name}")].to_vec1::<f32>()?[0];
        let tol = 1e-5f32.max(FLOAT32_ERRORS * err);
        tally.close(kind, name, &got.reshape(t(name).shape())?, &t(name), tol)
    };
    let [(d_opt, d_vars), (g_opt, g_vars)] = groups(m, varmap);
    let (d_in, g_in) = (
        input(ck, "step1.d_input", DType::F32)?,
        input(ck, "step1.g_input", DType::F32)?,
    );
    let labels = ck.tensors.get("step1.labels").map(classes).transpose()?;
    let fake = m.generate(&d_in, true)?;
    close(tally, "outputs", "fake_d", &fake)?;
    let real = to_tanh_range(&ck.tensors["step1.images"])?;
    let real = m.discriminate(&real, labels.as_ref(), true)?;
    let fake = m.discriminate(&fake.detach(), d_in.classes.as_ref(), true)?;
    close(tally, "outputs", "d_real_logits", &real.logits)?;
    close(tally, "outputs", "d_fake_logits", &fake.logits)?;
    if let (Some(q_real), Some(q_fake)) = (&real.q, &fake.q) {
        close(tally, "outputs", "q_real", q_real)?;
        close(tally, "outputs", "q_fake", q_fake)?;
    }
    let d_loss = discriminator_loss(loss, &real.logits, &fake.logits)?;
    close(tally, "losses", "d_loss", &d_loss)?;
    compare_gradients(&d_loss.backward()?, d_opt, &d_vars, ck, tally)?;

    let fake = m.generate(&g_in, true)?;
    close(tally, "outputs", "fake_g", &fake)?;
    let verdict = m.discriminate(&fake, g_in.classes.as_ref(), true)?;
    close(tally, "outputs", "g_logits", &verdict.logits)?;
    let mut g_loss = generator_loss(loss, &verdict.logits)?;
    if let Some(info) = m.auxiliary_loss(&g_in, &verdict)? {
        close(
            tally,
            "outputs",
            "g_q",
            verdict.q.as_ref().expect("Q's predictions"),
        )?;
        close(tally, "losses", "g_adversarial", &g_loss)?;
        close(tally, "losses", "info_loss", &info)?;
        g_loss = (g_loss + info)?;
    }
    close(tally, "losses", "g_loss", &g_loss)?;
    compare_gradients(&g_loss.backward()?, g_opt, &g_vars, ck, tally)
}

/// The gradient each optimiser's first step used, from its first moments (`m = (1 - beta1) g`
/// after one step from zero; exact at beta1 = 0.5): D's against the first step's
/// (`grad.discriminator`: the same weights and inputs), G's against torch's generator step in
/// training (`step1.grad.generator`, after D's step); where the fixture has no such gradients
/// (InfoGAN), which variables had one.
fn stepped_gradients(optimizers: &Optimizers, ck: &Checkpoint, tally: &mut Tally) -> Result<()> {
    for (optimizer, adam) in &optimizers.groups {
        // D's first step is at the initial weights; G's is after D's.
        let prefix = match optimizer.as_str() {
            "discriminator" => "grad.discriminator".to_string(),
            _ => format!("step1.grad.{optimizer}"),
        };
        let exact = references(ck, &format!("{prefix}.")) > 0;
        let (state, steps) = adam.state("m")?;
        assert_eq!(steps, 1);
        let (mut compared, largest) = (0, largest_gradient(ck, optimizer)?);
        for (key, m) in state {
            let Some(name) = key.strip_prefix("m.exp_avg.") else {
                continue;
            };
            let grad = m.affine(1.0 / (1.0 - BETA1), 0.0)?;
            let stepped = max_abs(&grad)? > 0.0;
            if !exact {
                let want = reference_gradient(ck, &format!("grad.{optimizer}"), name)?;
                assert_eq!(
                    stepped,
                    want.is_some(),
                    "{optimizer}: {name} stepped or not"
                );
                compared += usize::from(stepped);
                continue;
            }
            match reference_gradient(ck, &prefix, name)? {
                Some(want) => {
                    let label = format!("stepped {optimizer}: {name}");
                    let want = want.reshape(grad.shape())?;
                    // D's step is the first step's pass. G's comes after D's step: no float64
                    // bound of its own, so 1e-5 of its largest entry (the noise is the same
                    // BatchNorm-cancelled biases).
                    let tol = match gradient_tolerance(ck, optimizer, name, largest)? {
                        Some(tol) if optimizer == "discriminator" => Some(tol),
                        Some(_) => Some(1e-5 * max_abs(&want)?),
                        None => None,
                    };
                    compare_gradient(tally, &label, tol, largest, &grad, &want)?;
                    compared += 1;
                }
                None => assert!(!stepped, "{optimizer}: {name}: a gradient torch has not"),
            }
        }
        let want = references(ck, &format!("grad.{optimizer}."));
        assert_eq!(compared, want, "{optimizer}: every parameter stepped");
    }
    Ok(())
}

/// The terms `train_step` recorded at step `k` against torch's: to 1e-5 before any update (D's
/// terms of the first step), to [`TRAJECTORY_TOL`] after.
fn step_terms(
    terms: &HashMap<String, f64>,
    ck: &Checkpoint,
    k: usize,
    run: Precision,
    tally: &mut Tally,
) -> Result<()> {
    for name in ["d_loss", "d_real", "d_fake", "g_loss", "info_loss"] {
        let Some(want) = ck.tensors.get(&format!("{}step{k}.{name}", run.prefix)) else {
            assert!(!terms.contains_key(name), "{name}: a term torch has not");
            continue;
        };
        let want = want.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
        let got = *terms
            .get(name)
            .unwrap_or_else(|| panic!("step {k}: no {name}"));
        let initial = k == 1 && name.starts_with("d_");
        let (kind, tol) = match (run.dtype, initial) {
            (DType::F64, _) => ("float64 losses", FLOAT64_TOL),
            (_, true) => ("losses", 1e-5),
            (_, false) => ("losses after D's first step", TRAJECTORY_TOL as f64),
        };
        let diff = (got - want).abs();
        assert!(diff <= tol, "step {k}: {name} {got} against {want}");
        tally.note(kind, diff as f32);
    }
    Ok(())
}

/// The networks after the steps, on step 1's inputs: G(z), D's logits and Q's predictions in
/// training mode (BatchNorm on the batch), then G(z) in inference mode (its running statistics).
fn outputs_after<M: Adversarial>(
    m: &M,
    ck: &Checkpoint,
    run: Precision,
    tally: &mut Tally,
) -> Result<()> {
    let want = |name: &str| ck.tensors[&format!("{}{name}", run.prefix)].to_dtype(run.dtype);
    let g_in = input(ck, "step1.g_input", run.dtype)?;
    let labels = ck.tensors.get("step1.labels").map(classes).transpose()?;
    let (kind, tol) = match run.dtype {
        DType::F64 => ("float64 outputs after the last step", FLOAT64_OUTPUT_TOL),
        _ => ("outputs after the last step", TRAJECTORY_TOL),
    };
    let mut close = |name: &str, got: &Tensor| tally.close(kind, name, got, &want(name)?, tol);
    close("after.fake", &m.generate(&g_in, true)?)?;
    let real = to_tanh_range(&ck.tensors["step1.images"].to_dtype(run.dtype)?)?;
    let v = m.discriminate(&real, labels.as_ref(), true)?;
    close("after.d_real_logits", &v.logits)?;
    if let Some(q) = &v.q {
        close("after.q_real", q)?;
    }
    if ck
        .tensors
        .contains_key(&format!("{}after.fake_eval", run.prefix))
    {
        close("after.fake_eval", &m.generate(&g_in, false)?)?;
    }
    Ok(())
}

/// `AdversarialTraining::train_step` on the fixture's batches and generator inputs, for as many
/// steps as torch took: the recorded terms, the gradients the first step used, the outputs
/// after the last.
fn train<M: Adversarial>(
    model: M,
    varmap: &VarMap,
    ck: &Checkpoint,
    training: &Training,
    run: Precision,
    tally: &mut Tally,
) -> Result<()> {
    let steps = (1..).take_while(|k| {
        ck.tensors
            .contains_key(&format!("{}step{k}.d_loss", run.prefix))
    });
    let steps = steps.count();
    let mut inputs = VecDeque::new();
    for k in 1..=steps {
        inputs.push_back(input(ck, &format!("step{k}.d_input"), run.dtype)?);
        inputs.push_back(input(ck, &format!("step{k}.g_input"), run.dtype)?);
    }
    let scripted = Scripted {
        model,
        inputs: RefCell::new(inputs),
    };
    let settings = AdversarialSettings {
        loss: training.loss,
        d_steps: 1,
        ..AdversarialSettings::default()
    };
    let mut gan = AdversarialTraining::new(scripted, settings, training.name);
    let mut optimizers = optimizers(&gan, varmap, training)?;
    for k in 1..=steps {
        let b = batch(ck, k, run.dtype)?;
        let mut take = |_: u64| Ok(b.clone());
        let progress = StepProgress {
            step: k as u64 - 1,
            total_steps: steps as u64,
            steps_per_epoch: steps as u64,
            images_per_step: b.size()? as u64,
        };
        let mut ctx = StepContext::new(progress, Rng::new(0), &mut take, 1, &mut optimizers);
        gan.train_step(&mut ctx)?;
        let terms = ctx.into_terms().into_iter().collect();
        step_terms(&terms, ck, k, run, tally)?;
        if k == 1 && run.dtype == DType::F32 {
            stepped_gradients(&optimizers, ck, tally)?;
        }
    }
    assert!(gan.model.inputs.borrow().is_empty(), "every input drawn");
    if ck
        .tensors
        .contains_key(&format!("{}after.fake", run.prefix))
    {
        outputs_after(&gan.model, ck, run, tally)?;
    }
    Ok(())
}

/// Builds the model twice with the fixture's weights: for the first step's passes, and to train.
fn parity<M: Adversarial>(
    build: impl Fn(candle_nn::VarBuilder) -> candle_core::Result<M>,
    training: Training,
) -> Result<()> {
    let ck = Checkpoint::load(&fixture(training.name), &Device::Cpu)?;
    let mut tally = Tally::default();
    let fresh = |dtype: DType| -> Result<(M, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, dtype, &Device::Cpu);
        let m = build(vb)?;
        formula_weights(&varmap, &ck)?;
        Ok((m, varmap))
    };
    let (m, varmap) = fresh(DType::F32)?;
    first_step(&m, &varmap, &ck, training.loss, &mut tally)?;
    let (m, varmap) = fresh(DType::F32)?;
    train(m, &varmap, &ck, &training, FLOAT32, &mut tally)?;
    if ck.tensors.contains_key("f64.step1.d_loss") {
        let (m, varmap) = fresh(DType::F64)?;
        train(m, &varmap, &ck, &training, FLOAT64, &mut tally)?;
    }
    tally.print(training.name);
    Ok(())
}

/// PyTorch-GAN's `gan.py` networks, trained as models/gan.toml trains them (non-saturating loss,
/// Adam 2e-4).
#[test]
fn gan_matches_pytorch_gan() -> Result<()> {
    parity(
        |vb| gan::Gan::new(&gan::Config::default(), vb),
        Training {
            name: "gan",
            loss: GanLoss::NonSaturating,
            lr_d: 2e-4,
            lr_g: 2e-4,
        },
    )
}

/// PyTorch-GAN's `cgan.py` networks (dropout left out), trained as models/cgan.toml trains them
/// (LSGAN loss, Adam 2e-4).
#[test]
fn cgan_matches_pytorch_gan() -> Result<()> {
    parity(
        |vb| cgan::ConditionalGan::new(&cgan::Config::default(), vb),
        Training {
            name: "cgan",
            loss: GanLoss::Lsgan,
            lr_d: 2e-4,
            lr_g: 2e-4,
        },
    )
}

/// The paper's InfoGAN networks of `scripts/train_infogan_reference.py` at the paper's width
/// (the run file narrows it: `fc_width`), trained as models/infogan.toml trains them: non-saturating loss plus `L_I = CE + 0.1 MSE`, D's trunk at
/// 2e-4 on the adversarial loss alone, G and Q's head at 1e-3 on G's loss and `L_I`. One
/// training step in float32, and three in float64 (see `make_gan_fixtures.py` for why).
#[test]
fn infogan_matches_the_reference() -> Result<()> {
    let cfg = infogan::Config {
        network: infogan::Network::Paper,
        image_size: 28,
        ..infogan::Config::default()
    };
    parity(
        |vb| infogan::InfoGan::new(&cfg, vb),
        Training {
            name: "infogan",
            loss: GanLoss::NonSaturating,
            lr_d: 2e-4,
            lr_g: 1e-3,
        },
    )
}
