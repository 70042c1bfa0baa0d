//! `genzoo inspect`: what a safetensors file holds.

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

use crate::run::checkpoint::{load_checkpoint, omitted_networks, OPTIMIZER_PREFIX};

#[derive(Debug, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub file: String,
    pub tensors: Vec<TensorInfo>,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Scalars in the model's tensors (optimizer state excluded).
    pub parameters: usize,
    pub optimizer_values: usize,
    /// Networks the file left out as only training uses them (`export --sampling-only`).
    pub omitted: Vec<String>,
}

pub fn inspect(path: &Path) -> Result<Inspection> {
    let ck = load_checkpoint(path, &Device::Cpu)?;
    let mut tensors: Vec<TensorInfo> = ck
        .tensors
        .iter()
        .map(|(name, t)| TensorInfo {
            name: name.clone(),
            dtype: format!("{:?}", t.dtype()).to_lowercase(),
            shape: t.dims().to_vec(),
            count: t.elem_count(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let is_opt = |n: &str| n.starts_with(&format!("{OPTIMIZER_PREFIX}."));
    Ok(Inspection {
        file: path.display().to_string(),
        parameters: ck.parameter_count(|n| !is_opt(n)),
        optimizer_values: ck.parameter_count(is_opt),
        omitted: omitted_networks(&ck),
        tensors,
        metadata: ck.metadata,
    })
}

/// Prints what `path` holds, or its JSON.
pub fn run(path: &Path, json: bool) -> Result<()> {
    let i = inspect(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print!("{}", render(&i));
    }
    Ok(())
}

/// The table `genzoo inspect` prints: tensors, counts and metadata (long values cut short).
pub fn render(i: &Inspection) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let width = i
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(out, "{}\n", i.file);
    let _ = writeln!(
        out,
        "{:<width$}  {:<6} {:<20} {:>12}",
        "tensor", "dtype", "shape", "values"
    );
    for t in &i.tensors {
        let _ = writeln!(
            out,
            "{:<width$}  {:<6} {:<20} {:>12}",
            t.name,
            t.dtype,
            format!("{:?}", t.shape),
            t.count
        );
    }
    let _ = writeln!(
        out,
        "\nparameters: {} in {} tensors",
        i.parameters,
        i.tensors
            .iter()
            .filter(|t| !t.name.starts_with(OPTIMIZER_PREFIX))
            .count()
    );
    if i.optimizer_values > 0 {
        let _ = writeln!(out, "optimizer state: {} values", i.optimizer_values);
    }
    if !i.omitted.is_empty() {
        let _ = writeln!(
            out,
            "left out (training only, --sampling-only): `{}`: samples and evaluates, cannot be resumed",
            i.omitted.join("`, `")
        );
    }
    if !i.metadata.is_empty() {
        let _ = writeln!(out, "\nmetadata:");
        for (k, v) in &i.metadata {
            // Cut at a character boundary: metadata is any UTF-8 the file's writer chose.
            let shown = match (0..=200).rev().find(|&i| v.is_char_boundary(i)) {
                Some(cut) if v.len() > 200 => format!("{}...", &v[..cut]),
                _ => v.clone(),
            };
            let _ = writeln!(out, "  {k} = {shown}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long metadata value of multi-byte characters is cut at a character boundary: byte 200
    /// inside a character was a panic.
    #[test]
    fn long_multibyte_metadata_is_cut_between_characters() {
        let value = "€".repeat(100);
        let i = Inspection {
            file: "x.safetensors".into(),
            tensors: vec![],
            metadata: [("note".to_string(), value.clone())].into(),
            parameters: 0,
            optimizer_values: 0,
            omitted: vec![],
        };
        let text = render(&i);
        assert!(
            text.contains(&format!("  note = {}...", "€".repeat(66))),
            "{text}"
        );
    }
}
