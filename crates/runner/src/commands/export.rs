//! `genzoo export`: a checkpoint's weights and metadata without the optimizer or training state.

use std::path::Path;

use anyhow::Result;

pub fn run(checkpoint: &Path, out: &Path) -> Result<()> {
    let (kept, dropped) = crate::run::checkpoint::export_weights(checkpoint, out)?;
    println!(
        "wrote {} ({kept} tensors; {dropped} optimizer and training-state tensors left out)",
        out.display()
    );
    Ok(())
}
