//! Image-to-image translation end to end through the `genzoo` binary: CycleGAN and StarGAN on
//! synthetic domains of the bundled digits train, resume exactly (image pool, schedule and
//! both optimisers included), evaluate against the true translations, and sample; two-domain
//! folders, attribute files and image folders load, and every bad input is a clear error that
//! leaves nothing behind. Also the WGAN-GP run end to end.

#[path = "common/cli.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    fails_with, log_lines, ok, png_size, run, run_file, s, stderr, stdout,
    train_stopped_and_resumed, weights,
};
use serde_json::Value;

fn json(o: Output) -> Value {
    serde_json::from_str(&stdout(&ok(o))).unwrap()
}

/// A tiny CycleGAN between the digits and `domain_b`, with a pool small enough to fill and
/// swap within the run and a schedule that decays from the second epoch.
fn cyclegan_config(dir: &Path, domain_b: &str) -> PathBuf {
    let cfg = run_file(dir.join("cyclegan.toml"), format!(
            "model = \"cyclegan\"\n[train]\nlimit = 48\nbatch_size = 6\nepochs = 2\nlog_every = 1\nsample_count = 4\nschedule = \"linear\"\ndecay_start = 1\n[data]\ndomain_a = []\ndomain_b = {domain_b}\n[model_config]\nimage_size = 28\nchannels = 1\nngf = 4\nndf = 4\nn_blocks = 1\nn_layers_d = 2\nlambda_identity = 0.0\npool_size = 5\n"
        ));
    cfg
}

/// With `symmetries`, the weights of the quarter turns and mirrors step with a third optimiser
/// at their own rate, logged, checkpointed and resumed exactly like the rest.
#[test]
fn cyclegan_with_symmetries_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = cyclegan_config(tmp.path(), "[{ rotate = 90 }]");
    let text = std::fs::read_to_string(&plain).unwrap();
    let cfg = run_file(
        tmp.path().join("symmetries.toml"),
        format!("{text}symmetries = true\nsymmetry_lr = 0.05\n"),
    );
    let full = tmp.path().join("full");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&full)]));
    let steps = log_lines(&full, "step");
    // The top weight starts at 1/8 and moves.
    let top: Vec<f64> = steps
        .iter()
        .map(|v| v["symmetry_a"].as_f64().unwrap())
        .collect();
    assert!(top.iter().all(|w| (0.125..=1.0).contains(w)), "{top:?}");
    assert!(top.last() > top.first(), "{top:?}");
    let saved = weights(&full.join("checkpoints/last.safetensors"));
    for key in [
        "netG_A.symmetry_logits",
        "optimizer.symmetry.exp_avg.netG_B.symmetry_logits",
    ] {
        assert!(saved.iter().any(|(k, _)| k == key), "{key}");
    }
    let part = tmp.path().join("part");
    let ck = train_stopped_and_resumed(&cfg, &part, 3);
    assert_eq!(log_lines(&part, "step"), steps, "resumed steps differ");
    assert_eq!(
        weights(&ck),
        saved,
        "weights or moments differ after resuming"
    );
}

#[test]
fn cyclegan_trains_resumes_exactly_evaluates_and_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cyclegan_config(tmp.path(), "[\"invert\"]");
    let full = tmp.path().join("full");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&full)]));
    let steps = log_lines(&full, "step");
    // The first 48 of each domain's digits (A: even-numbered, B: odd), 6 per batch.
    assert_eq!(steps.len(), 16);
    for key in [
        "g_loss", "d_loss", "cycle_a", "cycle_b", "d_a", "d_b", "g_a", "g_b",
    ] {
        assert!(
            steps.iter().all(|v| v[key].as_f64().unwrap().is_finite()),
            "{key}"
        );
    }
    // The schedule: constant through epoch 1, then linear to one step above zero.
    let lrs: Vec<f64> = steps.iter().map(|v| v["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs[7], 2e-4);
    assert!(
        lrs[8] < 2e-4 && lrs[15] < lrs[8] && lrs[15] > 0.0,
        "{lrs:?}"
    );
    assert!((lrs[15] - 2e-4 / 9.0).abs() < 1e-12, "{lrs:?}");
    // Six rows of four held-out digits: A, G_A(A), back, B, G_B(B), back.
    assert_eq!(
        png_size(&full.join("samples/epoch-0002.png")),
        (2 + 4 * 30, 2 + 6 * 30)
    );
    let last = full.join("checkpoints/last.safetensors");
    let saved = weights(&last);
    assert!(saved
        .iter()
        .any(|(k, v)| k == "state.pool_a" && v.len() == 5 * 784));

    // Stop after 3 steps (the pools full and swapping), resume: the same run.
    let part = tmp.path().join("part");
    let ck = train_stopped_and_resumed(&cfg, &part, 3);
    assert_eq!(log_lines(&part, "step"), steps, "resumed steps differ");
    assert_eq!(log_lines(&part, "epoch"), log_lines(&full, "epoch"));
    assert_eq!(
        weights(&ck),
        saved,
        "weights, moments or pools differ after resuming"
    );
    // Another seed gives another run: the comparisons above can fail.
    let other = tmp.path().join("other");
    ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&other),
        "--seed",
        "1",
    ]));
    assert_ne!(log_lines(&other, "step"), steps);

    // Evaluation against 1 - x on the first test digits, both ways.
    let r = json(run(&["eval", s(&last), "--json", "--limit", "40"]));
    let t = &r["translation"];
    assert_eq!(t["ground_truth"], true);
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, name) in rows.iter().zip(["a2b", "b2a"]) {
        assert_eq!(row["target"], name);
        assert_eq!(row["translations"], 40);
        let e = row["mean_abs_error"].as_f64().unwrap();
        assert!(e > 0.0 && e < 1.0, "{row}");
        let kept = row["digit_kept"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&kept), "{row}");
    }
    let text = stdout(&ok(run(&["eval", s(&last), "--limit", "10"])));
    assert!(
        text.contains("a2b") && text.contains("digit kept"),
        "{text}"
    );

    // Sampling: inputs, translations, reconstructions.
    let png = tmp.path().join("b2a.png");
    ok(run(&[
        "sample",
        s(&last),
        "--translate",
        "b2a",
        "--from-test",
        "3",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 3 * 30, 2 + 3 * 30));
    // Plain `sample` on a translator translates A to B.
    ok(run(&[
        "sample",
        s(&last),
        "--from-test",
        "2",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 2 * 30, 2 + 3 * 30));
    fails_with(
        &[
            "sample",
            s(&last),
            "--translate",
            "sideways",
            "--out",
            s(&png),
        ],
        &["unknown translation direction `sideways`", "a2b or b2a"],
    );
    fails_with(
        &["sample", s(&last), "--mode", "domains", "--out", s(&png)],
        &["translates between two domains", "--translate"],
    );
    // A shipped file: weights only (no optimiser moments, no pools), and it still translates.
    let shipped = tmp.path().join("cyclegan.safetensors");
    ok(run(&["export", s(&last), s(&shipped)]));
    let names: Vec<String> = weights(&shipped).into_iter().map(|(k, _)| k).collect();
    assert!(names
        .iter()
        .all(|k| !k.starts_with("state.") && !k.starts_with("optimizer.")));
    assert!(names.iter().any(|k| k.starts_with("netG_B.model.")));
    ok(run(&[
        "sample",
        s(&shipped),
        "--translate",
        "a2b",
        "--out",
        s(&png),
    ]));
    // Images of a folder, resized to the model's side.
    let input = tmp.path().join("input");
    std::fs::create_dir(&input).unwrap();
    for i in 0..2u8 {
        image::GrayImage::from_pixel(40, 40, image::Luma([100 * i]))
            .save(input.join(format!("{i}.png")))
            .unwrap();
    }
    ok(run(&[
        "sample",
        s(&last),
        "--input",
        s(&input),
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 2 * 30, 2 + 3 * 30));
}

#[test]
fn stargan_trains_and_reports_attributes_of_every_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path().join("stargan.toml"), "model = \"stargan\"\n[train]\nlimit = 24\nbatch_size = 8\nepochs = 1\nlog_every = 1\nsample_count = 2\n[data]\ntransforms = [{ pad = 2 }, \"rgb\"]\n[[data.attributes]]\nname = \"inverted\"\ntransforms = [\"invert\"]\n[[data.attributes]]\nname = \"rotated\"\ntransforms = [{ rotate = 90 }]\n[[data.attributes]]\nname = \"red\"\ntransforms = [{ tint = [1.0, 0.3, 0.3] }]\n[model_config]\nimage_size = 32\nchannels = 3\ng_conv_dim = 4\nd_conv_dim = 4\ng_repeat_num = 1\nd_repeat_num = 4\nn_critic = 2\n");
    let out = tmp.path().join("run");
    let o = ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
    assert!(
        stderr(&o).contains("[model_config] c_dim = 3"),
        "{}",
        stderr(&o)
    );
    let steps = log_lines(&out, "step");
    assert_eq!(steps.len(), 3);
    // The critic every step, the generator every second.
    let g: Vec<bool> = steps.iter().map(|v| v["g_loss"].is_f64()).collect();
    assert_eq!(g, [false, true, false]);
    assert!(steps
        .iter()
        .all(|v| v["d_loss_gp"].as_f64().unwrap() >= 0.0));
    let epoch = &log_lines(&out, "epoch")[0];
    // The generator's terms average over the one step that recorded them.
    assert_eq!(epoch["train_g_loss"], steps[1]["g_loss"]);
    // Each held-out digit and its three single-attribute flips.
    assert_eq!(
        png_size(&out.join("samples/epoch-0001.png")),
        (2 + 4 * 34, 2 + 2 * 34)
    );
    let last = out.join("checkpoints/last.safetensors");

    // Without an attribute classifier the report says how to get one.
    let r = json(run(&["eval", s(&last), "--json", "--limit", "6"]));
    let t = &r["translation"];
    assert_eq!(t["rows"].as_array().unwrap().len(), 8);
    assert!(t["attribute_classifier"]
        .as_str()
        .unwrap()
        .contains("classifier train --attributes"));
    assert!(t["overall"]["attributes_right"].is_null());
    let attrs = tmp.path().join("attrs.safetensors");
    ok(run(&[
        "classifier",
        "train",
        "--attributes",
        "--config",
        s(&cfg),
        "--epochs",
        "1",
        "--out",
        s(&attrs),
    ]));
    let r = json(run(&[
        "eval",
        s(&last),
        "--json",
        "--limit",
        "6",
        "--attribute-classifier",
        s(&attrs),
    ]));
    let overall = &r["translation"]["overall"];
    assert_eq!(overall["translations"], 48);
    assert_eq!(overall["attributes_right"].as_array().unwrap().len(), 3);
    for key in [
        "mean_abs_error",
        "digit_kept",
        "all_attributes_right",
        "cycle_error",
    ] {
        assert!(overall[key].is_f64(), "{key}: {overall}");
    }
    let split = r["translation"]["digit_kept_by_change"].as_array().unwrap();
    assert_eq!(split.len(), 3);
    assert_eq!(split[1]["attribute"], "rotated");
    let rows = r["translation"]["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(names[0], "none");
    assert_eq!(names[7], "inverted+rotated+red");
    // Every input beside its translation into each of the 8 domains.
    let png = tmp.path().join("domains.png");
    ok(run(&[
        "sample",
        s(&last),
        "--mode",
        "domains",
        "--from-test",
        "2",
        "--out",
        s(&png),
    ]));
    assert_eq!(png_size(&png), (2 + 9 * 34, 2 + 2 * 34));
    fails_with(
        &["sample", s(&last), "--translate", "a2b", "--out", s(&png)],
        &["attribute domains", "--mode domains"],
    );
    fails_with(
        &["eval", s(&last), "--attribute-classifier", s(&last)],
        &["not an attribute classifier"],
    );
}

fn rgb_png(path: &Path, shade: u8) {
    image::RgbImage::from_pixel(36, 36, image::Rgb([shade, 255 - shade, 30]))
        .save(path)
        .unwrap();
}

fn grey_png(path: &Path, shade: u8) {
    image::GrayImage::from_pixel(36, 36, image::Luma([shade]))
        .save(path)
        .unwrap();
}

#[test]
fn two_domain_folders_load_and_their_faults_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("horse2zebra");
    for side in ["trainA", "trainB", "testA", "testB"] {
        std::fs::create_dir_all(data.join(side)).unwrap();
        for i in 0..4u8 {
            rgb_png(&data.join(side).join(format!("{i}.png")), 40 * i);
        }
    }
    let cfg = run_file(tmp.path().join("cg.toml"), "model = \"cyclegan\"\n[train]\nbatch_size = 2\nepochs = 1\nsample_count = 2\n[model_config]\nimage_size = 16\nngf = 4\nndf = 4\nn_blocks = 1\nn_layers_d = 1\n");
    let out = tmp.path().join("run");
    let o = ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]));
    assert!(
        stderr(&o).contains("RGB images: [model_config] channels = 3"),
        "{}",
        stderr(&o)
    );
    let last = out.join("checkpoints/last.safetensors");
    // Without testA/ and testB/ the grids show training images.
    let train_only = tmp.path().join("train-only");
    for side in ["trainA", "trainB"] {
        std::fs::create_dir_all(train_only.join(side)).unwrap();
        rgb_png(&train_only.join(side).join("a.png"), 70);
    }
    let out2 = tmp.path().join("run2");
    ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        s(&train_only),
        "--out",
        s(&out2),
    ]));
    assert!(out2.join("samples/epoch-0001.png").exists());
    // No ground truth for folders: the cycle error only.
    let r = json(run(&["eval", s(&last), "--json", "--data", s(&data)]));
    let row = &r["translation"]["rows"][0];
    assert!(
        row["mean_abs_error"].is_null() && row["cycle_error"].is_f64(),
        "{row}"
    );

    let train = |dir: &Path, out: &str| {
        vec![
            "train".to_string(),
            "--config".into(),
            s(&cfg).into(),
            "--data".into(),
            s(dir).into(),
            "--out".into(),
            s(&tmp.path().join(out)).into(),
        ]
    };
    let fails = |args: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&a, needles);
        // Nothing written for a run that could not start.
        assert!(!Path::new(a[6]).join("log.jsonl").exists());
    };
    // An empty domain, a missing one, domains that differ in channels.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("trainA")).unwrap();
    std::fs::create_dir_all(empty.join("trainB")).unwrap();
    grey_png(&empty.join("trainB/a.png"), 9);
    fails(train(&empty, "e"), &["trainA: no png or jpg images"]);
    let missing = tmp.path().join("missing");
    std::fs::create_dir_all(missing.join("trainA")).unwrap();
    grey_png(&missing.join("trainA/a.png"), 9);
    fails(
        train(&missing, "m"),
        &["has no trainB/ folder", "trainA/, trainB/, testA/, testB/"],
    );
    let mixed = tmp.path().join("mixed");
    for (side, colour) in [("trainA", true), ("trainB", false)] {
        std::fs::create_dir_all(mixed.join(side)).unwrap();
        match colour {
            true => rgb_png(&mixed.join(side).join("a.png"), 5),
            false => grey_png(&mixed.join(side).join("a.png"), 5),
        }
    }
    fails(
        train(&mixed, "x"),
        &["trainA holds RGB images and trainB grayscale", "channels"],
    );
    // Without folders or synthetic domains, a translation model says what it needs.
    fails_with(
        &["train", "cyclegan", "--out", s(&tmp.path().join("n"))],
        &["needs two domains", "domain_a and domain_b", "trainA/"],
    );
    // --translate on a model that does not translate.
    let vae = tmp.path().join("vae");
    ok(run(&["train", "vae", "--max-steps", "1", "--out", s(&vae)]));
    fails_with(
        &[
            "sample",
            s(&vae.join("checkpoints/last.safetensors")),
            "--translate",
            "a2b",
        ],
        &["model `vae`, which does not translate images"],
    );
}

#[test]
fn attribute_files_train_stargan_and_their_faults_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("celeba");
    std::fs::create_dir_all(data.join("img_align_celeba")).unwrap();
    let mut lines = vec![
        "6".to_string(),
        "Black_Hair Blond_Hair Male Young".to_string(),
    ];
    for i in 0..6u8 {
        let name = format!("00000{i}.jpg");
        let img = image::RgbImage::from_pixel(20, 24, image::Rgb([40 * i, 30, 200]));
        img.save(data.join("img_align_celeba").join(&name)).unwrap();
        let v = |on: bool| if on { " 1" } else { "-1" };
        lines.push(format!(
            "{name} {} {} {} {}",
            v(i % 2 == 0),
            v(i % 2 == 1),
            v(i < 3),
            v(true)
        ));
    }
    std::fs::write(data.join("list_attr_celeba.txt"), lines.join("\n")).unwrap();
    let cfg = run_file(tmp.path().join("sg.toml"), "model = \"stargan\"\n[train]\nbatch_size = 2\nepochs = 1\nlog_every = 1\nsample_count = 2\n[data]\ntest_count = 2\n[model_config]\nimage_size = 16\ng_conv_dim = 4\nd_conv_dim = 4\ng_repeat_num = 1\nd_repeat_num = 3\n");
    let out = tmp.path().join("run");
    let args = |attrs: &str, out: &Path| -> Vec<String> {
        [
            "train",
            "--config",
            s(&cfg),
            "--data",
            s(&data),
            "--attrs",
            attrs,
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args("Blond_Hair,Male", &out);
    let o = ok(run(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(stderr(&o).contains("c_dim = 2"), "{}", stderr(&o));
    // Four training images, two held out: two steps.
    assert_eq!(log_lines(&out, "step").len(), 2);
    let bad = |attrs: &str, needles: &[&str]| {
        let a = args(attrs, &tmp.path().join("bad"));
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), needles);
        assert!(!tmp.path().join("bad/log.jsonl").exists());
    };
    bad(
        "Red_Hair",
        &[
            "unknown attribute `Red_Hair`",
            "Black_Hair, Blond_Hair, Male, Young",
        ],
    );
    let mut broken = lines.clone();
    broken[4] = "000002.jpg 1 -1".into();
    std::fs::write(data.join("list_attr_celeba.txt"), broken.join("\n")).unwrap();
    bad(
        "Male",
        &["list_attr_celeba.txt: line 5 has 3 columns; expected 5"],
    );
}

/// WGAN-GP's critic loss is negative: the collapse stop, which watches a loss bounded below
/// by zero, must leave it alone (it used to stop every WGAN-GP run after `collapse_steps`).
#[test]
fn wgan_gp_trains_past_the_collapse_window() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("wgan.toml");
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/wgan-gp.toml"),
    )
    .unwrap();
    let short = file
        .replace("epochs = 50", "epochs = 1")
        .replace(
            "log_every = 20",
            "limit = 320\nlog_every = 1\nsample_count = 0",
        )
        .replace("[gan]", "[gan]\ncollapse_steps = 3");
    std::fs::write(&cfg, short).unwrap();
    let out = tmp.path().join("run");
    ok(run(&["train", "--config", s(&cfg), "--out", s(&out)]));
    let steps = log_lines(&out, "step");
    assert_eq!(steps.len(), 5);
    assert!(steps
        .iter()
        .all(|v| v["d_loss"].as_f64().unwrap().is_finite()));
    let last = out.join("checkpoints/last.safetensors");
    let r = json(run(&["eval", s(&last), "--json", "--samples", "50"]));
    assert!(r["sample_quality"]["samples"]["frechet_distance"]
        .as_f64()
        .unwrap()
        .is_finite());
}

/// `genzoo train dcgan --data FOLDER_OF_RGB_IMAGES` used to train a grayscale model without a
/// word: the channels now come from the images, and the log says so; a run file that sets
/// them wins, and the images are converted.
#[test]
fn an_image_folder_gives_its_channels_and_the_log_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    std::fs::create_dir(&data).unwrap();
    for i in 0..8u8 {
        rgb_png(&data.join(format!("{i}.png")), 30 * i);
    }
    let out = tmp.path().join("rgb");
    let o = ok(run(&[
        "train",
        "dcgan",
        "--data",
        s(&data),
        "--max-steps",
        "1",
        "--out",
        s(&out),
    ]));
    let err = stderr(&o);
    assert!(
        err.contains("holds RGB images: [model_config] channels = 3"),
        "{err}"
    );
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("channels = 3"), "{config}");
    let cfg = run_file(
        tmp.path().join("grey.toml"),
        "model = \"dcgan\"\n[model_config]\nchannels = 1\n",
    );
    let out = tmp.path().join("grey");
    let o = ok(run(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        s(&data),
        "--max-steps",
        "1",
        "--out",
        s(&out),
    ]));
    assert!(
        stderr(&o).contains("channels = 1: the images are converted"),
        "{}",
        stderr(&o)
    );
}
