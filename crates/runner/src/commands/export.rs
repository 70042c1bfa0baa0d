//! `genzoo export`: a checkpoint's weights and metadata without the optimizer or training state
//! (and with `--sampling-only`, without the networks only training needs).

use std::path::Path;

use anyhow::Result;

pub fn run(checkpoint: &Path, out: &Path, averaged: bool, sampling_only: bool) -> Result<()> {
    let e = crate::run::checkpoint::export_weights(checkpoint, out, averaged, sampling_only)?;
    println!(
        "wrote {} ({} tensors; {} optimizer and training-state tensors left out)",
        out.display(),
        e.kept,
        e.dropped
    );
    if sampling_only {
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
