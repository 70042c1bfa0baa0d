//! Seeded parameter initialisation, and layers initialised the way PyTorch initialises them.
//!
//! `seeded_var_builder` returns a `VarBuilder` over a `VarMap` whose new variables are drawn
//! from genzoo's own [`Rng`] following the same `Init` hints Candle uses, so the same seed
//! builds the same model on every run and device.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Conv2dConfig, ConvTranspose2dConfig, Init, VarBuilder, VarMap};

use crate::train::rng::{Rng, Stream};

struct SeededVarMap {
    varmap: VarMap,
    rng: Mutex<Rng>,
    /// Values the new variables may still take in all (`None`: no bound).
    budget: Option<Mutex<usize>>,
}

impl SeededVarMap {
    /// Takes `shape`'s values from the budget, before anything of that size is allocated: a
    /// model rebuilt from a file's metadata may ask for more than the file can hold.
    fn spend(&self, name: &str, shape: &Shape) -> Result<()> {
        let Some(n) = shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
        else {
            candle_core::bail!(
                "parameter `{name}` of shape {:?} has more values than fit in memory",
                shape.dims()
            );
        };
        if let Some(budget) = &self.budget {
            let mut left = budget.lock().expect("budget lock poisoned");
            if n > *left {
                candle_core::bail!(
                    "parameter `{name}` of shape {:?} ({n} values) takes the model past the values there are to load into it",
                    shape.dims()
                );
            }
            *left -= n;
        }
        Ok(())
    }
}

/// Draws the values of one `Init` hint from `rng`, as f32 on the CPU.
pub fn init_values(init: Init, shape: &Shape, rng: &mut Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut Rng, lo: f64, up: f64| -> Vec<f32> {
        rng.uniform_vec(n)
            .into_iter()
            .map(|u| (lo + (up - lo) * u as f64) as f32)
            .collect()
    };
    let normal = |rng: &mut Rng, mean: f64, std: f64| -> Vec<f32> {
        rng.normal_vec(n)
            .into_iter()
            .map(|z| (mean + std * z as f64) as f32)
            .collect()
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => uniform(rng, -(3f64.sqrt()) * std, 3f64.sqrt() * std),
                NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock poisoned");
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` requested with shape {s:?} but it exists with {:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        self.spend(name, &s)?;
        let values = init_values(h, &s, &mut self.rng.lock().expect("rng lock poisoned"));
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` must be created with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock poisoned")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates trainable variables in `varmap`, drawn from `seed`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    seeded_var_builder_within(varmap, seed, dtype, device, None)
}

/// [`seeded_var_builder`] whose variables may take `max_values` values in all: a model that
/// is rebuilt to load a file's weights needs no more than the file holds, and its metadata,
/// which says how large to build it, is not to be trusted further than that.
pub fn seeded_var_builder_within(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
    max_values: Option<usize>,
) -> VarBuilder<'static> {
    let backend = SeededVarMap {
        varmap: varmap.clone(),
        rng: Mutex::new(Rng::derive(seed, Stream::Init, 0)),
        budget: max_values.map(Mutex::new),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// PyTorch's default `nn.Linear` / `nn.Conv2d` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
/// weight and bias (kaiming_uniform with a = sqrt(5)).
pub fn torch_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Linear(in_dim, out_dim)` with PyTorch's names (`weight`, `bias`) and init.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> Result<crate::kernels::linear::Linear> {
    let init = torch_uniform(in_dim);
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(crate::kernels::linear::Linear::new(weight, Some(bias)))
}

/// `nn.Conv2d(in, out, k)` (square kernel, with bias) with PyTorch's names and init.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<candle_nn::Conv2d> {
    let init = torch_uniform(in_channels / cfg.groups * kernel * kernel);
    let weight = vb.get_with_hints(
        (out_channels, in_channels / cfg.groups, kernel, kernel),
        "weight",
        init,
    )?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(candle_nn::Conv2d::new(weight, Some(bias), cfg))
}

/// `nn.ConvTranspose2d(in, out, k)` (square kernel, with bias) with PyTorch's names and init.
/// PyTorch computes the fan-in of a transposed conv from weight dim 1, i.e. `out * k * k`.
pub fn conv_transpose2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    cfg: ConvTranspose2dConfig,
    vb: VarBuilder,
) -> Result<candle_nn::ConvTranspose2d> {
    let init = torch_uniform(out_channels * kernel * kernel);
    let weight = vb.get_with_hints((in_channels, out_channels, kernel, kernel), "weight", init)?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(candle_nn::ConvTranspose2d::new(weight, Some(bias), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Module;

    fn build(seed: u64) -> Result<(VarMap, Vec<f32>)> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
        let layer = linear(50, 30, vb.pp("fc"))?;
        let y = layer.forward(&Tensor::ones((1, 50), DType::F32, &Device::Cpu)?)?;
        Ok((varmap, y.flatten_all()?.to_vec1()?))
    }

    #[test]
    fn same_seed_same_model_other_seed_other_model() -> Result<()> {
        let (_, a) = build(1)?;
        let (_, b) = build(1)?;
        let (_, c) = build(2)?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        Ok(())
    }

    #[test]
    fn linear_follows_torch_default_bounds() -> Result<()> {
        let (varmap, _) = build(3)?;
        let data = varmap.data().lock().unwrap();
        let w = data["fc.weight"]
            .as_tensor()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bound = 1.0 / 50f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        // A uniform on [-b, b] has standard deviation b / sqrt(3).
        let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - bound / 3f32.sqrt()).abs() < 0.01, "std {std}");
        assert_eq!(data["fc.bias"].shape().dims(), &[30]);
        Ok(())
    }
}
