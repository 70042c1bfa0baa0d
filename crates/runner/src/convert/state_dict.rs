//! Where the weights are inside a checkpoint: state dicts at its top level or under a wrapper's
//! entries (`state_dict`, `netG`, `avgG`, ...), with the `module.` that `nn.DataParallel` puts in
//! front of every key removed. Optimiser and scheduler state is passed over.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::torch::Value;

/// One state dict of a file.
#[derive(Debug)]
pub struct StateDict {
    pub file: PathBuf,
    /// Its entry in the file, dotted (`netG`, `state_dict`); empty at the top level.
    pub entry: String,
    /// The genzoo network the user named for the file (`netG_B=FILE`).
    pub named: Option<String>,
    /// Tensors under the reference code's keys, `module.` removed.
    pub tensors: Vec<(String, Tensor)>,
    /// Keys `module.` was removed from.
    pub stripped: usize,
}

impl StateDict {
    /// `FILE` or `FILE[entry]`, for messages.
    pub fn origin(&self) -> String {
        let file = file_name(&self.file);
        match self.entry.as_str() {
            "" => file,
            entry => format!("{file}[{entry}]"),
        }
    }

    /// The entry's last part (`avgG` of `models.avgG`).
    pub fn entry_name(&self) -> &str {
        self.entry.rsplit('.').next().unwrap_or("")
    }

    /// The file's name without its extension (`latest_net_G_A`).
    pub fn file_stem(&self) -> String {
        self.file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.iter().any(|(k, _)| k == key)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.dims())
    }
}

pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Entries that hold training state rather than weights.
fn is_training_state(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("optim") || n.contains("scheduler") || n == "_metadata"
}

/// The state dicts of a file's content: every dict holding tensors, at any depth, except under
/// optimiser or scheduler entries (which are returned by name, as passed over). With `key`, only
/// the state dicts under that entry.
pub fn find(
    file: &Path,
    root: Value,
    named: Option<&str>,
    key: Option<&str>,
) -> Result<(Vec<StateDict>, Vec<String>)> {
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    match root {
        Value::Dict(entries) => collect(entries, "", &mut found, &mut skipped),
        Value::Tensor(_) => bail!(
            "{}: holds a single tensor, not a state dict",
            file.display()
        ),
        Value::Other(what) => bail!(
            "{}: holds {what}, not a state dict nor a module (save its `state_dict()` instead)",
            file.display()
        ),
    }
    if found.is_empty() {
        bail!(
            "{}: no tensors in it{}",
            file.display(),
            match skipped.is_empty() {
                true => String::new(),
                false => format!(" but training state ({})", skipped.join(", ")),
            }
        );
    }
    if let Some(key) = key {
        let all: Vec<String> = found.iter().map(|(e, _): &(String, _)| e.clone()).collect();
        found.retain(|(entry, _)| entry == key || entry.ends_with(&format!(".{key}")));
        if found.is_empty() {
            bail!(
                "{}: no state dict under `{key}`; it holds {}",
                file.display(),
                all.iter()
                    .map(|e| if e.is_empty() {
                        "one at the top level".into()
                    } else {
                        format!("`{e}`")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let dicts = found
        .into_iter()
        .map(|(entry, tensors)| {
            let mut stripped = 0;
            let tensors = tensors
                .into_iter()
                .map(|(k, t)| match k.strip_prefix("module.") {
                    Some(rest) => {
                        stripped += 1;
                        (rest.to_string(), t)
                    }
                    None => (k, t),
                })
                .collect();
            StateDict {
                file: file.to_path_buf(),
                entry,
                named: named.map(str::to_string),
                tensors,
                stripped,
            }
        })
        .collect();
    Ok((dicts, skipped))
}

type Found = Vec<(String, Vec<(String, Tensor)>)>;

fn collect(
    entries: Vec<(String, Value)>,
    path: &str,
    found: &mut Found,
    skipped: &mut Vec<String>,
) {
    let mut tensors = Vec::new();
    for (name, value) in entries {
        let at = match path {
            "" => name.clone(),
            _ => format!("{path}.{name}"),
        };
        match value {
            Value::Tensor(t) => tensors.push((name, t)),
            Value::Dict(_) | Value::Other(_) if is_training_state(&name) => {
                if name != "_metadata" {
                    skipped.push(at);
                }
            }
            Value::Dict(inner) => collect(inner, &at, found, skipped),
            Value::Other(_) => {}
        }
    }
    if !tensors.is_empty() {
        found.push((path.to_string(), tensors));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t() -> Value {
        Value::Tensor(Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap())
    }

    fn dict(entries: Vec<(&str, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    #[test]
    fn finds_nested_state_dicts_and_strips_data_parallel() -> Result<()> {
        let root = dict(vec![
            ("config", Value::Other("an object".into())),
            (
                "netG",
                dict(vec![
                    ("module.main.0.weight", t()),
                    ("module.main.1.weight", t()),
                ]),
            ),
            ("avgG", dict(vec![("main.0.weight", t())])),
            (
                "optimizer",
                dict(vec![("state", dict(vec![("exp_avg", t())]))]),
            ),
        ]);
        let (dicts, skipped) = find(Path::new("a.pth"), root, None, None)?;
        let entries: Vec<&str> = dicts.iter().map(|d| d.entry.as_str()).collect();
        assert_eq!(entries, ["netG", "avgG"]);
        assert_eq!(dicts[0].stripped, 2);
        assert!(dicts[0].has("main.1.weight"));
        assert_eq!(dicts[0].origin(), "a.pth[netG]");
        assert_eq!(skipped, ["optimizer"]);
        Ok(())
    }

    #[test]
    fn a_key_picks_one_entry_or_says_what_there_is() -> Result<()> {
        let root = || {
            dict(vec![
                ("netG", dict(vec![("w", t())])),
                ("avgG", dict(vec![("w", t())])),
            ])
        };
        let (dicts, _) = find(Path::new("a.pth"), root(), None, Some("avgG"))?;
        assert_eq!(dicts.len(), 1);
        assert_eq!(dicts[0].entry_name(), "avgG");
        let e = find(Path::new("a.pth"), root(), None, Some("ema"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no state dict under `ema`") && e.contains("`netG`, `avgG`"),
            "{e}"
        );
        let e = find(
            Path::new("a.pth"),
            Value::Other("a list".into()),
            None,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("holds a list, not a state dict"),
            "{e}"
        );
        Ok(())
    }
}
