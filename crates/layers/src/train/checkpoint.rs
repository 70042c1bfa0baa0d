//! Safetensors checkpoints: tensors under the reference PyTorch names plus string metadata,
//! written atomically and read back with errors that name the file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

/// Tensors and metadata of one safetensors file.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Reads `path`, with every failure naming the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes =
            fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid safetensors file ({e}); it may be truncated or of another format",
                path.display()
            )
        })?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .with_context(|| format!("cannot read the tensors of {}", path.display()))?;
        Ok(Self { tensors, metadata })
    }

    /// Writes to a temporary file beside `path`, syncs it, then renames it over `path`: a
    /// crash at any moment leaves either the old file or the new one, never a torn one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let data: Vec<(&str, Tensor)> = names
            .iter()
            .map(|n| -> Result<(&str, Tensor)> {
                // safetensors wants contiguous CPU data.
                let t = self.tensors[*n].to_device(&Device::Cpu)?.contiguous()?;
                Ok((n.as_str(), t))
            })
            .collect::<Result<_>>()?;
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let bytes = safetensors::serialize(data, Some(metadata))
            .with_context(|| format!("cannot serialise checkpoint {}", path.display()))?;
        write_atomically(path, &bytes)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// A metadata entry that must be there.
    pub fn require_meta(&self, key: &str, path: &Path) -> Result<&str> {
        self.meta(key).with_context(|| {
            format!(
                "{} has no `{key}` metadata: it was not written by genzoo",
                path.display()
            )
        })
    }

    /// Number of scalar parameters, counting only tensors whose names pass `keep`.
    pub fn parameter_count(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.tensors
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(_, t)| t.elem_count())
            .sum()
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_path(path);
    let result = (|| -> Result<()> {
        let mut file = fs::File::create(&tmp).with_context(|| {
            format!(
                "cannot create {} (is the directory writable?)",
                tmp.display()
            )
        })?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The variables of `varmap` as named tensors.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Copies `tensors` into the existing variables of `varmap`. Every variable must be present
/// with its exact shape; the error names the file, the tensor, and what was expected and found.
/// Returns the names in `tensors` that no variable used (optimizer state, foreign extras).
pub fn load_into_varmap(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> Result<Vec<String>> {
    load_into_varmap_except(varmap, tensors, source, |_| false)
}

/// [`load_into_varmap`], where the variables `may_lack` accepts may be absent from `tensors`
/// (networks a file says it left out): those keep their values. Any other absence, and any
/// present tensor of the wrong shape, is still an error naming it.
pub fn load_into_varmap_except(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
    may_lack: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut missing = Vec::new();
    for (name, var) in data.iter() {
        let Some(found) = tensors.get(name) else {
            if !may_lack(name) {
                missing.push(name.clone());
            }
            continue;
        };
        if found.shape() != var.shape() {
            bail!(
                "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                source.display(),
                found.dims(),
                var.dims()
            );
        }
        if !found.dtype().is_float() {
            bail!(
                "{}: tensor `{name}` has dtype {:?}, expected a floating-point type",
                source.display(),
                found.dtype()
            );
        }
        var.set(&found.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    if !missing.is_empty() {
        missing.sort();
        bail!(
            "{}: missing tensor(s) {} that the model needs",
            source.display(),
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut unused: Vec<String> = tensors
        .keys()
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    unused.sort();
    Ok(unused)
}

/// The variables of `varmap` whose names start with `prefix`.
pub fn vars_with_prefix(varmap: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    fn sample() -> Result<Checkpoint> {
        let dev = Device::Cpu;
        let mut ck = Checkpoint::default();
        ck.tensors.insert(
            "fc1.weight".into(),
            Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?,
        );
        ck.tensors
            .insert("fc1.bias".into(), Tensor::new(&[1f32, 2.0], &dev)?);
        ck.metadata.insert("genzoo.model".into(), "vae".into());
        Ok(ck)
    }

    #[test]
    fn round_trip_keeps_tensors_and_metadata() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.safetensors");
        sample()?.save(&path)?;
        let back = Checkpoint::load(&path, &Device::Cpu)?;
        assert_eq!(back.meta("genzoo.model"), Some("vae"));
        assert_eq!(
            back.tensors["fc1.weight"].to_vec2::<f32>()?,
            vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]
        );
        assert_eq!(back.parameter_count(|_| true), 8);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn truncated_and_garbage_files_are_named_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.safetensors");
        sample()?.save(&path)?;
        let bytes = fs::read(&path)?;
        for (name, content) in [
            ("truncated.safetensors", bytes[..bytes.len() - 5].to_vec()),
            ("header-only.safetensors", bytes[..20].to_vec()),
            (
                "garbage.safetensors",
                b"this is not a checkpoint at all".to_vec(),
            ),
            ("empty.safetensors", vec![]),
        ] {
            let p = dir.path().join(name);
            fs::write(&p, content)?;
            let e = format!("{:#}", Checkpoint::load(&p, &Device::Cpu).unwrap_err());
            assert!(e.contains(name), "{e}");
        }
        let e = format!(
            "{:#}",
            Checkpoint::load(&dir.path().join("nope"), &Device::Cpu).unwrap_err()
        );
        assert!(
            e.contains("cannot read checkpoint") && e.contains("nope"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn failed_write_keeps_the_previous_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ck.safetensors");
        sample()?.save(&path)?;
        let before = fs::read(&path)?;
        // The next save of the same file fails on the way: its temporary file cannot be created
        // (a directory stands there). A writer that wrote `path` in place would succeed and
        // overwrite it; this one must fail and leave the previous checkpoint as it was.
        let blocked = temporary_path(&path);
        fs::create_dir(&blocked)?;
        fs::write(blocked.join("x"), b"x")?;
        let mut other = sample()?;
        other.metadata.insert("genzoo.step".into(), "2".into());
        assert!(other.save(&path).is_err());
        assert_eq!(fs::read(&path)?, before);
        fs::remove_dir_all(&blocked)?;
        // A failed rename (the target is a non-empty directory) leaves no temporary file.
        let target = dir.path().join("target");
        fs::create_dir(&target)?;
        fs::write(target.join("x"), b"x")?;
        assert!(sample()?.save(&target).is_err());
        let leftovers: Vec<_> = fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        // And a save that succeeds replaces the file.
        other.save(&path)?;
        assert_ne!(fs::read(&path)?, before);
        Ok(())
    }

    #[test]
    fn loading_checks_names_and_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        varmap
            .data()
            .lock()
            .unwrap()
            .insert("fc1.weight".into(), Var::zeros((2, 3), DType::F32, &dev)?);
        let ck = sample()?;
        let unused = load_into_varmap(&varmap, &ck.tensors, Path::new("x.safetensors"))?;
        assert_eq!(unused, vec!["fc1.bias".to_string()]);
        varmap
            .data()
            .lock()
            .unwrap()
            .insert("fc2.weight".into(), Var::zeros((2, 3), DType::F32, &dev)?);
        let e = load_into_varmap(&varmap, &ck.tensors, Path::new("x.safetensors")).unwrap_err();
        assert!(
            e.to_string().contains("missing tensor(s) `fc2.weight`"),
            "{e}"
        );
        let mut wrong = ck.tensors.clone();
        wrong.insert(
            "fc1.weight".into(),
            Tensor::zeros((3, 2), DType::F32, &dev)?,
        );
        wrong.insert(
            "fc2.weight".into(),
            Tensor::zeros((2, 3), DType::F32, &dev)?,
        );
        let e = load_into_varmap(&varmap, &wrong, Path::new("x.safetensors")).unwrap_err();
        assert!(
            e.to_string()
                .contains("`fc1.weight` has shape [3, 2], the model expects [2, 3]"),
            "{e}"
        );
        Ok(())
    }

    /// What a checkpoint writer collects: every variable by name, or those of one network (its
    /// optimiser's parameter group), sorted; and metadata a reader requires.
    #[test]
    fn variables_by_name_and_by_prefix_and_required_metadata() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        for (name, value) in [
            ("generator.b", 1f32),
            ("generator.a", 2.0),
            ("discriminator.a", 3.0),
        ] {
            let var = Var::from_tensor(&Tensor::new(&[value], &dev)?)?;
            varmap.data().lock().unwrap().insert(name.into(), var);
        }
        let all = varmap_tensors(&varmap);
        assert_eq!(all.len(), 3);
        assert_eq!(all["discriminator.a"].to_vec1::<f32>()?, vec![3.0]);
        let names = |prefix| -> Vec<String> {
            vars_with_prefix(&varmap, prefix)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names("generator."), vec!["generator.a", "generator.b"]);
        assert_eq!(names("discriminator."), vec!["discriminator.a"]);
        assert!(names("ema.").is_empty());

        let ck = sample()?;
        let path = Path::new("runs/x.safetensors");
        assert_eq!(ck.require_meta("genzoo.model", path)?, "vae");
        let e = ck
            .require_meta("genzoo.step", path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runs/x.safetensors") && e.contains("`genzoo.step`"),
            "{e}"
        );
        Ok(())
    }

    /// Variables the caller lets be absent keep their values; every other absence is still
    /// named, and a present tensor is still checked.
    #[test]
    fn only_the_variables_let_off_may_be_absent() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let mut data = varmap.data().lock().unwrap();
        data.insert("fc1.weight".into(), Var::zeros((2, 3), DType::F32, &dev)?);
        data.insert("d.weight".into(), Var::ones(4, DType::F32, &dev)?);
        data.insert("e.weight".into(), Var::ones(4, DType::F32, &dev)?);
        drop(data);
        let ck = sample()?;
        let path = Path::new("x.safetensors");
        let e = load_into_varmap_except(&varmap, &ck.tensors, path, |n| n.starts_with("d."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing tensor(s) `e.weight`"), "{e}");
        assert!(!e.contains("d.weight"), "{e}");
        let let_off = |n: &str| n.starts_with("d.") || n.starts_with("e.");
        load_into_varmap_except(&varmap, &ck.tensors, path, let_off)?;
        let data = varmap.data().lock().unwrap();
        assert_eq!(data["d.weight"].to_vec1::<f32>()?, vec![1.0; 4]);
        assert_eq!(data["fc1.weight"].to_vec2::<f32>()?[1], vec![3.0, 4.0, 5.0]);
        drop(data);
        let mut wrong = ck.tensors.clone();
        wrong.insert("d.weight".into(), Tensor::zeros(5, DType::F32, &dev)?);
        let e = load_into_varmap_except(&varmap, &wrong, path, let_off).unwrap_err();
        assert!(e.to_string().contains("`d.weight` has shape [5]"), "{e}");
        Ok(())
    }
}
