//! `genzoo list`: every model of the mission, its family, kind, whether it is built, and the
//! trained weights shipped for it in a folder (`models/` of the repository by default).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::registry;
use crate::run::checkpoint::META_MODEL;

pub fn run(json: bool, weights_dir: &Path) -> Result<()> {
    let shipped = shipped_weights(weights_dir);
    let files = |name: &str| shipped.get(name).cloned().unwrap_or_default();
    if json {
        let rows: Vec<_> = registry::MODELS
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "family": m.family, "kind": m.kind, "built": m.is_built(), "summary": m.summary, "shipped": files(m.name)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<13} {:<9} {:<14} {:<56} description",
        "model",
        "family",
        "kind",
        "status",
        format!("weights in {}", weights_dir.display())
    );
    for m in registry::MODELS {
        let status = if m.is_built() {
            "built"
        } else {
            "not built yet"
        };
        let weights = match files(m.name) {
            f if f.is_empty() => "-".to_string(),
            f => f.join(", "),
        };
        println!(
            "{:<16} {:<13} {:<9} {:<14} {:<56} {}",
            m.name,
            m.family,
            m.kind.to_string(),
            status,
            weights,
            m.summary
        );
    }
    Ok(())
}

/// The genzoo weight files in `dir` by the model their metadata names (files without genzoo
/// metadata, such as the digit classifier, and a missing folder give nothing).
fn shipped_weights(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    for path in paths {
        if let Some(model) = model_of(&path) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            found.entry(model).or_default().push(name.into_owned());
        }
    }
    found
}

/// The model a safetensors file's `genzoo.model` metadata names, from its header alone.
fn model_of(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    // The header is JSON of at most a few hundred kilobytes; a larger claim is not ours.
    let len = u64::from_le_bytes(len);
    if len > 16 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(json["__metadata__"][META_MODEL].as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_weights_are_found_by_their_metadata() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let save = |name: &str, model: Option<&str>| -> Result<()> {
            let meta = model.map(|m| {
                std::collections::HashMap::from([(META_MODEL.to_string(), m.to_string())])
            });
            safetensors::serialize_to_file([("w", &t)], meta, &dir.path().join(name))?;
            Ok(())
        };
        save("b.safetensors", Some("vae"))?;
        save("a.safetensors", Some("vae"))?;
        save("classifier.safetensors", None)?;
        std::fs::write(
            dir.path().join("broken.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
        )?;
        std::fs::write(dir.path().join("notes.md"), "vae")?;
        let found = shipped_weights(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found["vae"], vec!["a.safetensors", "b.safetensors"]);
        assert!(shipped_weights(&dir.path().join("missing")).is_empty());
        Ok(())
    }
}
