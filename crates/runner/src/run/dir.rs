//! A run's directory and log: where its files go, the JSONL log (cut back to the checkpoint's
//! step when a run resumes), and which directory a new or resumed run writes to.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::RunConfig;

/// The files of a run directory.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("log.jsonl")
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn plot(&self) -> PathBuf {
        self.root.join("loss.png")
    }

    pub fn create(&self) -> Result<()> {
        for d in [self.root.clone(), self.checkpoints(), self.samples()] {
            fs::create_dir_all(&d)
                .with_context(|| format!("cannot create output directory {}", d.display()))?;
        }
        Ok(())
    }
}

/// Creates the run directory (or reopens it at `step` for a resumed run), writes the config,
/// and opens the log for appending.
pub fn open_run(dir: &RunDir, run: &RunConfig, step: u64) -> Result<Logger> {
    dir.create()?;
    let history = truncate_log(&dir.log(), step)?;
    layers::train::checkpoint::write_atomically(&dir.config(), run.to_toml()?.as_bytes())?;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .with_context(|| format!("cannot open {}", dir.log().display()))?;
    Ok(Logger { file, history })
}

/// The directory a resumed run continues in: `--out`, or the one holding its checkpoint.
pub fn resumed_run_dir(out: Option<&Path>, checkpoint: &Path) -> Result<PathBuf> {
    if out.is_none() && crate::hub::is_spec(checkpoint) {
        bail!(
            "{} is on the hub, so its run directory is not here: pass --out for the resumed run",
            checkpoint.display()
        );
    }
    out.map(Path::to_path_buf)
        .or_else(|| run_dir_of(checkpoint))
        .with_context(|| {
            format!(
                "cannot tell the run directory of {}: pass --out",
                checkpoint.display()
            )
        })
}

/// The directory of a new run: `--out` or `runs/<model>-<time>`, refusing one that holds a run.
pub fn new_run_dir(out: Option<&Path>, model: &str) -> Result<PathBuf> {
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_run_dir(model));
    if dir.join("log.jsonl").exists() {
        bail!(
            "{} already holds a run (log.jsonl); choose another --out, or --resume its checkpoint",
            dir.display()
        );
    }
    Ok(dir)
}

pub fn default_run_dir(model: &str) -> PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    PathBuf::from("runs").join(format!("{model}-{stamp}"))
}

/// The run directory of a checkpoint `DIR/checkpoints/x.safetensors`.
pub fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    let parent = checkpoint.parent()?;
    (parent.file_name()? == "checkpoints").then(|| parent.parent().map(Path::to_path_buf))?
}

/// Keeps the log lines up to `step`, so a resumed run appends where its checkpoint stood.
pub fn truncate_log(path: &Path, step: u64) -> Result<Vec<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Ok(Vec::new()),
    };
    let kept: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["step"].as_u64().is_some_and(|s| s <= step))
        .collect();
    let mut out = String::new();
    for v in &kept {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    layers::train::checkpoint::write_atomically(path, out.as_bytes())?;
    Ok(kept)
}

pub struct Logger {
    pub file: fs::File,
    pub history: Vec<Value>,
}

impl Logger {
    pub fn write(&mut self, v: Value) -> Result<()> {
        writeln!(self.file, "{v}").context("cannot write log.jsonl")?;
        self.history.push(v);
        Ok(())
    }

    pub fn curve(&self, kind: &str, key: &str) -> Vec<(f64, f64)> {
        self.history
            .iter()
            .filter(|v| v["type"] == kind)
            .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
            .collect()
    }
}
