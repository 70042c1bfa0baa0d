//! The moving average of a generator's weights that samples are drawn with (Karras et al. 2018
//! use 0.999; the GANs here keep it for every run, and the loop swaps it in for grids and
//! checkpoints hold it under `ema.`).

use candle_core::{Result, Tensor, Var};

/// An exponential moving average of some variables: `avg = d avg + (1 - d) value` with
/// `d = min(decay, (1 + n) / (10 + n))` at the `n`-th update. The warm-up keeps short runs from
/// sampling mostly the initial weights (0.999^630 = 0.53 of them would remain after 630 steps).
pub struct WeightAverage {
    pub decay: f64,
    /// Updates so far.
    pub updates: u64,
    pub slots: Vec<(String, Var, Tensor)>,
}

impl WeightAverage {
    /// Starts at the variables' current values.
    pub fn new(vars: Vec<(String, Var)>, decay: f64) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let avg = var.as_tensor().detach().copy()?;
                Ok((name, var, avg))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            updates: 0,
            slots,
        })
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    pub fn update(&mut self) -> Result<()> {
        let d = self.current_decay();
        for (_, var, avg) in &mut self.slots {
            crate::kernels::ops::blend_into(avg, var.as_tensor(), d)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Starts again from the variables' current values, with the warm-up of a fresh average.
    pub fn restart(&mut self) -> Result<()> {
        for (_, var, avg) in &mut self.slots {
            *avg = var.as_tensor().detach().copy()?;
        }
        self.updates = 0;
        Ok(())
    }

    /// Swaps the averages into the variables (and the variables into the averages): call
    /// twice to restore.
    pub fn swap(&mut self) -> Result<()> {
        for (_, var, avg) in &mut self.slots {
            let current = var.as_tensor().detach().copy()?;
            var.set(avg)?;
            *avg = current;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_average_follows_and_swaps() -> Result<()> {
        let v = Var::from_tensor(&t(&[0.0, 10.0]))?;
        let mut avg = WeightAverage::new(vec![("w".into(), v.clone())], 0.5)?;
        // The first update's warm-up decay is 1/10.
        assert!((avg.current_decay() - 0.1).abs() < 1e-12);
        avg.updates = 100;
        v.set(&t(&[2.0, 2.0]))?;
        avg.update()?;
        assert_eq!(avg.slots[0].2.to_vec1::<f32>()?, vec![1.0, 6.0]);
        // Each update counts: the warm-up's decay (1 + n) / (10 + n) moves on with it.
        assert_eq!(avg.updates, 101);
        let mut fresh = WeightAverage::new(vec![], 0.999)?;
        fresh.update()?;
        fresh.update()?;
        assert_eq!(fresh.updates, 2);
        assert!((fresh.current_decay() - 3.0 / 12.0).abs() < 1e-12);
        assert!((WeightAverage::new(vec![], 0.999)?.current_decay() - 0.1).abs() < 1e-12);
        avg.swap()?;
        assert_eq!(v.as_tensor().to_vec1::<f32>()?, vec![1.0, 6.0]);
        avg.swap()?;
        assert_eq!(v.as_tensor().to_vec1::<f32>()?, vec![2.0, 2.0]);
        // A restart forgets the past: the average is the weights, its warm-up begins again.
        avg.restart()?;
        assert_eq!(avg.slots[0].2.to_vec1::<f32>()?, vec![2.0, 2.0]);
        assert_eq!(avg.updates, 0);
        Ok(())
    }
}
