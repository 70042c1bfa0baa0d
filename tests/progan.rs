//! The Progressive GAN end to end through the `genzoo` binary: a tiny run grows 4 -> 32
//! through its phases (counted in images), saves a checkpoint at the end of every phase,
//! resumes exactly from the middle of a fade, samples its stages, evaluates (Fréchet and sliced
//! Wasserstein distances at the stage it reached); the 64 x 64 RGB run file trains through all
//! its stages on a generated image folder; and bad configurations and checkpoints of another
//! stage layout are clear errors.

#[path = "common/cli.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_resumes_exactly, assert_saves, fails_with, ok, png_size, run, run_file, s, stdout,
    step_lines,
};
use serde_json::Value;

/// 32 x 32 (the padded digits), phases of 64 images, 16 per batch: 4 steps per phase; 128
/// digits, 4 epochs of 8 steps.
const TINY: &str = "model = \"progan\"\n[train]\nlimit = 128\nbatch_size = 16\nepochs = 4\nlog_every = 1\nsample_count = 8\nlr = 1e-3\nbeta1 = 0.0\nbeta2 = 0.99\n[model_config]\nresolution = 32\nlatent_dim = 8\ndepths = [8, 8, 4, 4]\nstable_images = 64\nfade_images = 64\n";

fn tiny_config(dir: &Path) -> PathBuf {
    run_file(dir.join("progan.toml"), TINY)
}

#[test]
fn progan_grows_resumes_in_a_fade_and_measures_its_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path());
    let full = tmp.path().join("full");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&full)]));
    let steps = step_lines(&full);
    assert_eq!(steps.len(), 32);
    // Step k has seen 16 k images: stable 4 (k < 4), fade 8 (alpha 16 (k - 4) / 64), stable 8,
    // fade 16, stable 16, fade 32, then 32 stable to the end.
    let phase = |k: usize| {
        let v = &steps[k];
        (
            v["resolution"].as_f64().unwrap(),
            v["alpha"].as_f64().unwrap(),
        )
    };
    assert_eq!(phase(0), (4.0, 1.0));
    assert_eq!(phase(3), (4.0, 1.0));
    assert_eq!(phase(4), (8.0, 0.0));
    assert_eq!(phase(6), (8.0, 0.5));
    assert_eq!(phase(8), (8.0, 1.0));
    assert_eq!(phase(13), (16.0, 0.25));
    assert_eq!(phase(16), (16.0, 1.0));
    assert_eq!(phase(22), (32.0, 0.5));
    assert_eq!(phase(31), (32.0, 1.0));
    for key in ["d_loss", "g_loss", "gp", "drift", "wasserstein"] {
        assert!(
            steps.iter().all(|v| v[key].as_f64().unwrap().is_finite()),
            "{key}"
        );
    }
    // One checkpoint at the end of each of the six phases before the last.
    for stage in 0..6 {
        let p = full.join(format!("checkpoints/stage-{stage:02}.safetensors"));
        assert!(p.exists(), "{}", p.display());
    }

    // Stop in the middle of the fade to 32 (step 22: alpha 0.5), resume: the same run, bit for
    // bit (weights, both optimisers' moments, G's average, the phase).
    let part = tmp.path().join("part");
    let (ck, resumed) = assert_resumes_exactly(&cfg, &full, &part, 22);
    assert_saves(
        &resumed,
        &[
            "ema.generator.",
            "optimizer.generator.",
            "optimizer.discriminator.",
            "state.phase",
        ],
    );

    // Its stages: one row of 4 per resolution (4, 8, 16, 32), each at the full 32 x 32.
    let png = tmp.path().join("stages.png");
    ok(run(&[
        "sample",
        s(&ck),
        "--mode",
        "stages",
        "--nrow",
        "4",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 4 * 34, 2 + 4 * 34));
    // A checkpoint of the 8 x 8 fade draws two rows: it samples at the stage it reached.
    let png8 = tmp.path().join("stages8.png");
    let fade8 = full.join("checkpoints/stage-01.safetensors");
    ok(run(&[
        "sample",
        s(&fade8),
        "--mode",
        "stages",
        "--nrow",
        "4",
        "--out",
        s(&png8),
    ]));
    assert_eq!(png_size(&png8), (2 + 4 * 34, 2 + 2 * 34));

    // Evaluated at its own stage, beside the real digits brought to the same one.
    let eval = |ck: &Path| -> Value {
        let o = ok(run(&["eval", s(ck), "--json", "--samples", "64"]));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let r = eval(&ck);
    let q = &r["sample_quality"];
    let fd = q["samples"]["frechet_distance"].as_f64().unwrap();
    assert!(fd.is_finite() && fd > q["floor"]["frechet_distance"].as_f64().unwrap());
    let levels = q["sliced_wasserstein"]["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "Laplacian levels at 32 and 16: {levels:?}");
    for (level, side) in levels.iter().zip([32, 16]) {
        let (at, samples, floor) = (
            level[0].as_u64().unwrap(),
            level[1].as_f64().unwrap(),
            level[2].as_f64().unwrap(),
        );
        assert_eq!(at, side);
        assert!(
            samples > floor && floor > 0.0,
            "{side}: {samples} vs floor {floor}"
        );
    }
    // `--raw`: G's trained weights rather than their average, which the checkpoint also holds.
    let raw: Value = serde_json::from_str(&stdout(&ok(run(&[
        "eval",
        s(&ck),
        "--json",
        "--samples",
        "64",
        "--raw",
    ]))))
    .unwrap();
    let raw_fd = raw["sample_quality"]["samples"]["frechet_distance"]
        .as_f64()
        .unwrap();
    assert!(
        raw_fd.is_finite() && raw_fd != fd,
        "raw {raw_fd} vs averaged {fd}"
    );
    // At 4 x 4 the real digits are blocks of 4 x 4 pixels too: their floor is of such blocks.
    let r4 = eval(&full.join("checkpoints/stage-00.safetensors"));
    let floor4 = r4["sample_quality"]["floor"]["frechet_distance"]
        .as_f64()
        .unwrap();
    let floor32 = q["floor"]["frechet_distance"].as_f64().unwrap();
    // The same 64 training digits against the same test digits: the floors differ only if the
    // real digits were brought to each checkpoint's stage.
    assert!(
        floor4 != floor32,
        "the 4 x 4 floor is of blocky digits: {floor4} vs {floor32}"
    );
}

#[test]
fn bad_configurations_and_other_stage_layouts_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = |name: &str, from: &str, to: &str, needles: &[&str]| {
        assert!(TINY.contains(from), "{from}");
        let cfg = run_file(
            tmp.path().join(format!("{name}.toml")),
            TINY.replace(from, to),
        );
        let out = tmp.path().join(name);
        fails_with(&["train", "--config", s(&cfg), "--out", s(&out)], needles);
        assert!(
            !out.join("checkpoints").exists(),
            "{name} left a checkpoint"
        );
    };
    bad(
        "side",
        "resolution = 32",
        "resolution = 24",
        &["power of two", "24"],
    );
    bad(
        "stable",
        "stable_images = 64",
        "stable_images = 0",
        &["phase lengths must be positive", "stable_images 0"],
    );
    bad(
        "fade",
        "fade_images = 64",
        "fade_images = 0",
        &["fade_images 0"],
    );
    bad(
        "depths",
        "depths = [8, 8, 4, 4]",
        "depths = [8, 8]",
        &["4 levels", "depths has 2 entries"],
    );
    // A checkpoint of the 32 x 32 layout read as a 64 x 64 model: the missing stage is named.
    let cfg = tiny_config(tmp.path());
    let out = tmp.path().join("run");
    ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--max-steps",
        "2",
    ]));
    // Its weights alone, as a file of the zoo's would come (no run file, no training state).
    let ck = tmp.path().join("plain.safetensors");
    let trained = layers::Checkpoint::load(
        &out.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let plain: std::collections::HashMap<String, candle_core::Tensor> = trained
        .tensors
        .into_iter()
        .filter(|(k, _)| k.starts_with("generator.") || k.starts_with("discriminator."))
        .collect();
    candle_core::safetensors::save(&plain, &ck).unwrap();
    let same = tmp.path().join("same.png");
    ok(run(&[
        "sample",
        s(&ck),
        "--model",
        "progan",
        "--config",
        s(&cfg),
        "--out",
        s(&same),
    ]));
    let wider = run_file(
        tmp.path().join("wider.toml"),
        TINY.replace("resolution = 32", "resolution = 64")
            .replace("[8, 8, 4, 4]", "[8, 8, 4, 4, 4]"),
    );
    fails_with(
        &[
            "sample",
            s(&ck),
            "--model",
            "progan",
            "--config",
            s(&wider),
            "--out",
            s(&tmp.path().join("w.png")),
        ],
        &["scaleLayers.3"],
    );
    // Stages are a Progressive GAN's: another model says so.
    let gan = run_file(
        tmp.path().join("gan.toml"),
        "model = \"gan\"\n[train]\nlimit = 64\nbatch_size = 32\nepochs = 1\n",
    );
    let gan_out = tmp.path().join("gan");
    ok(run(&["train", "--config", s(&gan), "--out", s(&gan_out)]));
    fails_with(
        &[
            "sample",
            s(&gan_out.join("checkpoints/last.safetensors")),
            "--mode",
            "stages",
            "--out",
            s(&tmp.path().join("g.png")),
        ],
        &["model `gan`", "does not grow in stages"],
    );
}

/// The 64 x 64 RGB run file, its phases cut to 8 images (one batch) each, trains through all
/// five resolutions on a folder of generated colour images.
#[test]
fn the_64_pixel_rgb_run_file_trains_through_every_stage_on_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("faces");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..8u8 {
        let img = image::RgbImage::from_fn(80, 72, |x, y| {
            image::Rgb([
                (x as u8).wrapping_mul(3).wrapping_add(i * 20),
                (y as u8).wrapping_mul(2),
                255 - i * 25,
            ])
        });
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    let shipped = std::fs::read_to_string(format!(
        "{}/../../models/progan-faces-64.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let text = shipped
        .replace("stable_images = 300_000", "stable_images = 8")
        .replace("fade_images = 300_000", "fade_images = 8")
        .replace("batch_size = 32", "batch_size = 8")
        .replace("epochs = 100", "epochs = 10")
        .replace("log_every = 50", "log_every = 1")
        .replace(
            "depths = [256, 256, 256, 128, 64]",
            "depths = [16, 16, 16, 8, 4]",
        )
        .replace("latent_dim = 256", "latent_dim = 16");
    assert!(text.contains("stable_images = 8") && text.contains("[16, 16, 16, 8, 4]"));
    let cfg = run_file(tmp.path().join("faces.toml"), text);
    let out = tmp.path().join("run");
    ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        s(&folder),
        "--out",
        s(&out),
    ]));
    let sides: Vec<f64> = step_lines(&out)
        .iter()
        .map(|v| v["resolution"].as_f64().unwrap())
        .collect();
    assert_eq!(
        sides,
        [4.0, 8.0, 8.0, 16.0, 16.0, 32.0, 32.0, 64.0, 64.0, 64.0]
    );
    let png = tmp.path().join("faces.png");
    ok(run(&[
        "sample",
        s(&out.join("checkpoints/last.safetensors")),
        "-n",
        "4",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 4 * 66, 2 + 66));
}
