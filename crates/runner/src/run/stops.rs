//! When a run stops by itself: a term that is not finite (the run diverged), or a
//! discriminator whose loss stays at its floor of zero (it wins outright and the generator
//! gets no signal). Both name the step and the last good checkpoint, which the loop never
//! overwrites with the failed step.

use std::path::Path;

use anyhow::{bail, Result};

use crate::config::RunConfig;

pub struct Stops {
    /// The term whose sitting near zero means collapse, with its threshold and patience.
    collapse: Option<(String, f64, u64)>,
    collapsed_for: u64,
}

impl Stops {
    /// `collapse_term` is the model's term bounded below by zero (none for a WGAN critic).
    pub fn new(run: &RunConfig, collapse_term: Option<&str>) -> Self {
        let collapse = collapse_term
            .filter(|_| run.gan.collapse_steps > 0)
            .map(|t| (t.to_string(), run.gan.collapse_loss, run.gan.collapse_steps));
        Self {
            collapse,
            collapsed_for: 0,
        }
    }

    /// Checks one step's terms (`step` 0-based).
    pub fn check(
        &mut self,
        terms: &[(String, f64)],
        step: u64,
        epoch: u64,
        last_checkpoint: &Path,
    ) -> Result<()> {
        if let Some((name, v)) = terms.iter().find(|(_, v)| !v.is_finite()) {
            bail!(
                "training diverged at step {} (epoch {}): {name} is {v}; the last good checkpoint is {}",
                step + 1,
                epoch + 1,
                last_checkpoint.display()
            );
        }
        let Some((term, floor, patience)) = &self.collapse else {
            return Ok(());
        };
        let Some((_, value)) = terms.iter().find(|(n, _)| n == term) else {
            return Ok(());
        };
        // The loss is bounded below by zero; a value at the floor means D wins outright.
        self.collapsed_for = match (0.0..*floor).contains(value) {
            true => self.collapsed_for + 1,
            false => 0,
        };
        if self.collapsed_for >= *patience {
            bail!(
                "the discriminator collapsed at step {} (epoch {}): its {term} stayed below {floor} for {} steps, so the generator gets no signal; the last good checkpoint is {}",
                step + 1,
                epoch + 1,
                self.collapsed_for,
                last_checkpoint.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(d: f64) -> Vec<(String, f64)> {
        vec![("d_loss".to_string(), d), ("g_loss".to_string(), 1.0)]
    }

    #[test]
    fn a_bounded_loss_at_its_floor_stops_and_a_critic_never_does() {
        let mut run = RunConfig::new("dcgan");
        run.gan.collapse_steps = 3;
        run.gan.collapse_loss = 1e-4;
        let ck = Path::new("last.safetensors");
        let mut stops = Stops::new(&run, Some("d_loss"));
        stops.check(&terms(1e-5), 0, 0, ck).unwrap();
        stops.check(&terms(1e-5), 1, 0, ck).unwrap();
        let e = stops.check(&terms(1e-5), 2, 0, ck).unwrap_err().to_string();
        assert!(e.contains("collapsed at step 3"), "{e}");
        // A WGAN critic's loss is negative and unbounded: no collapse term, no stop.
        let mut critic = Stops::new(&run, None);
        for step in 0..10 {
            critic.check(&terms(-50.0), step, 0, ck).unwrap();
        }
        // Negative values of a bounded term are not its floor either.
        let mut stops = Stops::new(&run, Some("d_loss"));
        for step in 0..10 {
            stops.check(&terms(-1.0), step, 0, ck).unwrap();
        }
        let e = stops
            .check(&terms(f64::NAN), 10, 1, ck)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("diverged at step 11 (epoch 2): d_loss is NaN"),
            "{e}"
        );
    }
}
