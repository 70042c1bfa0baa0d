//! Backward passes that compute only the gradients an optimiser reads.
//!
//! Candle's `Tensor::backward` differentiates every recorded op for both of its inputs: in a
//! GAN's generator step it computes every weight gradient of the discriminator, which the
//! generator's optimiser never reads (PyTorch computes them too, unless `requires_grad` is
//! switched off), and the input gradient of every first layer, whose input is data. Inside
//! [`backward_for`], the CPU convolution (`kernels::conv`, in f32 and f64) skips the gradient of
//! an input that is data (tracks no op) or a variable outside the set: a convolution's weight
//! gradient is half of its backward arithmetic. Other ops, and the convolution off the CPU,
//! compute every gradient, as Candle does outside the scope.

use std::cell::RefCell;
use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var};

thread_local! {
    /// The variables the backward pass running on this thread wants, if it said so.
    static WANTED: RefCell<Option<HashSet<TensorId>>> = const { RefCell::new(None) };
}

/// `loss.backward()` for the gradients of `vars`: the store holds theirs alone (another
/// variable's, where an op skipped part of it, would be partial). Candle walks the graph and
/// calls each op's backward on this thread, where the set is kept until the pass returns.
pub fn backward_for<'a>(
    loss: &Tensor,
    vars: impl IntoIterator<Item = &'a Var>,
) -> Result<GradStore> {
    let ids: HashSet<TensorId> = vars.into_iter().map(|v| v.as_tensor().id()).collect();
    let grads = {
        let _scope = Scope::enter(ids.clone());
        loss.backward()?
    };
    let mut wanted = GradStore::default();
    for id in ids {
        if let Some(grad) = grads.get_id(id) {
            wanted.insert_id(id, grad.clone());
        }
    }
    Ok(wanted)
}

/// Whether a backward pass needs the gradient of op input `t`: always outside
/// [`backward_for`]; inside it, unless `t` is data or a variable nobody asked for.
pub(crate) fn gradient_wanted(t: &Tensor) -> bool {
    WANTED.with(|wanted| match wanted.borrow().as_ref() {
        None => true,
        Some(ids) => t.track_op() && (!t.is_variable() || ids.contains(&t.id())),
    })
}

/// Sets the wanted variables for its lifetime and restores the previous set after, on an error
/// or a panic as well.
struct Scope {
    previous: Option<HashSet<TensorId>>,
}

impl Scope {
    fn enter(ids: HashSet<TensorId>) -> Self {
        let previous = WANTED.with(|wanted| wanted.borrow_mut().replace(ids));
        Self { previous }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        WANTED.with(|wanted| *wanted.borrow_mut() = self.previous.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{conv2d, conv_transpose2d, ConvSpec};
    use crate::Rng;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// Two convolutions in a row, the second's kernel not asked for: the first kernel's
    /// gradient equals the full backward pass's, the second kernel gets none, and the data
    /// input none either; outside the scope all three are there.
    #[test]
    fn only_the_wanted_variables_get_gradients_and_theirs_are_unchanged() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let x = rng.normal((2, 3, 8, 8), &dev)?;
        let first = Var::from_tensor(&rng.normal((4, 3, 3, 3), &dev)?)?;
        let second = Var::from_tensor(&rng.normal((4, 2, 4, 4), &dev)?)?;
        let stride2 = ConvSpec {
            stride: (2, 2),
            padding: (1, 1),
        };
        let loss = || -> Result<Tensor> {
            let h = conv2d(&x, first.as_tensor(), ConvSpec::same_padding(3, 3))?;
            let y = conv_transpose2d(&h.relu()?, second.as_tensor(), stride2)?;
            y.sqr()?.sum_all()
        };
        let all = loss()?.backward()?;
        let some = backward_for(&loss()?, [&first])?;
        let full = all.get(first.as_tensor()).expect("first kernel, full pass");
        let scoped = some
            .get(first.as_tensor())
            .expect("first kernel, scoped pass");
        assert_eq!(max_diff(full, scoped)?, 0.0);
        assert!(all.get(second.as_tensor()).is_some());
        assert!(
            some.get(second.as_tensor()).is_none(),
            "an unwanted kernel's gradient"
        );
        assert!(all.get(&x).is_some());
        assert!(some.get(&x).is_none(), "the data's gradient");
        Ok(())
    }

    /// Inside a scope: variables outside the set and data are not wanted, ops and variables in
    /// it are; after it (a panic included) everything is wanted again.
    #[test]
    fn the_scope_says_what_is_wanted_and_ends_with_its_pass() -> Result<()> {
        let dev = Device::Cpu;
        let (w, other) = (Var::new(&[1.0f32, 2.0], &dev)?, Var::new(&[3.0f32], &dev)?);
        let data = Tensor::new(&[5.0f32], &dev)?;
        let op = (w.as_tensor() * 2.0)?;
        for t in [w.as_tensor(), other.as_tensor(), &data, &op] {
            assert!(gradient_wanted(t));
        }
        {
            let _scope = Scope::enter(HashSet::from([w.as_tensor().id()]));
            assert!(gradient_wanted(w.as_tensor()) && gradient_wanted(&op));
            assert!(!gradient_wanted(other.as_tensor()) && !gradient_wanted(&data));
        }
        assert!(gradient_wanted(other.as_tensor()) && gradient_wanted(&data));
        let panicked = std::panic::catch_unwind(|| {
            let _scope = Scope::enter(HashSet::new());
            panic!("inside the scope");
        });
        assert!(panicked.is_err());
        assert!(gradient_wanted(other.as_tensor()) && gradient_wanted(&data));
        Ok(())
    }
}
