//! Learning-rate schedules: constant, or linear decay to zero as CycleGAN (junyanz's
//! `lr_policy = linear`: constant for `n_epochs`, then linear to zero over `n_epochs_decay`) and
//! StarGAN (`num_iters_decay`) train. The loop sets each optimiser's rate from the step, so a
//! resumed run follows the schedule exactly.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Constant until the decay starts, then linear to zero at the run's last step.
    Linear,
}

impl Schedule {
    /// The factor on the base rate at `step` (0-based) of `total` steps, decaying from
    /// `decay_start` (a step) on as junyanz's `1 - (n + 1) / (n_decay + 1)` does per epoch:
    /// the first decayed step already runs below the base rate and the last at
    /// `1 / (total - decay_start + 1)`, so no step runs at rate zero.
    pub fn factor(self, step: u64, total: u64, decay_start: u64) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => {
                if step < decay_start || total <= decay_start {
                    return 1.0;
                }
                let span = (total - decay_start) as f64;
                1.0 - (step - decay_start + 1) as f64 / (span + 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_decay_holds_then_falls_to_one_step_above_zero() {
        let s = Schedule::Linear;
        assert_eq!(s.factor(0, 10, 6), 1.0);
        assert_eq!(s.factor(5, 10, 6), 1.0);
        assert_eq!(s.factor(6, 10, 6), 0.8);
        assert_eq!(s.factor(7, 10, 6), 0.6);
        assert!((s.factor(9, 10, 6) - 0.2).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(9, 10, 6), 1.0);
        // A decay that starts at or after the end never decays.
        assert_eq!(s.factor(9, 10, 10), 1.0);
    }
}
