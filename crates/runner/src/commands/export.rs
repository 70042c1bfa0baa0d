//! `genzoo export`: a checkpoint's weights and metadata without the optimizer or training state
//! (with `--sampling-only`, without the networks only training needs; with `--half`, its weight
//! matrices in half precision).

use std::path::Path;

use anyhow::Result;

use crate::run::checkpoint::{export_weights, ExportOptions};

pub fn run(checkpoint: &Path, out: &Path, options: ExportOptions) -> Result<()> {
    let e = export_weights(checkpoint, out, options)?;
    println!(
        "wrote {} ({} tensors; {} optimizer and training-state tensors left out)",
        out.display(),
        e.kept,
        e.dropped
    );
    if options.half {
        println!(
            "{} weight matrices and kernels stored in half precision (f16); vectors and state as they were",
            e.halved
        );
    }
    if options.sampling_only {
        match e.omitted.is_empty() {
            true => println!(
                "the model declares no training-only networks (sampling or evaluation reads them all): nothing more left out"
            ),
            false => println!(
                "left out `{}` ({} tensors), which only training uses: the file samples and evaluates, and cannot be resumed",
                e.omitted.join("`, `"),
                e.omitted_tensors
            ),
        }
    }
    Ok(())
}
