//! `genzoo bench`: the workloads of docs/BENCHMARKS.md on any device. Each training workload is one
//! full step of the model's own (`Trainable::train_step`; StarGAN's five critic iterations) on
//! random data of the stated shape (binary for models of binary pixels, uniform intensities for
//! GANs, random labels and second domain where the model reads them): 2 warm-up steps, then the
//! mean of N steps; sampling workloads time a whole run. Reported: images/s, ms/step, and the
//! peak resident memory while the workload ran (Linux).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use layers::kernels::precision;
use layers::step::{LabelSpec, StepContext, StepProgress};
use layers::{Batch, Labels, Model, Rng, Values};
use serde::Serialize;

use crate::config::RunConfig;
use crate::run::checkpoint::build_model;

/// A workload of docs/BENCHMARKS.md.
#[derive(Debug)]
pub struct Workload {
    pub name: &'static str,
    /// The genzoo model it runs, and `[model_config]` keys that differ from the defaults.
    pub model: &'static str,
    pub config: &'static [(&'static str, i64)],
    pub batch: usize,
    pub lr: f64,
    /// Adam's betas where the workload's differ from the run file defaults.
    pub betas: Option<(f64, f64)>,
    pub kind: WorkloadKind,
    /// Model steps one timed step takes (StarGAN: five critic iterations, the fifth with the
    /// generator's step); images/s counts every batch they read.
    pub iterations: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// One training step of the model's own (`Trainable::train_step`): for a likelihood model
    /// one optimiser step on its objective, for a GAN a discriminator step on real and
    /// detached fake images and a generator step.
    TrainStep,
    /// A whole sampling run with the model's incremental sampler.
    Sample,
    /// A whole sampling run with the reference loop (the full network per pixel).
    SampleReference,
    /// Not built yet.
    Missing,
}

pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "dcgan",
        model: "dcgan",
        config: &[],
        batch: 64,
        lr: 2e-4,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "vae",
        model: "vae",
        config: &[],
        batch: 128,
        lr: 1e-3,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "pixelcnn",
        model: "pixelcnn",
        config: &[],
        batch: 32,
        lr: 1e-3,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "pixelcnn_sample",
        model: "pixelcnn",
        config: &[],
        batch: 16,
        lr: 0.0,
        betas: None,
        kind: WorkloadKind::Sample,
        iterations: 1,
    },
    Workload {
        name: "pixelcnn_sample_naive",
        model: "pixelcnn",
        config: &[],
        batch: 16,
        lr: 0.0,
        betas: None,
        kind: WorkloadKind::SampleReference,
        iterations: 1,
    },
    Workload {
        name: "nade",
        model: "nade",
        config: &[("hidden", 500)],
        batch: 128,
        lr: 1e-3,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "rowlstm",
        model: "row-lstm",
        config: &[("hidden", 16), ("layers", 7), ("head_hidden", 32)],
        batch: 16,
        lr: 1e-3,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "diagbilstm",
        model: "diagonal-bilstm",
        config: &[("hidden", 16), ("layers", 7), ("head_hidden", 32)],
        batch: 16,
        lr: 1e-3,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "cyclegan",
        model: "cyclegan",
        config: &[
            ("image_size", 32),
            ("channels", 1),
            ("ngf", 32),
            ("ndf", 32),
            ("n_blocks", 6),
            ("n_layers_d", 2),
        ],
        batch: 8,
        lr: 2e-4,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
    Workload {
        name: "stargan",
        model: "stargan",
        config: &[
            ("image_size", 32),
            ("channels", 3),
            ("c_dim", 3),
            ("g_conv_dim", 32),
            ("d_conv_dim", 32),
            ("g_repeat_num", 3),
            ("d_repeat_num", 4),
        ],
        batch: 16,
        lr: 1e-4,
        betas: None,
        kind: WorkloadKind::TrainStep,
        iterations: 5,
    },
    Workload {
        // The final stage: training starts there, alpha 1.
        name: "progan",
        model: "progan",
        config: &[("resolution", 32), ("initial_resolution", 32)],
        batch: 64,
        lr: 1e-3,
        betas: Some((0.0, 0.99)),
        kind: WorkloadKind::TrainStep,
        iterations: 1,
    },
];

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub workload: String,
    pub device: String,
    /// What the convolutions and dense layers computed in (`--dtype`).
    pub dtype: String,
    pub threads: usize,
    pub batch: usize,
    pub steps: usize,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    /// Peak resident memory of the process during the workload, in MiB (None off Linux).
    pub peak_mib: Option<f64>,
}

/// Resets the kernel's peak-RSS mark for this process (Linux); the next read gives the peak
/// since now.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A batch of random data as the model's spec asks: binary images for a model of binary
/// values, uniform intensities otherwise, random labels and a random second domain.
fn random_batch(model: &dyn Model, n: usize, device: &Device) -> Result<Batch> {
    let spec = model.data_spec();
    let mut rng = Rng::new(0);
    let [c, h, w] = spec.shape;
    let image = |rng: &mut Rng| -> Result<Tensor> {
        let u = rng.uniform((n, c, h, w), device)?;
        Ok(match model.values() {
            Values::Binary => u.ge(0.5)?.to_dtype(DType::F32)?,
            Values::Intensities => u,
        })
    };
    let images = image(&mut rng)?;
    let labels = match spec.labels {
        LabelSpec::None => None,
        LabelSpec::Classes(k) => {
            let l: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
            Some(Labels::Classes(Tensor::new(l, device)?))
        }
        LabelSpec::Attributes(k) => Some(Labels::Attributes(
            rng.uniform((n, k), device)?.ge(0.5)?.to_dtype(DType::F32)?,
        )),
    };
    let domain_b = match spec.two_domains {
        true => Some(image(&mut rng)?),
        false => None,
    };
    Ok(Batch {
        images,
        labels,
        domain_b,
        captions: None,
        patches: None,
    })
}

pub fn run_workload(w: &Workload, device: &Device, steps: usize) -> Result<BenchResult> {
    if w.kind == WorkloadKind::Missing {
        bail!(
            "workload `{}` needs model `{}`, which is not built yet",
            w.name,
            w.model
        );
    }
    let mut run = RunConfig::new(w.model);
    run.train.lr = w.lr;
    if let Some((beta1, beta2)) = w.betas {
        run.train.beta1 = beta1;
        run.train.beta2 = beta2;
    }
    for (k, v) in w.config {
        run.model_config
            .insert((*k).into(), toml::Value::Integer(*v));
    }
    let (mut model, varmap, run) = build_model(&run, device)?;
    if model.needs_second_order() {
        layers::gan::enable_second_order_gradients()?;
    }
    let mut optimizers = crate::run::optimizers(model.as_ref(), &varmap, &run)?;
    reset_peak_memory();
    let (seconds, steps_run) = match w.kind {
        WorkloadKind::TrainStep => {
            let batch = random_batch(model.as_ref(), w.batch, device)?;
            let mut step_index = 0;
            let step = || -> Result<()> {
                for _ in 0..w.iterations {
                    let mut take = |_: u64| Ok(batch.clone());
                    let progress = StepProgress {
                        step: step_index,
                        total_steps: u64::MAX,
                        steps_per_epoch: u64::MAX,
                        images_per_step: (w.batch as u64) * model.batches_per_step(),
                    };
                    let per_step = model.batches_per_step();
                    let mut ctx = StepContext::new(
                        progress,
                        Rng::new(1),
                        &mut take,
                        per_step,
                        &mut optimizers,
                    );
                    model.train_step(&mut ctx)?;
                    step_index += 1;
                }
                device.synchronize()?;
                Ok(())
            };
            (timed(step, steps)?, steps)
        }
        WorkloadKind::Sample | WorkloadKind::SampleReference => {
            let start = Instant::now();
            let mut rng = Rng::new(2);
            let images = if w.kind == WorkloadKind::Sample {
                model.sample(w.batch, &mut rng)?
            } else {
                model.sample_reference(w.batch, &mut rng)?
            };
            images.to_device(&Device::Cpu)?;
            (start.elapsed().as_secs_f64(), 1)
        }
        WorkloadKind::Missing => unreachable!(),
    };
    Ok(result(w, device, seconds, steps_run))
}

/// Seconds for `steps` calls of `step` after 2 warm-up calls.
fn timed(mut step: impl FnMut() -> Result<()>, steps: usize) -> Result<f64> {
    for _ in 0..2 {
        step()?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn result(w: &Workload, device: &Device, seconds: f64, steps: usize) -> BenchResult {
    BenchResult {
        workload: w.name.into(),
        device: layers::device::device_name(device),
        dtype: match w.kind {
            // The incremental samplers compute on the host in f32 whatever --dtype says.
            WorkloadKind::Sample => "f32".into(),
            _ => format!("{:?}", precision::compute_dtype()).to_lowercase(),
        },
        threads: rayon_threads(),
        batch: w.batch,
        steps,
        images_per_sec: (w.batch * w.iterations * steps) as f64 / seconds,
        ms_per_step: 1000.0 * seconds / steps as f64,
        peak_mib: peak_memory_mib(),
    }
}

/// Runs the named workloads (all by default), printing a line each or the JSON of all.
pub fn run(workloads: &[String], steps: usize, json: bool, device: &Device) -> Result<()> {
    anyhow::ensure!(steps > 0, "--steps must be positive");
    let chosen: Vec<&Workload> = if workloads.is_empty() {
        WORKLOADS.iter().collect()
    } else {
        workloads.iter().map(|w| find(w)).collect::<Result<_>>()?
    };
    let mut results = Vec::new();
    for w in chosen {
        match run_workload(w, device, steps) {
            Ok(r) => {
                if !json {
                    print_line(&r);
                }
                results.push(r);
            }
            Err(e) => eprintln!("{:<22} skipped: {e:#}", w.name),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

pub fn find(name: &str) -> Result<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| {
        let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
        anyhow::anyhow!(
            "unknown workload `{name}`; the workloads are: {}",
            names.join(", ")
        )
    })
}

pub fn print_line(r: &BenchResult) {
    let mem = r
        .peak_mib
        .map(|m| format!("{m:.0} MiB"))
        .unwrap_or_else(|| "n/a".into());
    println!(
        "{:<22} {:>10.1} img/s {:>11.1} ms/step  peak {:>9}  ({} x {} on {}, {}, {} threads)",
        r.workload,
        r.images_per_sec,
        r.ms_per_step,
        mem,
        r.steps,
        r.batch,
        r.device,
        r.dtype,
        r.threads
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_training_workload_runs_and_missing_ones_say_why() -> Result<()> {
        let r = run_workload(find("vae")?, &Device::Cpu, 1)?;
        assert_eq!((r.batch, r.steps), (128, 1));
        assert!(r.images_per_sec > 0.0 && r.ms_per_step > 0.0);
        let missing = Workload {
            name: "puzzle",
            model: "puzzle-gan",
            config: &[],
            batch: 64,
            lr: 1e-3,
            betas: None,
            kind: WorkloadKind::Missing,
            iterations: 1,
        };
        let e = run_workload(&missing, &Device::Cpu, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not built yet"), "{e}");
        assert!(find("resnet")
            .unwrap_err()
            .to_string()
            .contains("pixelcnn_sample"));
        Ok(())
    }
}
