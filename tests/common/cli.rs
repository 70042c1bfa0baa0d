//! What the end-to-end tests share: running the `genzoo` binary and reading what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use layers::Checkpoint;

/// The binary under test, logging at info level (what a user sees).
pub fn genzoo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genzoo"));
    c.env("RUST_LOG", "info");
    c
}

pub fn run(args: &[&str]) -> Output {
    genzoo().args(args).output().expect("genzoo runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "genzoo failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Runs a command that must fail cleanly: non-zero exit, no panic, and `needles` in stderr.
#[track_caller]
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?} should fail with 1:\n{err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
}

/// Writes a run file's text to `path` and returns the path.
pub fn run_file(path: PathBuf, text: impl AsRef<str>) -> PathBuf {
    std::fs::write(&path, text.as_ref()).unwrap();
    path
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every tensor of a safetensors file as f32 values (training state in bytes too), sorted by
/// name.
pub fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::load(path, &Device::Cpu).unwrap();
    let mut w: Vec<(String, Vec<f32>)> = ck
        .tensors
        .iter()
        .map(|(k, t)| {
            let values = t.to_dtype(candle_core::DType::F32).unwrap();
            (k.clone(), values.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

pub fn png_size(p: &Path) -> (u32, u32) {
    let img = image::open(p).unwrap();
    (img.width(), img.height())
}

/// Trains run file `cfg` into `out` for `steps` steps, then resumes from that checkpoint to the
/// end of the run: the final checkpoint, to compare with an uninterrupted run's.
pub fn train_stopped_and_resumed(cfg: &Path, out: &Path, steps: u64) -> PathBuf {
    let steps = steps.to_string();
    ok(run(&[
        "train",
        "--config",
        s(cfg),
        "--out",
        s(out),
        "--max-steps",
        &steps,
    ]));
    let ck = out.join("checkpoints/last.safetensors");
    ok(run(&["train", "--resume", s(&ck), "--max-steps", "0"]));
    ck
}

/// Stops run file `cfg` at step `steps` into `part`, resumes it to the end, and asserts that
/// its log and every tensor of its last checkpoint equal those of the uninterrupted run in
/// `full`. Returns the resumed checkpoint and its tensors.
#[track_caller]
pub fn assert_resumes_exactly(
    cfg: &Path,
    full: &Path,
    part: &Path,
    steps: u64,
) -> (PathBuf, Vec<(String, Vec<f32>)>) {
    let ck = train_stopped_and_resumed(cfg, part, steps);
    assert_eq!(
        step_lines(part),
        step_lines(full),
        "the resumed run's steps differ"
    );
    let resumed = weights(&ck);
    assert_eq!(resumed, weights(&full.join("checkpoints/last.safetensors")));
    (ck, resumed)
}

/// Asserts that `tensors` hold something under each of `prefixes` (the networks' weights, the
/// optimisers' moments, the weight average, a model's training state).
#[track_caller]
pub fn assert_saves(tensors: &[(String, Vec<f32>)], prefixes: &[&str]) {
    for prefix in prefixes {
        assert!(
            tensors.iter().any(|(k, _)| k.starts_with(prefix)),
            "nothing saved under {prefix}"
        );
    }
}

/// The lines of a run's `log.jsonl` of type `kind` (`step`, `epoch`), without their speed (which
/// differs between an uninterrupted and a resumed run).
pub fn log_lines(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == kind)
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("images_per_sec");
            v
        })
        .collect()
}

/// The step lines of a run's log ([`log_lines`]).
pub fn step_lines(dir: &Path) -> Vec<serde_json::Value> {
    log_lines(dir, "step")
}

/// Asserts that training run file `cfg` on `data` into `out` fails with `needles` in its error
/// and leaves no checkpoint behind.
#[track_caller]
pub fn train_fails_cleanly(cfg: &Path, data: &Path, out: &Path, needles: &[&str]) {
    fails_with(
        &[
            "train",
            "--config",
            s(cfg),
            "--data",
            s(data),
            "--out",
            s(out),
        ],
        needles,
    );
    assert!(
        !out.join("checkpoints").exists(),
        "{} left a checkpoint",
        out.display()
    );
}
