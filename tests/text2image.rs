//! The text-to-image GAN end to end through the `genzoo` binary: a tiny run on the captioned
//! digits trains its text encoder, then the GAN, saving the encoder stage's checkpoint; resumes
//! exactly in the GAN stage (weights, three optimisers, G's average, the words and captions it
//! has seen); draws a caption and an interpolation between two; reports its text metrics; trains
//! on a user's JSONL captions; and every bad caption or captions file is a clear error.

#[path = "common/cli.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_resumes_exactly, assert_saves, fails_with, ok, png_size, run, run_file, s, stdout,
    step_lines, train_fails_cleanly,
};
use serde_json::Value;

/// 128 digits, 16 per batch, 3 epochs of 8 steps; the encoder learns for the first 160 images
/// (10 steps).
const TINY: &str = "model = \"text2image-gan\"\n[train]\nlimit = 128\nbatch_size = 16\nepochs = 3\nlog_every = 1\nsample_count = 8\n[data]\nhold_out = [\"7:thick\"]\n[model_config]\nngf = 8\nndf = 8\nembed_dim = 16\nprojected_embed_dim = 8\nnoise_dim = 8\nchar_dim = 8\nencoder_width = 16\nencoder_images = 160\n";

fn tiny_config(dir: &Path) -> PathBuf {
    run_file(dir.join("t2i.toml"), TINY)
}

#[test]
fn text2image_trains_its_encoder_then_its_gan_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path());
    let full = tmp.path().join("full");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&full)]));
    let steps = step_lines(&full);
    assert_eq!(steps.len(), 24);
    for (k, v) in steps.iter().enumerate() {
        let encoder = k < 10;
        assert_eq!(v.get("embed_loss").is_some(), encoder, "step {k}: {v}");
        assert_eq!(v.get("d_wrong").is_some(), !encoder, "step {k}: {v}");
    }
    assert!(full.join("checkpoints/stage-00.safetensors").exists());

    // Stop in the GAN stage and resume: the same run, bit for bit.
    let part = tmp.path().join("part");
    let (ck, resumed) = assert_resumes_exactly(&cfg, &full, &part, 15);
    assert_saves(
        &resumed,
        &[
            "text_encoder.",
            "ema.generator.",
            "optimizer.encoder.",
            "optimizer.generator.",
            "optimizer.discriminator.",
            "state.words",
            "state.captions",
        ],
    );

    // A caption, then an interpolation: 2 rows of 5 from thin to thick.
    let png = tmp.path().join("cap.png");
    let caption = "a thin three leaning left";
    ok(run(&[
        "sample",
        s(&ck),
        "--caption",
        caption,
        "-n",
        "4",
        "--nrow",
        "4",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 4 * 34, 2 + 34));
    ok(run(&[
        "sample",
        s(&ck),
        "--caption",
        "a thin seven",
        "--caption-to",
        "a thick seven",
        "-n",
        "10",
        "--steps",
        "5",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 5 * 34, 2 + 2 * 34));
    // Without a caption it draws from the captions it was trained on, also from the exported
    // weights, which keep the words and captions seen (and refuse others).
    ok(run(&["sample", s(&ck), "-n", "4", "--out", s(&png)]));
    let shipped = tmp.path().join("shipped.safetensors");
    ok(run(&["export", s(&ck), s(&shipped)]));
    ok(run(&["sample", s(&shipped), "-n", "4", "--out", s(&png)]));
    // With the average only, in place of the weights: the same samples from a smaller file,
    // and no trained weights for --raw.
    let averaged = tmp.path().join("averaged.safetensors");
    ok(run(&["export", "--averaged", s(&ck), s(&averaged)]));
    let same = tmp.path().join("same.png");
    ok(run(&["sample", s(&averaged), "-n", "4", "--out", s(&same)]));
    assert_eq!(std::fs::read(&png).unwrap(), std::fs::read(&same).unwrap());
    let bytes = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(bytes(&averaged) < bytes(&shipped));
    fails_with(
        &["sample", s(&averaged), "--raw", "--out", s(&same)],
        &["averaged.safetensors holds the weight average only"],
    );
    fails_with(
        &["sample", s(&shipped), "--caption", "purple elephant"],
        &["none of its words"],
    );

    // The text metrics, on 60 test digits' captions.
    let o = ok(run(&[
        "eval",
        s(&ck),
        "--json",
        "--samples",
        "64",
        "--limit",
        "60",
    ]));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let t = &r["text"];
    assert_eq!(t["images"], 60);
    let share = |v: &Value| {
        let x = v.as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{v}");
        x
    };
    share(&t["digit_accuracy"]);
    let traits = t["traits"].as_array().unwrap();
    let names: Vec<&str> = traits.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["thickness", "slant", "size"]);
    traits.iter().for_each(|t| _ = share(&t["accuracy"]));
    let held = t["held_out"].as_array().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["combination"], "7:thick");
    assert_eq!(t["interpolation"]["rows"], 20);
    let rho = t["interpolation"]["mean_spearman"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&rho));
    assert!(r["sample_quality"]["samples"]["frechet_distance"]
        .as_f64()
        .unwrap()
        .is_finite());
}

#[test]
fn user_captions_train_and_bad_captions_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Eight grey squares of two sizes, each with a caption in captions.jsonl.
    let data = tmp.path().join("shapes");
    std::fs::create_dir_all(&data).unwrap();
    let mut lines = String::new();
    for i in 0..8u32 {
        let side = if i % 2 == 0 { 10 } else { 24 };
        let img = image::GrayImage::from_fn(32, 32, |x, y| {
            let inside = (16 - side / 2..16 + side / 2).contains(&x)
                && (16 - side / 2..16 + side / 2).contains(&y);
            image::Luma([if inside { 220 } else { 0 }])
        });
        img.save(data.join(format!("{i}.png"))).unwrap();
        let word = if side == 10 { "small" } else { "large" };
        lines += &format!("{{\"image\": \"{i}.png\", \"caption\": \"a {word} square\"}}\n");
    }
    std::fs::write(data.join("captions.jsonl"), &lines).unwrap();
    let user = TINY
        .replace("limit = 128\n", "")
        .replace("epochs = 3", "epochs = 1")
        .replace("batch_size = 16", "batch_size = 4")
        .replace("hold_out = [\"7:thick\"]", "test_count = 2")
        .replace("encoder_images = 160", "encoder_images = 4\nclasses = 0");
    let cfg = run_file(tmp.path().join("user.toml"), user);
    let out = tmp.path().join("user");
    ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]));
    let ck = out.join("checkpoints/last.safetensors");
    let png = tmp.path().join("square.png");
    ok(run(&[
        "sample",
        s(&ck),
        "--caption",
        "a large square",
        "-n",
        "2",
        "--out",
        s(&png),
    ]));

    // Bad captions.
    fails_with(
        &["sample", s(&ck), "--caption", "   "],
        &["caption is empty"],
    );
    fails_with(
        &["sample", s(&ck), "--caption", "purple elephant"],
        &["purple elephant", "none of its words", "square"],
    );
    fails_with(
        &["sample", s(&ck), "--caption", "a square ☃"],
        &["'☃'", "alphabet"],
    );
    fails_with(
        &["sample", s(&ck), "--caption-to", "a large square"],
        &["--caption-to", "--caption"],
    );
    let other =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/cyclegan-invert.safetensors");
    fails_with(
        &["sample", s(&other), "--caption", "a seven"],
        &["cyclegan", "takes no text"],
    );

    // Bad captions files: a missing image, an empty caption, no captions at all.
    let bad = |name: &str, jsonl: Option<&str>, needles: &[&str]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        image::GrayImage::new(32, 32)
            .save(dir.join("a.png"))
            .unwrap();
        if let Some(text) = jsonl {
            std::fs::write(dir.join("captions.jsonl"), text).unwrap();
        }
        train_fails_cleanly(&cfg, &dir, &tmp.path().join(format!("{name}-run")), needles);
    };
    bad(
        "missing",
        Some("{\"image\": \"gone.png\", \"caption\": \"a square\"}\n"),
        &["captions.jsonl line 1", "gone.png", "does not exist"],
    );
    bad(
        "empty",
        Some("{\"image\": \"a.png\", \"caption\": \"\"}\n"),
        &["line 1", "caption of", "empty"],
    );
    bad(
        "none",
        None,
        &["holds no captions", "captions.jsonl", "text_c10"],
    );
    let held = run_file(
        tmp.path().join("held.toml"),
        TINY.replace("7:thick", "7:purple"),
    );
    fails_with(
        &[
            "train",
            "--config",
            s(&held),
            "--out",
            s(&tmp.path().join("held")),
        ],
        &["hold_out", "7:purple", "unknown bin"],
    );
}
