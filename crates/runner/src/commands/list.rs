//! `genzoo list`: every model of the mission, its family, kind and whether it is built.

use anyhow::Result;

use crate::registry;

pub fn run(json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = registry::MODELS
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "family": m.family, "kind": m.kind, "built": m.is_built(), "summary": m.summary}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<13} {:<9} {:<14} description",
        "model", "family", "kind", "status"
    );
    for m in registry::MODELS {
        let status = if m.is_built() {
            "built"
        } else {
            "not built yet"
        };
        println!(
            "{:<16} {:<13} {:<9} {:<14} {}",
            m.name,
            m.family,
            m.kind.to_string(),
            status,
            m.summary
        );
    }
    Ok(())
}
