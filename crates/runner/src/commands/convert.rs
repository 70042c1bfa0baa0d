//! `genzoo convert`: PyTorch weights (`.pth`, `.pt`, `.ckpt`, or a plain safetensors file) into
//! a genzoo file that `sample` and `eval` take as it is. The work is in [`crate::convert`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::convert::{self, Input, Request};

#[derive(Args)]
pub struct ConvertCmd {
    /// Checkpoints to convert: one per network or one holding them all (pytorch_GAN_zoo's). A
    /// file may be placed under a network by name: `netG_B=latest_net_G.pth`.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
    /// The genzoo model the weights are for (`genzoo list`).
    #[arg(long)]
    model: String,
    /// A run file for what the weights do not say (`[model_config]` keys, `[data]`); the values
    /// the shapes determine must agree with it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only the state dict under this entry of each file (e.g. `netG` rather than `avgG`).
    #[arg(long)]
    key: Option<String>,
    /// Where to write (default: FILE.genzoo.safetensors beside the first file).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(cmd: ConvertCmd) -> Result<()> {
    let inputs: Vec<Input> = cmd.files.iter().map(|f| Input::parse(f)).collect();
    let out = cmd.out.unwrap_or_else(|| default_out(&inputs[0].path));
    let report = convert::convert(&Request {
        inputs,
        model: cmd.model.clone(),
        config: cmd.config,
        key: cmd.key,
        out: out.clone(),
    })?;
    for line in &report.placed {
        println!("read {line}");
    }
    println!("[model_config]");
    for line in &report.config {
        println!("  {line}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    println!(
        "wrote {} ({}: {} tensors, {} parameters); it loads back as `genzoo sample` and `genzoo \
         eval` read it",
        out.display(),
        cmd.model,
        report.tensors,
        report.parameters
    );
    Ok(())
}

/// `DIR/netG_epoch_24.genzoo.safetensors` for `DIR/netG_epoch_24.pth`.
fn default_out(first: &std::path::Path) -> PathBuf {
    let stem = first
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "converted".into());
    first.with_file_name(format!("{stem}.genzoo.safetensors"))
}
