//! The documents cite files that exist: every relative link of the README, ARCHITECTURE.md,
//! docs/ and the model cards, and every repository path they quote in backticks
//! (`crates/...`, `scripts/...`, `models/...`, `tests/...`, `docs/...`, `data/...`).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for dir in ["models", "docs", "data/mnist"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    docs
}

/// `[text](target)` targets that are files of the repository (not web addresses or anchors).
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or_default();
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external {
            out.push(target.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// Backticked repository paths: under a top folder of the repository, and no placeholders.
fn quoted_paths(text: &str) -> Vec<String> {
    let tops = ["crates/", "scripts/", "models/", "tests/", "docs/", "data/"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| tops.iter().any(|p| t.starts_with(p)))
        .filter(|t| {
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        })
        .filter(|t| !t.contains("NAME") && !t.contains("..."))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_cited_file_exists() {
    let root = root();
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for link in links(&text) {
            if !dir.join(&link).exists() {
                missing.push(format!("{}: link {link}", doc.display()));
            }
        }
        for path in quoted_paths(&text) {
            if !root.join(&path).exists() {
                missing.push(format!("{}: `{path}`", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documents cite missing files:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checks_see_links_and_paths() {
    let text =
        "see [cards](models/x.md#a), [web](https://a.b/c), `crates/a/b.rs`, `models/NAME.toml`";
    assert_eq!(links(text), ["models/x.md"]);
    assert_eq!(quoted_paths(text), ["crates/a/b.rs"]);
}
