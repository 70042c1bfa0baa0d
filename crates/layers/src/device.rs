//! `--device cpu|cuda[:N]|metal|auto`, with an error that names the missing build feature.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Runs Candle's own elementwise work on the calling thread unless `CANDLE_NUM_THREADS` says
/// otherwise. Call before the first tensor operation.
///
/// Why: Candle 0.11 splits large elementwise ops over a pool whose caller spins until every
/// worker is done. Whenever a worker is not running (another process on the core, or gemm's
/// and genzoo's own rayon threads), the caller spins for the rest of a scheduler slice. With
/// one other job on this 2-core machine, `genzoo bench` measured vae 2,206 -> 4,773 img/s and
/// dcgan 51.0 -> 72.3 img/s with the pool off. The heavy kernels (gemm, genzoo's convolution,
/// normalisation and recurrence ops) keep their own rayon parallelism.
pub fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Runs `f` on a worker of a Rayon pool with one thread per core (`RAYON_NUM_THREADS`
/// overrides), so every parallel section inside it (gemm's, genzoo's kernels) shares that pool.
///
/// Why: run from `main`, the step's serial work is a third thread beside the two workers of the
/// global pool; between parallel sections the idle workers spin and yield, and on 2 cores one of
/// them takes the core from the serial thread (17% of a `genzoo bench vae` profile was the
/// scheduler). On a worker, the serial work is one of the two threads, and it joins in the
/// parallel sections itself. Falls back to running `f` directly if the pool cannot be built.
pub fn run_on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = candle_core::utils::get_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("genzoo-compute-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Parses a device name. `auto` picks CUDA, then Metal, then the CPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0)?)
            } else if candle_core::utils::metal_is_available() {
                Ok(Device::new_metal(0)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                bail!("device `metal` asked for, but this genzoo was built without Metal: rebuild with `cargo build --release --features metal`");
            }
            Device::new_metal(0).context("could not open the Metal device")
        }
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal = match name.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().with_context(|| {
                    format!("device `{name}`: expected `cuda` or `cuda:N` with N a GPU index")
                })?,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("device `{name}` asked for, but this genzoo was built without CUDA: rebuild with `cargo build --release --features cuda` (or `cudnn`)");
            }
            Device::new_cuda(ordinal)
                .with_context(|| format!("could not open CUDA device {ordinal}"))
        }
        other => bail!("unknown device `{other}`: expected cpu, cuda, cuda:N, metal or auto"),
    }
}

/// A short name for logs and checkpoints.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_auto() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").is_ok());
        assert!(parse_device("auto").is_ok());
    }

    #[test]
    fn unknown_or_malformed_devices_are_errors() {
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device `tpu`"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:N"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_the_feature() {
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }

    #[cfg(not(feature = "metal"))]
    #[test]
    fn metal_without_the_feature_names_the_feature() {
        let e = parse_device("metal").unwrap_err().to_string();
        assert!(e.contains("--features metal"), "{e}");
    }
}
