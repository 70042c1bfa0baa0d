//! Reduced-precision compute (`--dtype f16|bf16`), as PyTorch's autocast does it: the weights,
//! their gradients, the optimiser's moments and every checkpoint stay f32; inside a
//! [`with_compute_dtype`] scope the convolutions, transposed convolutions and dense layers
//! (the products, where a GPU's tensor cores pay) cast their f32 operands to the lower
//! precision, compute there, and hand back f32. Everything else (normalisation, activations,
//! losses, the recurrences' scans) runs in f32. Gradients flow back through the casts to the
//! f32 weights.
//!
//! Candle 0.11's CPU backend has f16 products but no bf16 ones; bf16 is for CUDA and Metal
//! ([`check_device`] says so before a run starts). On the CPU, reduced precision leaves
//! genzoo's fused f32 kernels for Candle's generic ops: it is there to check the numerics, not
//! for speed. f16 training has no loss scaling, so gradients below f16's range (about 6e-8)
//! vanish in the lowered products; bf16 has f32's range.

use std::cell::Cell;

use candle_core::{DType, Device, Result, Tensor};

thread_local! {
    /// The lowered dtype of this thread's products; `None`: f32.
    static COMPUTE: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's convolutions and dense layers computing in `dtype` (F32: as
/// without the scope). Scopes nest; the outer setting comes back when `f` returns.
pub fn with_compute_dtype<R>(dtype: DType, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE.with(|c| c.set(self.0));
        }
    }
    let lowered = (dtype != DType::F32).then_some(dtype);
    let _restore = Restore(COMPUTE.with(|c| c.replace(lowered)));
    f()
}

/// The dtype this thread's products compute in.
pub fn compute_dtype() -> DType {
    COMPUTE.with(|c| c.get()).unwrap_or(DType::F32)
}

/// `--dtype`: f32, f16 or bf16.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => candle_core::bail!("--dtype {other:?}: expected f32, f16 or bf16"),
    }
}

/// Whether `device` can compute in `dtype`: Candle's CPU backend has no bf16 products.
pub fn check_device(dtype: DType, device: &Device) -> Result<()> {
    if dtype == DType::BF16 && device.is_cpu() {
        candle_core::bail!(
            "--dtype bf16 needs a GPU (--device cuda or metal): Candle's CPU backend has no bf16 matrix products; on the CPU use f16 or f32"
        );
    }
    Ok(())
}

/// The operands of a product, cast to the scope's lowered dtype when they are all f32 and
/// one is set; `None`: compute as they are.
pub fn lowered<const N: usize>(operands: [&Tensor; N]) -> Result<Option<[Tensor; N]>> {
    let Some(dtype) = COMPUTE.with(|c| c.get()) else {
        return Ok(None);
    };
    if operands.iter().any(|t| t.dtype() != DType::F32) {
        return Ok(None);
    }
    let mut cast = Vec::with_capacity(N);
    for t in operands {
        cast.push(t.to_dtype(dtype)?);
    }
    Ok(cast.try_into().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activation::Activation;
    use crate::kernels::conv::{conv2d, conv_transpose2d_padded, ConvSpec};
    use crate::kernels::linear::Linear;
    use candle_core::Var;

    fn randn(shape: &[usize], seed: u64) -> Result<Var> {
        let mut rng = crate::Rng::new(seed);
        Var::from_tensor(&rng.normal(shape, &Device::Cpu)?)
    }

    fn max_relative(a: &Tensor, b: &Tensor) -> Result<f32> {
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
    }

    /// One layer of each kind, its output and its gradients to the input and the weights, in
    /// whatever precision the calling scope sets.
    fn layers_and_gradients(x: &Var, k: &Var, w: &Var, bias: &Var) -> Result<Vec<Tensor>> {
        let spec = ConvSpec {
            stride: (2, 2),
            padding: (1, 1),
        };
        let conv = conv2d(x.as_tensor(), k.as_tensor(), spec)?; // (2, 4, 4, 4)
        let up = conv_transpose2d_padded(&conv, k.as_tensor(), spec, (1, 1))?; // (2, 3, 8, 8)
        let dense = Linear::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()))
            .forward_activated(&up.flatten_from(1)?, Activation::LeakyRelu(0.2))?; // (2, 5)
                                                                                   // Means, as losses are: with sums the input's gradient passes f16's largest value
                                                                                   // (65,504) on these N(0, 1) weights.
        let loss = (dense.sqr()?.mean_all()? + up.sqr()?.mean_all()?)?;
        let grads = loss.backward()?;
        let mut out = vec![conv, up, dense];
        for v in [x, k, w, bias] {
            out.push(grads.get(v.as_tensor()).expect("a gradient").clone());
        }
        Ok(out)
    }

    /// Inside an f16 scope the products compute in f16 and hand back f32 within f16's
    /// precision of the f32 results, gradients included, which reach the f32 variables in f32;
    /// outside it nothing changes.
    #[test]
    fn f16_products_agree_with_f32_and_hand_back_f32() -> Result<()> {
        let x = randn(&[2, 3, 8, 8], 1)?;
        let k = randn(&[4, 3, 3, 3], 2)?;
        let w = randn(&[5, 192], 3)?;
        let bias = randn(&[5], 4)?;
        let exact = layers_and_gradients(&x, &k, &w, &bias)?;
        let half = with_compute_dtype(DType::F16, || {
            assert_eq!(compute_dtype(), DType::F16);
            layers_and_gradients(&x, &k, &w, &bias)
        })?;
        assert_eq!(compute_dtype(), DType::F32);
        let names = ["conv", "transposed", "dense", "dx", "dk", "dw", "dbias"];
        for ((name, a), b) in names.iter().zip(&half).zip(&exact) {
            assert_eq!(a.dtype(), DType::F32, "{name}");
            let err = max_relative(a, b)?;
            // f16 keeps 11 bits (4.9e-4 relative per value); sums of hundreds of products
            // stay within 1e-2 of the largest value, and differ from f32 at all.
            assert!(err < 1e-2 && err > 0.0, "{name}: {err}");
        }
        // The same again outside the scope: f32 exactly.
        let again = layers_and_gradients(&x, &k, &w, &bias)?;
        for (a, b) in again.iter().zip(&exact) {
            assert_eq!(max_relative(a, b)?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn scopes_nest_and_restore() {
        with_compute_dtype(DType::BF16, || {
            with_compute_dtype(DType::F16, || assert_eq!(compute_dtype(), DType::F16));
            assert_eq!(compute_dtype(), DType::BF16);
            with_compute_dtype(DType::F32, || assert_eq!(compute_dtype(), DType::F32));
            assert_eq!(compute_dtype(), DType::BF16);
        });
        assert_eq!(compute_dtype(), DType::F32);
    }

    #[test]
    fn names_and_devices_are_checked() -> Result<()> {
        assert_eq!(parse_dtype("bf16")?, DType::BF16);
        assert_eq!(parse_dtype("f16")?, DType::F16);
        assert_eq!(parse_dtype("f32")?, DType::F32);
        let e = parse_dtype("fp8").unwrap_err().to_string();
        assert!(
            e.contains("\"fp8\"") && e.contains("f32, f16 or bf16"),
            "{e}"
        );
        let e = check_device(DType::BF16, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16 needs a GPU"), "{e}");
        check_device(DType::F16, &Device::Cpu)?;
        Ok(())
    }
}
