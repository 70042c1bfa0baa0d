//! `genzoo params`: how many parameters each way of modelling an n-pixel binary image needs,
//! from the full joint table (2^n - 1) and the fully independent model (n) to each model.

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

use crate::config::RunConfig;
use crate::registry;
use crate::run::checkpoint::build_model;

#[derive(Debug, Serialize)]
pub struct ParamsRow {
    pub model: String,
    /// Parameters stored (for the table: its size, as text when it does not fit).
    pub stored: String,
    /// Parameters that affect the output (masks can hide stored ones).
    pub effective: String,
    pub note: String,
}

/// `2^n - 1` as text: exact while it fits in 128 bits, else in scientific notation.
fn full_table(n: usize) -> String {
    if n < 128 {
        ((1u128 << n) - 1).to_string()
    } else {
        let log10 = n as f64 * std::f64::consts::LOG10_2;
        format!(
            "2^{n} - 1 ~ {:.2}e{}",
            10f64.powf(log10.fract()),
            log10.floor()
        )
    }
}

/// Rows for `side x side` binary images: the two baselines, then every built explicit model
/// with `image_size = side`.
pub fn params_table(side: usize) -> Result<Vec<ParamsRow>> {
    let n = side * side;
    let mut rows = vec![
        ParamsRow {
            model: "full joint table".into(),
            stored: full_table(n),
            effective: full_table(n),
            note: "one probability per image, minus one".into(),
        },
        ParamsRow {
            model: "independent pixels".into(),
            stored: n.to_string(),
            effective: n.to_string(),
            note: "one Bernoulli per pixel".into(),
        },
    ];
    for entry in registry::MODELS
        .iter()
        .filter(|m| m.is_built() && m.kind == layers::ModelKind::Explicit)
    {
        let mut run = RunConfig::new(entry.name);
        run.model_config
            .insert("image_size".into(), toml::Value::Integer(side as i64));
        let (model, varmap, _) = build_model(&run, &Device::Cpu)?;
        let stored: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        let effective = model.effective_parameters().unwrap_or(stored);
        rows.push(ParamsRow {
            model: entry.name.into(),
            stored: stored.to_string(),
            effective: effective.to_string(),
            note: entry.summary.into(),
        });
    }
    Ok(rows)
}

/// Prints the table for `side x side` images, or its JSON.
pub fn run(side: usize, json: bool) -> Result<()> {
    anyhow::ensure!(side >= 2, "--size must be at least 2");
    let rows = params_table(side)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print(side, &rows);
    }
    Ok(())
}

pub fn print(side: usize, rows: &[ParamsRow]) {
    println!(
        "parameters for {side}x{side} binary images (n = {})",
        side * side
    );
    println!();
    println!("{:<20} {:>26} {:>26}  note", "model", "stored", "effective");
    for r in rows {
        println!(
            "{:<20} {:>26} {:>26}  {}",
            r.model, r.stored, r.effective, r.note
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_formulas() -> Result<()> {
        let rows = params_table(4)?;
        let get = |m: &str| rows.iter().find(|r| r.model == m).unwrap();
        assert_eq!(get("full joint table").stored, "65535");
        assert_eq!(get("independent pixels").stored, "16");
        // FVSBN: n(n-1)/2 weights that count, n biases; n^2 + n stored.
        assert_eq!(get("fvsbn").effective, (16 * 15 / 2 + 16).to_string());
        assert_eq!(get("fvsbn").stored, (16 * 16 + 16).to_string());
        // NADE with H = 500: W and V (2nH), c (H), b (n).
        assert_eq!(get("nade").stored, (2 * 16 * 500 + 500 + 16).to_string());
        assert_eq!(full_table(784), "2^784 - 1 ~ 1.02e236");
        Ok(())
    }
}
