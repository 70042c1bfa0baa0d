//! `genzoo export`: a checkpoint's weights and metadata without the optimizer or training state.

use std::path::Path;

use anyhow::Result;

pub fn run(checkpoint: &Path, out: &Path, averaged: bool) -> Result<()> {
    let (kept, dropped) = crate::run::checkpoint::export_weights(checkpoint, out, averaged)?;
    println!(
        "wrote {} ({kept} tensors; {dropped} optimizer and training-state tensors left out)",
        out.display()
    );
    Ok(())
}
