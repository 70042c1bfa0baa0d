//! What the parity tests share: the fixtures torch wrote, the tensors under a tag, and the
//! comparisons (values, gradients relative to their scale, one Adam step element by element).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Tensor};
use layers::Checkpoint;

/// `tests/fixtures/{name}.safetensors`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/{name}.safetensors"))
}

/// The tensors saved under `tag.` with the tag removed.
pub fn tagged(ck: &Checkpoint, tag: &str) -> HashMap<String, Tensor> {
    ck.tensors
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{tag}."))?.to_string(), v.clone())))
        .collect()
}

pub fn max_abs(t: &Tensor) -> Result<f32> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?)
}

pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let diff = max_abs(&(got - want)?)?;
    assert!(diff <= tol, "{name}: differs by {diff} (tolerance {tol})");
    Ok(())
}

/// Every gradient of a network to 1e-5 of its own largest entry, so a small gradient is held
/// to its own scale (not to an absolute 1e-5 that it passes whatever its values). A gradient
/// whose largest entry is under a thousandth of the network's is rounding noise (a bias that
/// an instance norm cancels: torch's and genzoo's hold different noise at the network's
/// float32 scale); it is held to 1e-5 of the network's largest entry instead.
pub fn assert_gradients_close(pairs: &[(String, Tensor, Tensor)]) -> Result<()> {
    const NOISE: f32 = 1e-3;
    let mut network = 0f32;
    for (_, _, want) in pairs {
        network = network.max(max_abs(want)?);
    }
    for (name, got, want) in pairs {
        let own = max_abs(want)?;
        let scale = if own < NOISE * network { network } else { own };
        assert_close(&format!("grad {name}"), got, want, 1e-5 * scale)?;
    }
    Ok(())
}

/// `(name, genzoo's gradient, the reference's)` for each of `vars`; panics naming a variable
/// that got no gradient or that the fixture lacks.
pub fn gradient_pairs(
    grads: &candle_core::backprop::GradStore,
    vars: &[(String, candle_core::Var)],
    want: &HashMap<String, Tensor>,
) -> Vec<(String, Tensor, Tensor)> {
    vars.iter()
        .map(|(name, var)| {
            let got = grads.get(var.as_tensor());
            let got = got.unwrap_or_else(|| panic!("{name} has no gradient"));
            let reference = want.get(name);
            let reference =
                reference.unwrap_or_else(|| panic!("the fixture has no gradient of {name}"));
            (name.clone(), got.clone(), reference.clone())
        })
        .collect()
}

/// One Adam step's result against the reference, element by element. Where the reference
/// gradient is rounding noise (below 2e-5 of its largest entry, or of 1: a bias or a constant
/// input channel that an instance norm cancels), Adam's first step moves the weight by the
/// learning rate times the sign of that noise on either side, so there it must only have
/// moved by at most the learning rate; everywhere else it must match to 1e-5. Returns how many
/// elements were noise.
pub fn assert_step_close(
    name: &str,
    ours: &Tensor,
    want: &Tensor,
    before: &Tensor,
    grad: &Tensor,
    lr: f64,
) -> Result<usize> {
    let threshold = 2e-5 * max_abs(grad)?.max(1.0) as f64;
    let noise = grad.abs()?.lt(threshold)?.to_dtype(DType::F32)?;
    let signal = (1.0 - &noise)?;
    let off = max_abs(&((ours - want)? * &signal)?)?;
    assert!(
        off <= 1e-5,
        "{name} after one step: differs by {off} where the gradient is not noise"
    );
    let moved = max_abs(&((ours - before)? * &noise)?)?;
    assert!(
        moved as f64 <= lr * 1.001,
        "{name}: a noise element moved {moved}"
    );
    Ok(noise.sum_all()?.to_scalar::<f32>()? as usize)
}

/// The largest difference each kind of comparison (outputs, losses, gradients, weights) has
/// seen, for a test to print (`--nocapture`): how far inside its tolerance a parity test sits.
#[derive(Debug, Default)]
pub struct Tally(std::collections::BTreeMap<&'static str, f32>);

impl Tally {
    /// [`assert_close`], remembering the difference under `kind`.
    pub fn close(
        &mut self,
        kind: &'static str,
        name: &str,
        got: &Tensor,
        want: &Tensor,
        tol: f32,
    ) -> Result<()> {
        assert_close(name, got, want, tol)?;
        self.note(kind, max_abs(&(got - want)?)?);
        Ok(())
    }

    /// A gradient to `rel` of its own largest entry: stricter than [`assert_gradient_close`]
    /// where gradients are small (a GAN generator's are 1e-5 to 1e-3, which an absolute 1e-5
    /// would barely test).
    pub fn gradient(&mut self, name: &str, got: &Tensor, want: &Tensor, rel: f32) -> Result<()> {
        let tol = rel * max_abs(want)?;
        self.gradient_to(name, got, want, tol)
    }

    /// A gradient to `tol`, remembering the difference relative to its largest entry.
    pub fn gradient_to(&mut self, name: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
        assert_close(&format!("grad {name}"), got, want, tol)?;
        let (diff, scale) = (max_abs(&(got - want)?)?, max_abs(want)?);
        if scale > 0.0 {
            self.note("gradients (relative to their largest entry)", diff / scale);
        }
        Ok(())
    }

    pub fn note(&mut self, kind: &'static str, diff: f32) {
        let worst = self.0.entry(kind).or_insert(0.0);
        *worst = worst.max(diff);
    }

    pub fn print(&self, test: &str) {
        for (kind, diff) in &self.0 {
            eprintln!("{test}: {kind}: max difference {diff:e}");
        }
    }
}
