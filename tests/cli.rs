//! The `genzoo` binary end to end on the bundled digits: training writes a run directory and
//! the loss goes down, resume is exact, checkpoints survive kills, Ctrl-C saves, and every bad
//! input is a clear error.

#[path = "common/cli.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{
    assert_saves, fails_with, genzoo, ok, png_size, run, run_file, s, stderr, stdout,
    train_stopped_and_resumed, weights,
};
use layers::Checkpoint;
use serde_json::Value;

fn log_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A small but real run: `limit` training digits, `epochs` epochs, a line per step.
fn train_small(out: &Path, extra: &[&str]) -> Output {
    let cfg = run_file(out.with_extension("toml"), "model = \"vae\"\n[train]\nlimit = 640\nbatch_size = 64\nlog_every = 1\nsample_count = 16\n");
    let mut args = vec!["train", "--config", s(&cfg), "--out", s(out)];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn list_names_every_model_with_its_kind_and_status() {
    let out = stdout(&ok(run(&["list"])));
    for name in [
        "fvsbn",
        "ar-n",
        "nade",
        "pixelcnn",
        "row-lstm",
        "diagonal-bilstm",
        "vae",
        "conv-vae",
        "gan",
        "dcgan",
        "infogan",
        "text2image-gan",
        "puzzle-gan",
        "cyclegan",
        "stargan",
        "progan",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
    let vae = out.lines().find(|l| l.starts_with("vae ")).unwrap();
    assert!(vae.contains("explicit") && vae.contains("built"), "{vae}");
    let gan = out.lines().find(|l| l.starts_with("dcgan")).unwrap();
    assert!(gan.contains("implicit") && gan.contains("built"), "{gan}");
    // Every model of the mission is built.
    assert!(!out.contains("not built"), "{out}");
    let last = out.lines().find(|l| l.starts_with("puzzle-gan")).unwrap();
    assert!(
        last.contains("implicit") && last.contains("built"),
        "{last}"
    );
    let grown = out.lines().find(|l| l.starts_with("progan")).unwrap();
    assert!(
        grown.contains("built") && !grown.contains("not built"),
        "{grown}"
    );
    let translation = out.lines().find(|l| l.starts_with("cyclegan")).unwrap();
    assert!(
        translation.contains("built") && !translation.contains("not built"),
        "{translation}"
    );
    let json: Value = serde_json::from_str(&stdout(&ok(run(&["list", "--json"])))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 17);
    // The weights shipped in the repository's models/, by the model their metadata names.
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    let out = stdout(&ok(run(&["list", "--weights-dir", models])));
    let grown = out.lines().find(|l| l.starts_with("progan")).unwrap();
    assert!(grown.contains("progan.safetensors"), "{grown}");
    let stargan = out.lines().find(|l| l.starts_with("stargan")).unwrap();
    assert!(stargan.contains("stargan-digits.safetensors"), "{stargan}");
    // The attribute classifier beside it is not a model's weights.
    assert!(!out.contains("attributes.safetensors"), "{out}");
}

/// What the README promises of models/: `genzoo sample models/NAME.safetensors` draws from every
/// shipped weights file on a fresh clone (the evaluators' classifiers and Puzzle-GAN's locator
/// aside; Puzzle-GAN completes test digits instead).
#[test]
fn every_shipped_weights_file_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut sampled = Vec::new();
    for entry in std::fs::read_dir(&models).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".safetensors") || name.ends_with("classifier.safetensors") {
            continue;
        }
        if name.ends_with("-attributes.safetensors") {
            continue;
        }
        if name.ends_with("-locator.safetensors") {
            // Puzzle-GAN's locator places patches for eval and sample; it draws nothing.
            fails_with(
                &["sample", s(&path), "--out", s(&tmp.path().join("x.png"))],
                &["`puzzle-locator`", "--locator FILE"],
            );
            continue;
        }
        let png = tmp.path().join(format!("{name}.png"));
        let mut args = vec!["sample", s(&path), "-n", "2", "--out", s(&png)];
        if name.starts_with("puzzle") {
            args.extend(["--mode", "puzzle", "--from-test", "2"]);
        }
        ok(run(&args));
        assert!(png_size(&png).0 > 0, "{name}: no grid");
        sampled.push(name);
    }
    // The README's list: a file that disappears (or stops loading) fails here.
    for shipped in [
        "vae",
        "conv-vae",
        "fvsbn",
        "nade",
        "ar-n",
        "pixelcnn",
        "row-lstm",
        "diagonal-bilstm",
        "gan",
        "cgan",
        "dcgan",
        "infogan",
        "progan",
        "text2image",
        "puzzle",
    ] {
        assert!(
            sampled.contains(&format!("{shipped}.safetensors")),
            "{shipped}: {sampled:?}"
        );
    }
    assert!(sampled.len() >= 18, "{sampled:?}");
}

#[test]
fn training_writes_a_run_directory_and_the_loss_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(train_small(&out, &["--epochs", "3"]));
    for f in [
        "config.toml",
        "log.jsonl",
        "loss.png",
        "checkpoints/last.safetensors",
        "samples/epoch-0001.png",
        "samples/epoch-0003.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let epochs: Vec<Value> = log_lines(&out)
        .into_iter()
        .filter(|v| v["type"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 3);
    let test_loss = |i: usize| epochs[i]["test_neg_elbo"].as_f64().unwrap();
    // On held-out digits the bound improves epoch after epoch, from ~540 nats at init.
    assert!(
        test_loss(2) < test_loss(1) && test_loss(1) < test_loss(0),
        "{epochs:?}"
    );
    assert!(test_loss(2) < 260.0, "{}", test_loss(2));
    // The resolved config lists every field, with the model's defaults filled in.
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        cfg.contains("latent_dim = 20") && cfg.contains("epochs = 3"),
        "{cfg}"
    );
    // A second run into the same directory is refused, and nothing there changes.
    let before = std::fs::read(out.join("checkpoints/last.safetensors")).unwrap();
    let o = train_small(&out, &["--epochs", "1"]);
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("checkpoints/last.safetensors")).unwrap(),
        before
    );
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    log_lines(dir)
        .into_iter()
        .filter(|v| v["type"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["neg_elbo"].as_f64().unwrap()))
        .collect()
}

#[test]
fn same_seed_same_losses_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let again = tmp.path().join("again");
    let split = tmp.path().join("split");
    ok(train_small(&whole, &["--epochs", "2"]));
    ok(train_small(&again, &["--epochs", "2"]));
    assert_eq!(
        step_losses(&whole),
        step_losses(&again),
        "same seed, same losses"
    );
    assert_eq!(step_losses(&whole).len(), 20);

    // Stop mid-way through the second epoch (step 13 of 20), then resume.
    ok(train_small(&split, &["--epochs", "2", "--max-steps", "13"]));
    let ck = split.join("checkpoints/last.safetensors");
    let meta = Checkpoint::load(&ck, &Device::Cpu).unwrap();
    assert_eq!(meta.meta("genzoo.step"), Some("13"));
    ok(run(&[
        "train",
        "vae",
        "--resume",
        s(&ck),
        "--max-steps",
        "0",
    ]));
    assert_eq!(
        step_losses(&split),
        step_losses(&whole),
        "resumed losses differ"
    );
    let epochs = |d: &Path| -> Vec<Value> {
        log_lines(d)
            .into_iter()
            .filter(|v| v["type"] == "epoch")
            .collect()
    };
    assert_eq!(epochs(&split), epochs(&whole), "epoch summaries differ");
    assert_eq!(
        weights(&ck),
        weights(&whole.join("checkpoints/last.safetensors")),
        "final weights and moments differ"
    );

    // A different seed gives different losses: the check above can fail.
    let other = tmp.path().join("other");
    ok(train_small(&other, &["--epochs", "1", "--seed", "1"]));
    assert_ne!(step_losses(&other)[..10], step_losses(&whole)[..10]);
    // Resume must not change what exactness depends on.
    fails_with(
        &["train", "vae", "--resume", s(&ck), "--seed", "5"],
        &["cannot change"],
    );
}

/// Starts a long run in the background, waiting until its first checkpoint exists.
fn start_long_run(out: &Path) -> std::process::Child {
    // One step per epoch, so a checkpoint is written at every step.
    let cfg = run_file(out.with_extension("toml"), "model = \"vae\"\n[train]\nlimit = 64\nbatch_size = 64\nepochs = 100000\nlog_every = 1\nsample_count = 4\n");
    let child = genzoo()
        .args(["train", "--config", s(&cfg), "--out", s(out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("checkpoints/last.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGKILL at eight moments of a run that writes a checkpoint every step: what is left must be
/// a whole checkpoint of the step it names, not only a file that loads. Resumed for two more
/// steps, it must end bit for bit where an uninterrupted run of as many steps ends (weights,
/// the average and Adam's moments); a file torn mid-write fails to load, and one whose weights
/// and step disagree fails the comparison.
#[test]
fn a_kill_at_any_moment_leaves_the_last_whole_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, delay_ms) in [0u64, 17, 37, 61, 113, 173, 251, 331]
        .into_iter()
        .enumerate()
    {
        let out = tmp.path().join(format!("k{i}"));
        let mut child = start_long_run(&out);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
        let last = out.join("checkpoints/last.safetensors");
        let ck = Checkpoint::load(&last, &Device::Cpu)
            .expect("the last checkpoint is whole after a kill");
        let step: u64 = ck.meta("genzoo.step").unwrap().parse().unwrap();
        let until = (step + 2).to_string();
        ok(run(&["train", "--resume", s(&last), "--max-steps", &until]));
        let straight = tmp.path().join(format!("straight{i}"));
        ok(run(&[
            "train",
            "--config",
            s(&out.with_extension("toml")),
            "--out",
            s(&straight),
            "--max-steps",
            &until,
        ]));
        assert_eq!(
            weights(&last),
            weights(&straight.join("checkpoints/last.safetensors")),
            "killed at step {step}, resumed to {until}: not the uninterrupted run"
        );
    }
}

/// Starts `cfg` in the background and sends SIGINT once its first checkpoint exists; returns
/// the step the run says it stopped at (it must exit with 130 and say how to resume).
#[cfg(unix)]
fn interrupt(cfg: &Path, out: &Path) -> u64 {
    let child = genzoo()
        .args(["train", "--config", s(cfg), "--out", s(out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("checkpoints/last.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(60));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"));
    assert!(err.contains("--resume"), "{err}");
    let at = err
        .split("interrupted at step ")
        .nth(1)
        .expect("the step is named");
    at.split(':').next().unwrap().parse().unwrap()
}

/// Ctrl-C in the middle of an epoch saves that very step (not only the epoch's end), and
/// resuming from it gives, bit for bit, the checkpoint of a run never interrupted: the
/// weights, every optimiser moment and, for the GAN, the weight average.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_the_step_and_resumes_to_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    // 16 steps per epoch, so most steps are not an epoch's last.
    for model in ["vae", "gan"] {
        let cfg = run_file(tmp.path().join(format!("{model}.toml")), format!("model = \"{model}\"\n[train]\nlimit = 64\nbatch_size = 4\nepochs = 100000\nlog_every = 1\nsample_count = 4\nbinarize = \"none\"\n"));
        let (mut stopped, mut out) = (0, tmp.path().to_path_buf());
        for attempt in 0..4 {
            out = tmp.path().join(format!("{model}-{attempt}"));
            stopped = interrupt(&cfg, &out);
            if !stopped.is_multiple_of(16) {
                break;
            }
        }
        assert!(
            !stopped.is_multiple_of(16),
            "{model}: every attempt stopped at an epoch's end"
        );
        let ck = out.join("checkpoints/last.safetensors");
        let meta = Checkpoint::load(&ck, &Device::Cpu).unwrap();
        assert_eq!(
            meta.meta("genzoo.step").unwrap(),
            stopped.to_string(),
            "{model}"
        );
        let logged: Vec<u64> = log_lines(&out)
            .iter()
            .filter(|v| v["type"] == "step")
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        assert_eq!(
            logged.last(),
            Some(&stopped),
            "{model}: the log ends at the saved step"
        );
        // Resume to a few steps further; a run never interrupted stops at the same step.
        let target = (stopped + 5).to_string();
        ok(run(&["train", "--resume", s(&ck), "--max-steps", &target]));
        let whole = tmp.path().join(format!("{model}-whole"));
        ok(run(&[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&whole),
            "--max-steps",
            &target,
        ]));
        let (resumed, uninterrupted) = (
            weights(&ck),
            weights(&whole.join("checkpoints/last.safetensors")),
        );
        assert_eq!(
            resumed, uninterrupted,
            "{model}: resumed after Ctrl-C differs"
        );
        assert!(
            resumed.iter().any(|(k, _)| k.starts_with("optimizer")),
            "{model}"
        );
    }
}

/// A trained tiny model shared by the sampling, evaluation and bad-input tests.
fn tiny_checkpoint(dir: &Path, extra_model_config: &str) -> PathBuf {
    let out = dir.join("tiny");
    let cfg = run_file(dir.join("tiny.toml"), format!("model = \"vae\"\n[train]\nlimit = 2048\nepochs = 1\nsample_count = 4\n[model_config]\n{extra_model_config}"));
    ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
    out.join("checkpoints/last.safetensors")
}

#[test]
fn sample_eval_and_inspect_need_only_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(tmp.path(), "");
    let png = tmp.path().join("s.png");
    ok(run(&[
        "sample",
        s(&ck),
        "-n",
        "10",
        "--nrow",
        "5",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (5 * 30 + 2, 2 * 30 + 2));
    ok(run(&[
        "sample",
        s(&ck),
        "--mode",
        "reconstruct",
        "-n",
        "6",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (6 * 30 + 2, 2 * 30 + 2));
    ok(run(&[
        "sample",
        s(&ck),
        "--mode",
        "interpolate",
        "-n",
        "16",
        "--steps",
        "8",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (8 * 30 + 2, 2 * 30 + 2));
    fails_with(
        &["sample", s(&ck), "--mode", "manifold", "--out", s(&png)],
        &["2-D latent space", "latent_dim = 20"],
    );

    let o = ok(run(&[
        "eval",
        s(&ck),
        "--json",
        "--k",
        "50",
        "--limit",
        "100",
    ]));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["images"], 100);
    let metric = |n: &str| {
        r["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == n)
            .unwrap()["nats"]
            .as_f64()
            .unwrap()
    };
    // The importance-weighted estimate is a tighter bound than the ELBO.
    assert!(metric("nll") < metric("neg_elbo"), "{r}");
    assert!(metric("nll") > 50.0 && metric("nll") < 450.0, "{r}");
    let table = stdout(&ok(run(&["eval", s(&ck), "--k", "10", "--limit", "20"])));
    assert!(
        table.contains("nll") && table.contains("bits/dim") && table.contains("k = 10"),
        "{table}"
    );

    // Exported weights sample and evaluate like the checkpoint, and refuse to resume.
    let shipped = tmp.path().join("shipped.safetensors");
    ok(run(&["export", s(&ck), s(&shipped)]));
    let e = stdout(&ok(run(&[
        "eval",
        s(&shipped),
        "--json",
        "--k",
        "50",
        "--limit",
        "100",
    ])));
    assert_eq!(
        serde_json::from_str::<Value>(&e).unwrap()["metrics"],
        r["metrics"]
    );
    fails_with(
        &["train", "vae", "--resume", s(&shipped)],
        &["shipped.safetensors holds weights only"],
    );
    let i = stdout(&ok(run(&["inspect", s(&shipped)])));
    assert!(!i.contains("optimizer"), "{i}");

    let i = stdout(&ok(run(&["inspect", s(&ck)])));
    assert!(i.contains("fc21.weight") && i.contains("[20, 400]"), "{i}");
    // 784*400+400 + 2*(400*20+20) + 20*400+400 + 400*784+784 parameters.
    assert!(i.contains("parameters: 652824 in 10 tensors"), "{i}");
    assert!(i.contains("genzoo.model = vae"), "{i}");
}

#[test]
fn a_two_dimensional_latent_space_draws_its_manifold() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(tmp.path(), "latent_dim = 2\n");
    let png = tmp.path().join("m.png");
    ok(run(&[
        "sample",
        s(&ck),
        "--mode",
        "manifold",
        "-n",
        "100",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (10 * 30 + 2, 10 * 30 + 2));
}

/// A loopback stand-in for the Hugging Face Hub: `file` at `path` with its sha256 in
/// `X-Linked-Etag`, 404 elsewhere, for at most 4 requests; returns the endpoint and a count of
/// the requests it answered.
fn serve_hub(
    path: &'static str,
    file: Vec<u8>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut header = String::from("x");
            while header != "\r\n" && !header.is_empty() {
                header.clear();
                reader.read_line(&mut header).unwrap();
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (status, body) = match line.split_whitespace().nth(1) == Some(path) {
                true => ("200 OK", &file[..]),
                false => ("404 Not Found", &[][..]),
            };
            let sha = runner::hub::sha256_hex(body);
            let head = format!("HTTP/1.1 {status}\r\nX-Linked-Etag: \"{sha}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    (format!("http://{addr}"), count)
}

/// Shipped weights named `hf:OWNER/REPO/FILE` download once: `inspect` fetches them into the
/// cache and `sample` reads the cached copy without a request; a file the hub lacks is a
/// one-line error naming the revision.
/// genzoo with `args`, its hub at `endpoint` and its cache in `cache`.
fn with_hub(endpoint: &str, cache: &Path, args: &[&str]) -> Output {
    let mut c = genzoo();
    c.args(args)
        .env("GENZOO_HUB_ENDPOINT", endpoint)
        .env("GENZOO_CACHE", cache);
    for var in ["GENZOO_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"] {
        c.env_remove(var);
    }
    c.output().expect("genzoo runs")
}

/// A checkpoint on the hub resumes exactly, into the run directory --out names; without
/// --out it is refused before anything is downloaded.
#[test]
fn a_checkpoint_on_the_hub_resumes_exactly_into_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    ok(train_small(&whole, &["--epochs", "2"]));
    ok(train_small(&split, &["--epochs", "2", "--max-steps", "13"]));
    let bytes = std::fs::read(split.join("checkpoints/last.safetensors")).unwrap();
    let (endpoint, requests) = serve_hub("/genzoo/runs/resolve/main/vae/last.safetensors", bytes);
    let cache = tmp.path().join("cache");
    let spec = "hf:genzoo/runs/vae/last.safetensors";

    let o = with_hub(
        &endpoint,
        &cache,
        &["train", "--resume", spec, "--max-steps", "0"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("pass --out"), "{err}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    let resumed = tmp.path().join("resumed");
    let args = [
        "train",
        "--resume",
        spec,
        "--max-steps",
        "0",
        "--out",
        s(&resumed),
    ];
    ok(with_hub(&endpoint, &cache, &args));
    assert_eq!(
        weights(&resumed.join("checkpoints/last.safetensors")),
        weights(&whole.join("checkpoints/last.safetensors")),
        "the run resumed from the hub ends elsewhere than the uninterrupted one"
    );
    let steps: Vec<u64> = step_losses(&resumed)
        .iter()
        .map(|(step, _)| *step)
        .collect();
    assert_eq!(steps, (14..=20).collect::<Vec<u64>>());
}

/// An attribute classifier on the hub judges a StarGAN's translations as a local one does.
#[test]
fn an_attribute_classifier_on_the_hub_judges_translations() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let classifier = models.join("stargan-digits-attributes.safetensors");
    let bytes = std::fs::read(&classifier).unwrap();
    let (endpoint, _) = serve_hub("/genzoo/zoo/resolve/main/attributes.safetensors", bytes);
    let tmp = tempfile::tempdir().unwrap();
    let eval = |classifier: &str| {
        let model = models.join("stargan-digits.safetensors");
        let args = [
            "eval",
            s(&model),
            "--limit",
            "3",
            "--attribute-classifier",
            classifier,
        ];
        stdout(&ok(with_hub(&endpoint, &tmp.path().join("cache"), &args)))
    };
    let from_hub = eval("hf:genzoo/zoo/attributes.safetensors");
    assert!(from_hub.contains("attributes right, each"), "{from_hub}");
    let local = eval(s(&classifier));
    let figures = |report: &str| -> Vec<String> {
        let rows = report
            .lines()
            .filter(|l| !l.starts_with("attribute classifier:"));
        rows.map(String::from).collect()
    };
    assert_eq!(figures(&from_hub), figures(&local));
}

#[test]
fn hub_weights_download_once_and_sample_from_the_cache() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vae.safetensors");
    let bytes = std::fs::read(&shipped).unwrap();
    let (endpoint, requests) = serve_hub("/genzoo/zoo/resolve/main/vae.safetensors", bytes.clone());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let genzoo_hub = |args: &[&str]| with_hub(&endpoint, &cache, args);
    let spec = "hf:genzoo/zoo/vae.safetensors";
    let i = stdout(&ok(genzoo_hub(&["inspect", spec])));
    assert!(i.contains("genzoo.model = vae"), "{i}");
    let png = tmp.path().join("s.png");
    ok(genzoo_hub(&[
        "sample",
        spec,
        "-n",
        "4",
        "--nrow",
        "4",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (4 * 30 + 2, 30 + 2));
    let cached = cache.join("hub/genzoo/zoo/main/vae.safetensors");
    assert_eq!(std::fs::read(cached).unwrap(), bytes);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    let o = genzoo_hub(&[
        "sample",
        "hf:genzoo/zoo@v9/vae.safetensors",
        "--out",
        s(&png),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the hub has no file `vae.safetensors` at revision `v9` of genzoo/zoo"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 2, "{err}");
}

#[test]
fn bad_inputs_are_clear_errors_that_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ck = tiny_checkpoint(t, "");
    let out = t.join("x");

    fails_with(&["train", "vea"], &["unknown model `vea`", "vae"]);
    // Sizes that cannot fit are refused before anything is allocated.
    let png = t.join("big.png");
    fails_with(
        &["sample", s(&ck), "-n", "1000000000", "--out", s(&png)],
        &["-n 1000000000", "at most 1024 images"],
    );
    assert!(!png.exists());
    // A Candle error prints its message alone, even with RUST_BACKTRACE set (`-v` shows the
    // backtrace Candle attaches then).
    let manifold = |verbose: bool| {
        let mut c = genzoo();
        c.env("RUST_BACKTRACE", "1");
        if verbose {
            c.arg("-v");
        }
        let o = c
            .args(["sample", s(&ck), "--mode", "manifold", "--out", s(&png)])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        stderr(&o)
    };
    let plain = manifold(false);
    assert!(plain.contains("needs a 2-D latent space"), "{plain}");
    assert_eq!(plain.trim().lines().count(), 1, "{plain}");
    assert!(manifold(true).lines().count() > 3, "-v shows the backtrace");
    fails_with(
        &["train", "puzzel-gan", "--out", s(&out)],
        &["unknown model `puzzel-gan`", "puzzle-gan"],
    );
    fails_with(&["train"], &["name a model"]);
    // The evaluators' classifier files are not a model's checkpoint: say what they are for.
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    let digits = format!("{models}/mnist-classifier.safetensors");
    fails_with(
        &["sample", &digits, "--out", s(&png)],
        &[
            "mnist-classifier.safetensors holds an evaluator's classifier (`mnist-classifier`",
            "--classifier FILE",
        ],
    );
    let attributes = format!("{models}/stargan-digits-attributes.safetensors");
    fails_with(
        &["eval", &attributes],
        &[
            "holds an evaluator's classifier (`attribute-classifier`",
            "--attribute-classifier FILE",
        ],
    );

    let cfg = run_file(t.join("bad.toml"), "model = \"vae\"\n[train]\nepoks = 3\n");
    fails_with(
        &["train", "--config", s(&cfg)],
        &["bad.toml", "unknown field `epoks`"],
    );
    std::fs::write(&cfg, "model = \"vae\"\n[model_config]\nlatnt_dim = 3\n").unwrap();
    fails_with(
        &["train", "--config", s(&cfg), "--out", s(&out)],
        &["unknown field `latnt_dim`"],
    );
    fails_with(
        &["train", "vae", "--lr=-1", "--out", s(&out)],
        &["train.lr must be positive"],
    );

    fails_with(
        &[
            "train",
            "vae",
            "--data",
            s(&t.join("nowhere")),
            "--out",
            s(&out),
        ],
        &["nowhere", "does not exist"],
    );
    let data = t.join("data");
    std::fs::create_dir(&data).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    for f in [
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(src.join(f), data.join(f)).unwrap();
    }
    fails_with(
        &["train", "vae", "--data", s(&data), "--out", s(&out)],
        &["missing train-images-idx3-ubyte"],
    );
    let bytes = std::fs::read(src.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(
        data.join("train-images-idx3-ubyte.gz"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    fails_with(
        &["train", "vae", "--data", s(&data), "--out", s(&out)],
        &["train-images-idx3-ubyte.gz", "not a valid gzip file"],
    );

    // A non-writable output: its parent is a file.
    let file = t.join("file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        &[
            "train",
            "vae",
            "--epochs",
            "1",
            "--out",
            s(&file.join("run")),
        ],
        &["cannot create output directory", "file/run"],
    );

    // Checkpoints: truncated, garbage, missing, of another model, with a misshapen tensor.
    let whole = std::fs::read(&ck).unwrap();
    let truncated = t.join("truncated.safetensors");
    std::fs::write(&truncated, &whole[..whole.len() / 3]).unwrap();
    let garbage = t.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file, just words").unwrap();
    for bad in [&truncated, &garbage] {
        let name = bad.file_name().unwrap().to_str().unwrap();
        fails_with(&["sample", s(bad), "--out", s(&t.join("s.png"))], &[name]);
        fails_with(&["eval", s(bad)], &[name]);
        fails_with(&["inspect", s(bad)], &[name]);
        fails_with(&["train", "vae", "--resume", s(bad)], &[name]);
    }
    assert!(!t.join("s.png").exists());
    fails_with(
        &["eval", s(&t.join("missing.safetensors"))],
        &["missing.safetensors"],
    );
    fails_with(
        &["train", "conv-vae", "--resume", s(&ck)],
        &["is a checkpoint of model `vae`, not `conv-vae`"],
    );

    let plain = t.join("plain.safetensors");
    let mut tensors = Checkpoint::load(&ck, &Device::Cpu).unwrap();
    tensors.metadata.clear();
    tensors.save(&plain).unwrap();
    fails_with(
        &["eval", s(&plain)],
        &["plain.safetensors", "not a genzoo checkpoint", "--model"],
    );
    tensors.tensors.insert(
        "fc21.weight".into(),
        candle_core::Tensor::zeros((7, 400), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.save(&plain).unwrap();
    fails_with(
        &["eval", s(&plain), "--model", "vae"],
        &[
            "plain.safetensors",
            "`fc21.weight` has shape [7, 400], the model expects [20, 400]",
        ],
    );
    tensors.tensors.remove("fc21.weight");
    tensors.save(&plain).unwrap();
    fails_with(
        &["sample", s(&plain), "--model", "vae"],
        &["missing tensor(s) `fc21.weight`"],
    );

    fails_with(&["sample", s(&ck), "-n", "0"], &["-n must be positive"]);
    fails_with(
        &["eval", s(&ck), "--device", "tpu"],
        &["unknown device `tpu`"],
    );
    #[cfg(not(feature = "cuda"))]
    fails_with(&["eval", s(&ck), "--device", "cuda"], &["--features cuda"]);
    // The checkpoint is untouched by all of the above.
    assert_eq!(std::fs::read(&ck).unwrap(), whole);
}

/// The fixture's weights are pytorch/examples' VAE at width 32 as torch initialised them; the
/// fixture also holds torch's importance-weighted NLL of the first 10 test digits under them
/// (k = 5000, float64). genzoo's estimate (k = 1000, noise about 0.05 nats) must land within
/// 0.15 nats of it: other initialisations of the same network land 1.5 to 3 nats away, and
/// these weights with one matrix's rows reversed (`fc3.weight`) 0.49 nats away, so a loader
/// that dropped or swapped a tensor, or left the seeded init in place, fails.
#[test]
fn plain_weights_with_reference_names_load_by_model_name() {
    let tmp = tempfile::tempdir().unwrap();
    // The PyTorch fixture holds the reference weights (and other tensors, which are ignored).
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vae_mlp.safetensors");
    let cfg = run_file(
        tmp.path().join("vae32.toml"),
        "model = \"vae\"\n[model_config]\nhidden_dim = 32\n",
    );
    let png = tmp.path().join("p.png");
    ok(run(&[
        "sample",
        s(&fixture),
        "--model",
        "vae",
        "--config",
        s(&cfg),
        "-n",
        "4",
        "--out",
        s(&png),
    ]));
    let o = ok(run(&[
        "eval",
        s(&fixture),
        "--model",
        "vae",
        "--config",
        s(&cfg),
        "--k",
        "1000",
        "--limit",
        "10",
        "--json",
    ]));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let nll = r["metrics"][0]["nats"].as_f64().unwrap();
    let ck = Checkpoint::load(&fixture, &Device::Cpu).unwrap();
    let torch = ck.tensors["output.iw_nll_first10"]
        .to_vec1::<f32>()
        .unwrap()[0] as f64;
    assert!(
        (nll - torch).abs() < 0.15,
        "genzoo {nll:.3} nats, torch {torch:.3} with the same weights"
    );
}

#[test]
fn the_conv_vae_trains_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("conv");
    let cfg = run_file(
        tmp.path().join("conv.toml"),
        "model = \"conv-vae\"\n[train]\nlimit = 1024\nepochs = 2\nsample_count = 4\n",
    );
    ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
    let epochs: Vec<Value> = log_lines(&out)
        .into_iter()
        .filter(|v| v["type"] == "epoch")
        .collect();
    let loss = |i: usize| epochs[i]["test_neg_elbo"].as_f64().unwrap();
    assert!(loss(1) < loss(0), "{epochs:?}");
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("arch = \"conv\""), "{cfg}");
    let ck = out.join("checkpoints/last.safetensors");
    let o = ok(run(&[
        "eval",
        s(&ck),
        "--json",
        "--k",
        "10",
        "--limit",
        "50",
    ]));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["model"], "conv-vae");
    let i = stdout(&ok(run(&["inspect", s(&ck)])));
    assert!(
        i.contains("enc.0.weight") && i.contains("[32, 1, 4, 4]") && i.contains("dec.2.weight"),
        "{i}"
    );
}

#[test]
fn autoregressive_models_train_and_their_fast_samplers_match_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let softmax = "hidden = 8\nlayers = 1\nhead_hidden = 8\noutput = \"softmax\"\n";
    // A softmax model fed binary images is refused, naming the fix.
    let cfg = run_file(
        tmp.path().join("softmax-threshold.toml"),
        format!("model = \"pixelcnn\"\n[model_config]\n{softmax}"),
    );
    let out = tmp.path().join("refused");
    fails_with(
        &["train", "--config", s(&cfg), "--out", s(&out)],
        &["256 intensity levels", "binarize = \"none\""],
    );
    for (name, model, binarize, extra) in [
        ("fvsbn", "fvsbn", "threshold", ""),
        ("nade", "nade", "threshold", "hidden = 16\n"),
        (
            "pixelcnn",
            "pixelcnn",
            "threshold",
            "hidden = 8\nlayers = 1\nhead_hidden = 8\n",
        ),
        ("pixelcnn-256", "pixelcnn", "none", softmax),
        (
            "row-lstm",
            "row-lstm",
            "threshold",
            "hidden = 4\nlayers = 1\nhead_hidden = 8\n",
        ),
        ("row-lstm-256", "row-lstm", "none", softmax),
        (
            "diagonal-bilstm",
            "diagonal-bilstm",
            "threshold",
            "hidden = 4\nlayers = 1\nhead_hidden = 8\n",
        ),
        ("diagonal-bilstm-256", "diagonal-bilstm", "none", softmax),
    ] {
        let out = tmp.path().join(name);
        let cfg = run_file(tmp.path().join(format!("{name}.toml")), format!("model = \"{model}\"\n[train]\nlimit = 512\nbatch_size = 64\nepochs = 2\nsample_count = 4\nbinarize = \"{binarize}\"\n[model_config]\n{extra}"));
        ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
        let epochs: Vec<Value> = log_lines(&out)
            .into_iter()
            .filter(|v| v["type"] == "epoch")
            .collect();
        let nll = |i: usize| epochs[i]["test_nll"].as_f64().unwrap();
        assert!(nll(1) < nll(0), "{name}: {epochs:?}");
        let ck = out.join("checkpoints/last.safetensors");
        let r: Value = serde_json::from_str(&stdout(&ok(run(&[
            "eval",
            s(&ck),
            "--json",
            "--limit",
            "50",
        ]))))
        .unwrap();
        assert_eq!(r["likelihood"], "exact", "{name}");
        let (fast, slow) = (
            tmp.path().join(format!("{name}-fast.png")),
            tmp.path().join(format!("{name}-slow.png")),
        );
        ok(run(&[
            "sample",
            s(&ck),
            "-n",
            "3",
            "--seed",
            "7",
            "--out",
            s(&fast),
        ]));
        ok(run(&[
            "sample",
            s(&ck),
            "-n",
            "3",
            "--seed",
            "7",
            "--mode",
            "reference",
            "--out",
            s(&slow),
        ]));
        assert_eq!(
            std::fs::read(&fast).unwrap(),
            std::fs::read(&slow).unwrap(),
            "{name}: samplers differ"
        );
        // Softmax models draw grey levels, not just black and white.
        let grey = image::open(&fast)
            .unwrap()
            .to_luma8()
            .pixels()
            .any(|p| p.0[0] != 0 && p.0[0] != 255);
        assert_eq!(grey, binarize == "none", "{name}");
    }
}

/// A GAN trains through the adversarial loop, resumes exactly, samples, evaluates by its
/// samples, and stops with a clear message when it diverges or its discriminator collapses.
#[test]
fn gans_train_resume_sample_evaluate_and_stop_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path().join("gan.toml"), "model = \"gan\"\n[train]\nlimit = 256\nbatch_size = 32\nepochs = 2\nlog_every = 1\nsample_count = 16\n[gan]\nloss = \"hinge\"\n");
    let full = tmp.path().join("full");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&full)]));
    let steps = step_losses_of(&full, "d_loss");
    assert_eq!(steps.len(), 16);
    assert!(steps.iter().all(|(_, v)| v.is_finite()));
    assert!(full.join("samples/epoch-0002.png").exists());
    assert!(full.join("loss.png").exists());
    // Stop after 5 steps, resume: the same 16 steps.
    let part = tmp.path().join("part");
    let ck = train_stopped_and_resumed(&cfg, &part, 5);
    assert_eq!(
        step_losses_of(&part, "d_loss"),
        steps,
        "resumed run differs"
    );
    assert_eq!(
        step_losses_of(&part, "g_loss"),
        step_losses_of(&full, "g_loss")
    );
    // Everything a GAN saves comes out the same: both networks, both optimisers' moments and
    // the generator's weight average that samples are drawn with.
    let resumed = weights(&ck);
    assert_eq!(resumed, weights(&full.join("checkpoints/last.safetensors")));
    assert_saves(
        &resumed,
        &[
            "ema.generator.",
            "optimizer.generator.",
            "optimizer.discriminator.",
        ],
    );
    // Sampling and evaluation by samples.
    let png = tmp.path().join("gan.png");
    ok(run(&["sample", s(&ck), "-n", "8", "--out", s(&png)]));
    assert_eq!(png_size(&png), (2 + 8 * 30, 2 + 30));
    let r: Value = serde_json::from_str(&stdout(&ok(run(&[
        "eval",
        s(&ck),
        "--json",
        "--samples",
        "64",
    ]))))
    .unwrap();
    assert!(r["likelihood"].is_null());
    let q = &r["sample_quality"];
    assert!(
        q["samples"]["frechet_distance"].as_f64().unwrap()
            > q["floor"]["frechet_distance"].as_f64().unwrap()
    );
    fails_with(
        &["eval", s(&ck), "--samples", "0"],
        &["implicit", "--samples"],
    );
    // A discriminator loss below 100 counts as collapsed here: the run stops at step 3.
    let collapse = run_file(tmp.path().join("collapse.toml"), "model = \"gan\"\n[train]\nlimit = 256\nbatch_size = 32\n[gan]\ncollapse_loss = 100.0\ncollapse_steps = 3\n");
    fails_with(
        &[
            "train",
            "--config",
            s(&collapse),
            "--out",
            s(&tmp.path().join("c")),
        ],
        &["collapsed at step 3", "last good checkpoint"],
    );
    fails_with(
        &[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&tmp.path().join("d")),
            "--lr",
            "1e30",
        ],
        &["diverged at step", "last good checkpoint"],
    );
}

/// The conditional GAN reports agreement with the requested class; InfoGAN reports its code's
/// accuracy through Q and sweeps its codes.
#[test]
fn conditional_and_info_gans_report_their_own_figures() {
    let tmp = tempfile::tempdir().unwrap();
    for model in ["cgan", "infogan"] {
        let cfg = run_file(tmp.path().join(format!("{model}.toml")), format!("model = \"{model}\"\n[train]\nlimit = 64\nbatch_size = 16\nepochs = 1\nsample_count = 20\n"));
        let out = tmp.path().join(model);
        ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
        let grid = out.join("samples/epoch-0001.png");
        let side = if model == "cgan" { 30 } else { 34 };
        assert_eq!(
            png_size(&grid),
            (2 + 10 * side, 2 + 2 * side),
            "{model}: 10 per row"
        );
        let ck = out.join("checkpoints/last.safetensors");
        let r: Value = serde_json::from_str(&stdout(&ok(run(&[
            "eval",
            s(&ck),
            "--json",
            "--samples",
            "20",
        ]))))
        .unwrap();
        let conditional = &r["sample_quality"]["samples"]["conditional_accuracy"];
        assert_eq!(conditional.is_f64(), model == "cgan", "{model}: {r}");
        assert_eq!(
            r["code_accuracy"].is_f64(),
            model == "infogan",
            "{model}: {r}"
        );
        if model == "infogan" {
            // Ten categories, each matched to a different digit, holding all 997 test digits.
            let a = &r["code_assignment"];
            let mut digits: Vec<u64> = a["class_of_cluster"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            digits.sort_unstable();
            assert_eq!(digits, (0..10).collect::<Vec<u64>>(), "{a}");
            let held: u64 = a["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .sum();
            assert_eq!(held, 997, "{a}");
        }
    }
    let ck = tmp.path().join("infogan/checkpoints/last.safetensors");
    let png = tmp.path().join("codes.png");
    ok(run(&[
        "sample",
        s(&ck),
        "--mode",
        "codes",
        "--code",
        "1",
        "-n",
        "30",
        "--steps",
        "5",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 5 * 34, 2 + 6 * 34));
    fails_with(
        &[
            "sample",
            s(&ck),
            "--mode",
            "codes",
            "--code",
            "7",
            "--out",
            s(&png),
        ],
        &["--code 7 is out of range"],
    );
    let cgan = tmp.path().join("cgan/checkpoints/last.safetensors");
    fails_with(
        &["sample", s(&cgan), "--mode", "codes", "--out", s(&png)],
        &["no latent codes"],
    );
}

fn step_losses_of(dir: &Path, key: &str) -> Vec<(u64, f64)> {
    log_lines(dir)
        .into_iter()
        .filter(|v| v["type"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v[key].as_f64().unwrap()))
        .collect()
}

/// Trains `args` for two steps on 1 thread and on 2, 3 and 4, and asserts that every tensor
/// of the final checkpoints (weights, the average, the optimisers' moments) is the same bit
/// for bit: the kernels split their sums by the batch, never by the thread count. Before that
/// (rayon's `reduce`, one part per thread), NADE, DCGAN, PixelCNN and the Row LSTM differed.
fn assert_thread_count_changes_nothing(name: &str, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = |threads: usize| {
        let out = dir.path().join(format!("{name}-{threads}"));
        ok(genzoo()
            .env("RAYON_NUM_THREADS", threads.to_string())
            .args(["train", "--max-steps", "2", "--out", s(&out)])
            .args(args)
            .output()
            .unwrap());
        weights(&out.join("checkpoints/last.safetensors"))
    };
    let one = checkpoint(1);
    for threads in [2, 3, 4] {
        let other = checkpoint(threads);
        assert_eq!(one.len(), other.len());
        for ((key, a), (_, b)) in one.iter().zip(&other) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{name}: {key} differs between 1 and {threads} threads"
            );
        }
    }
}

#[test]
fn dense_likelihood_models_train_alike_on_any_thread_count() {
    for model in ["fvsbn", "ar-n", "nade", "vae", "conv-vae"] {
        assert_thread_count_changes_nothing(model, &[model]);
    }
}

#[test]
fn convolutional_and_recurrent_models_train_alike_on_any_thread_count() {
    for model in ["pixelcnn", "row-lstm", "diagonal-bilstm"] {
        assert_thread_count_changes_nothing(model, &[model, "--batch-size", "16"]);
    }
}

#[test]
fn gans_train_alike_on_any_thread_count() {
    for model in ["gan", "dcgan", "cgan", "infogan"] {
        assert_thread_count_changes_nothing(model, &[model]);
    }
    for run_file in ["cyclegan-invert", "stargan-digits", "wgan-gp"] {
        let config = format!(
            "{}/../../models/{run_file}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        assert_thread_count_changes_nothing(run_file, &["--config", &config]);
    }
    // The Progressive GAN's run file with phases of one image: the first step at 4 x 4, the
    // second at 32 x 32.
    let tmp = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(format!(
        "{}/../../models/progan.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let text = shipped
        .replace("stable_images = 24_000", "stable_images = 1")
        .replace("fade_images = 24_000", "fade_images = 1");
    assert!(text.contains("stable_images = 1\n") && text.contains("fade_images = 1\n"));
    let config = run_file(tmp.path().join("progan.toml"), text);
    assert_thread_count_changes_nothing("progan", &["--config", s(&config)]);
    // The text-to-image GAN with an encoder stage of one step: step 1 is the GAN's; Puzzle-GAN's
    // second step is its first G step.
    let shipped = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/../../models/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let text = shipped("text2image").replace("encoder_images = 48000", "encoder_images = 1");
    assert!(text.contains("encoder_images = 1\n"));
    let config = run_file(tmp.path().join("text2image.toml"), text);
    assert_thread_count_changes_nothing("text2image", &["--config", s(&config)]);
    let config = run_file(tmp.path().join("puzzle.toml"), shipped("puzzle"));
    assert_thread_count_changes_nothing("puzzle", &["--config", s(&config)]);
}

/// A DCGAN 8 wide trained for one epoch of 64 digits: a GAN checkpoint for the export tests.
fn tiny_dcgan_checkpoint(dir: &Path) -> PathBuf {
    let cfg = run_file(dir.join("dcgan.toml"), "model = \"dcgan\"\n[train]\nlimit = 64\nbatch_size = 32\nepochs = 1\nsample_count = 4\n[model_config]\nngf = 8\nndf = 8\n");
    let out = dir.join("run");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
    out.join("checkpoints/last.safetensors")
}

/// `export --sampling-only` leaves a GAN's discriminator out: the file is smaller, samples and
/// evaluates bit-identically to the whole export, says what it left out, cannot be resumed;
/// and only the networks a file says it left out may be missing.
#[test]
fn a_sampling_only_export_leaves_the_discriminator_out_and_samples_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_dcgan_checkpoint(tmp.path());
    let whole = tmp.path().join("whole.safetensors");
    let slim = tmp.path().join("slim.safetensors");
    ok(run(&["export", "--averaged", s(&ck), s(&whole)]));
    let said = stdout(&ok(run(&[
        "export",
        "--averaged",
        "--sampling-only",
        s(&ck),
        s(&slim),
    ])));
    assert!(said.contains("left out `discriminator`"), "{said}");

    // Smaller, no discriminator tensor, the omission in the metadata and in `inspect`.
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&slim) < size(&whole),
        "{} vs {}",
        size(&slim),
        size(&whole)
    );
    let kept = Checkpoint::load(&slim, &Device::Cpu).unwrap();
    assert!(kept
        .tensors
        .keys()
        .all(|n| !n.starts_with("discriminator.")));
    assert!(kept.tensors.keys().any(|n| n.starts_with("generator.")));
    assert_eq!(kept.meta("genzoo.omitted"), Some("discriminator"));
    let i = stdout(&ok(run(&["inspect", s(&slim)])));
    assert!(
        i.contains("left out (training only, --sampling-only): `discriminator`"),
        "{i}"
    );
    // Exporting the exported file the same way (shipped files are re-exported) changes nothing.
    let again = tmp.path().join("again.safetensors");
    ok(run(&[
        "export",
        "--averaged",
        "--sampling-only",
        s(&slim),
        s(&again),
    ]));
    assert_eq!(weights(&again), weights(&slim));
    let again = Checkpoint::load(&again, &Device::Cpu).unwrap();
    assert_eq!(again.meta("genzoo.omitted"), Some("discriminator"));
    assert_eq!(again.meta("genzoo.weights"), Some("averaged"));

    // Bit-identical samples and the same evaluation.
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    ok(run(&[
        "sample",
        s(&whole),
        "-n",
        "8",
        "--seed",
        "3",
        "--out",
        s(&a),
    ]));
    ok(run(&[
        "sample",
        s(&slim),
        "-n",
        "8",
        "--seed",
        "3",
        "--out",
        s(&b),
    ]));
    let same = std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap();
    assert!(same, "the stripped file samples other images");
    // Without --averaged (models without a weight average export so), the file keeps the
    // average beside the weights and samples with it as the checkpoint does.
    let slim_raw = tmp.path().join("slim-raw.safetensors");
    ok(run(&["export", "--sampling-only", s(&ck), s(&slim_raw)]));
    ok(run(&[
        "sample",
        s(&slim_raw),
        "-n",
        "8",
        "--seed",
        "3",
        "--out",
        s(&b),
    ]));
    let same = std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap();
    assert!(
        same,
        "the stripped file without --averaged samples other images"
    );
    let eval = |p: &Path| stdout(&ok(run(&["eval", s(p), "--json", "--samples", "64"])));
    let (e_whole, e_slim) = (eval(&whole), eval(&slim));
    let figures = |e: &str| {
        let mut v: Value = serde_json::from_str(e).unwrap();
        v.as_object_mut().unwrap().remove("checkpoint");
        v
    };
    assert_eq!(figures(&e_whole), figures(&e_slim));

    // Nothing that needs the discriminator takes the file.
    fails_with(
        &["train", "dcgan", "--resume", s(&slim)],
        &["slim.safetensors leaves out `discriminator`", "not resumed"],
    );

    // A file that lacks a discriminator tensor without saying so is refused by its name.
    let mut lacking = Checkpoint::load(&whole, &Device::Cpu).unwrap();
    let d: String = lacking
        .tensors
        .keys()
        .filter(|n| n.starts_with("discriminator."))
        .min()
        .unwrap()
        .clone();
    lacking.tensors.remove(&d);
    let lacking_path = tmp.path().join("lacking.safetensors");
    lacking.save(&lacking_path).unwrap();
    for args in [
        vec!["sample", s(&lacking_path), "--out", s(&a)],
        vec!["export", "--sampling-only", s(&lacking_path), s(&b)],
    ] {
        fails_with(
            &args,
            &[
                "lacking.safetensors",
                "missing tensor(s)",
                &format!("`{d}`"),
            ],
        );
    }

    // A file that left the discriminator out still needs every other tensor.
    let mut broken = kept.clone();
    let g: String = broken
        .tensors
        .keys()
        .filter(|n| n.starts_with("generator."))
        .min()
        .unwrap()
        .clone();
    broken.tensors.remove(&g);
    let broken_path = tmp.path().join("broken.safetensors");
    broken.save(&broken_path).unwrap();
    fails_with(
        &["sample", s(&broken_path), "--out", s(&a)],
        &["broken.safetensors", "missing tensor(s)", &format!("`{g}`")],
    );

    // And it may say it left out only a training-only network.
    let mut claims = kept.clone();
    claims
        .metadata
        .insert("genzoo.omitted".into(), "discriminator,generator".into());
    for name in claims.tensors.keys().cloned().collect::<Vec<_>>() {
        if name.starts_with("generator.") {
            claims.tensors.remove(&name);
        }
    }
    let claims_path = tmp.path().join("claims.safetensors");
    claims.save(&claims_path).unwrap();
    fails_with(
        &["eval", s(&claims_path), "--samples", "64"],
        &["`genzoo.omitted` says `generator` was left out", "needs it"],
    );
}

/// `export --half` stores the weight matrices and kernels as f16 and the vectors as f32: the
/// file is about half the size, each weight within half precision's rounding of the f32 export,
/// and the evaluation's figures agree; a weight beyond half precision's range is refused by its
/// tensor's name with nothing written.
#[test]
fn a_half_precision_export_is_half_the_size_and_evaluates_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_dcgan_checkpoint(tmp.path());
    let (whole, half) = (
        tmp.path().join("whole.safetensors"),
        tmp.path().join("half.safetensors"),
    );
    ok(run(&["export", "--averaged", s(&ck), s(&whole)]));
    let said = stdout(&ok(run(&[
        "export",
        "--averaged",
        "--half",
        s(&ck),
        s(&half),
    ])));
    assert!(said.contains("stored in half precision (f16)"), "{said}");

    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(
        size(&half) < 0.6 * size(&whole),
        "{} vs {}",
        size(&half),
        size(&whole)
    );
    let (w, h) = (
        Checkpoint::load(&whole, &Device::Cpu).unwrap(),
        Checkpoint::load(&half, &Device::Cpu).unwrap(),
    );
    assert_eq!(
        w.tensors.keys().collect::<std::collections::BTreeSet<_>>(),
        h.tensors.keys().collect()
    );
    let mut halved = 0;
    for (name, t) in &h.tensors {
        let expected = match t.rank() {
            0 | 1 => candle_core::DType::F32,
            _ => candle_core::DType::F16,
        };
        assert_eq!(t.dtype(), expected, "{name}");
        halved += usize::from(t.rank() >= 2);
        let values = |t: &candle_core::Tensor| {
            t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        for (a, b) in values(&w.tensors[name]).iter().zip(values(t)) {
            // Half a unit in the 11th significant bit; below f16's normal range, its spacing.
            let tolerance = (a.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
            assert!((a - b).abs() <= tolerance, "{name}: {a} stored as {b}");
        }
    }
    assert!(halved >= 4, "only {halved} tensors stored in half");
    let i = stdout(&ok(run(&["inspect", s(&half)])));
    assert!(i.contains("f16"), "{i}");

    let eval = |p: &Path| -> Value {
        serde_json::from_str(&stdout(&ok(run(&[
            "eval",
            s(p),
            "--json",
            "--samples",
            "64",
        ]))))
        .unwrap()
    };
    let (e_whole, e_half) = (eval(&whole), eval(&half));
    let fd = |e: &Value| {
        e["sample_quality"]["samples"]["frechet_distance"]
            .as_f64()
            .unwrap()
    };
    let (a, b) = (fd(&e_whole), fd(&e_half));
    assert!(
        (a - b).abs() <= 1e-3 * a,
        "Frechet distance {a} (f32) vs {b} (f16)"
    );

    // A weight half precision cannot hold is refused by name, and nothing is written.
    let mut huge = w.clone();
    let name = huge
        .tensors
        .iter()
        .filter(|(_, t)| t.rank() >= 2)
        .map(|(n, _)| n.clone())
        .min()
        .unwrap();
    let t = &huge.tensors[&name];
    huge.tensors
        .insert(name.clone(), (t.ones_like().unwrap() * 1e5).unwrap());
    let huge_path = tmp.path().join("huge.safetensors");
    huge.save(&huge_path).unwrap();
    let target = tmp.path().join("not-written.safetensors");
    fails_with(
        &["export", "--half", s(&huge_path), s(&target)],
        &[
            "huge.safetensors",
            &format!("`{name}`"),
            "beyond half precision's range",
        ],
    );
    assert!(!target.exists());
}

/// `--dtype f16` runs the convolutions and dense layers in f16 (on the CPU through Candle's f16
/// ops) and keeps every saved tensor f32; bf16 on the CPU and unknown names are refused.
#[test]
fn reduced_precision_trains_and_samples_with_f32_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(
        tmp.path().join("dcgan.toml"),
        "model = \"dcgan\"\n[train]\nlimit = 64\nbatch_size = 32\nepochs = 1\nlog_every = 1\nsample_count = 4\n[model_config]\nimage_size = 32\nngf = 8\nndf = 8\n",
    );
    let (half, full) = (tmp.path().join("half"), tmp.path().join("full"));
    ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&half),
        "--dtype",
        "f16",
    ]));
    ok(run(&["train", "--config", s(&cfg), "--out", s(&full)]));
    let ck = half.join("checkpoints/last.safetensors");
    let saved = Checkpoint::load(&ck, &Device::Cpu).unwrap();
    assert!(!saved.tensors.is_empty());
    for (name, t) in &saved.tensors {
        assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
    }
    // The first step's losses (the same weights and batch, before any update) differ from
    // f32's, so the products did run in f16, by less than f16's precision allows.
    let (h, f) = (
        step_losses_of(&half, "d_loss"),
        step_losses_of(&full, "d_loss"),
    );
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|(_, v)| v.is_finite()));
    let gap = (h[0].1 - f[0].1).abs() / f[0].1.abs();
    assert!(gap > 0.0 && gap < 1e-2, "{} vs {}", h[0].1, f[0].1);
    let png = tmp.path().join("half.png");
    ok(run(&[
        "sample",
        s(&ck),
        "-n",
        "4",
        "--dtype",
        "f16",
        "--out",
        s(&png),
    ]));
    assert!(png.exists());
    fails_with(
        &["sample", s(&ck), "--dtype", "bf16"],
        &["--dtype bf16 needs a GPU", "f16 or f32"],
    );
    fails_with(
        &["sample", s(&ck), "--dtype", "fp8"],
        &["--dtype \"fp8\"", "f32, f16 or bf16"],
    );
}
