//! `genzoo convert` on checkpoints saved as each reference project saves them (fixtures of
//! `scripts/make_convert_fixtures.py`, read here without Python): junyanz's CycleGAN networks
//! (zip, and a legacy-format generator with old InstanceNorm running statistics), yunjey's
//! StarGAN G (legacy format) and D, pytorch/examples' DCGAN netG with DataParallel's `module.`, a
//! pytorch_GAN_zoo checkpoint with its weight average, a Lightning-style wrapped VAE, a plain
//! safetensors file, and some of these pickled again at protocols 4 and 5. Each converted file is loaded as `sample` and `eval` load it and reproduces
//! the reference's forward pass to 1e-5 (`--nocapture` prints the largest differences); bad
//! inputs are one-line errors naming the file, the key and the shapes, with nothing left behind.

#[path = "common/cli.rs"]
mod common;
#[path = "common/parity.rs"]
mod parity;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use common::{fails_with, ok, run, s, stdout};
use layers::gan::{to_tanh_range, to_unit_range, Adversarial, GeneratorInput};
use layers::train::checkpoint::load_into_varmap;
use layers::{Checkpoint, Target};
use parity::Tally;
use runner::config::RunConfig;
use runner::run::checkpoint::{load_for_sampling, META_CONFIG};

/// `tests/fixtures/convert/NAME`.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/convert")
        .join(name)
}

/// The reference forward passes.
fn forward() -> HashMap<String, Tensor> {
    Checkpoint::load(&fixture("forward.safetensors"), &Device::Cpu)
        .unwrap()
        .tensors
}

/// Converts `files` for `model` into `dir/NAME.safetensors` (with `extra` arguments) and
/// returns the file and what the command printed.
fn convert(
    dir: &Path,
    name: &str,
    files: &[&str],
    model: &str,
    extra: &[&str],
) -> (PathBuf, String) {
    let out = dir.join(format!("{name}.safetensors"));
    let mut args = vec!["convert"];
    args.extend(files);
    args.extend(["--model", model, "--out", s(&out)]);
    args.extend(extra);
    let printed = stdout(&ok(run(&args)));
    (out, printed)
}

fn fx(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

/// The converted file's `[model_config]` as the model's `Config`.
fn config<T: serde::de::DeserializeOwned>(ck: &Checkpoint) -> T {
    let run = RunConfig::from_json(ck.meta(META_CONFIG).unwrap()).unwrap();
    runner::registry::model_config(&run.model_config, &run.model).unwrap()
}

/// A model built from a converted file's config, its variables loaded from `tensors`.
fn build<M>(
    tensors: &HashMap<String, Tensor>,
    new: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<M>,
) -> Result<M> {
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let m = new(vb)?;
    load_into_varmap(&varmap, tensors, Path::new("converted"))?;
    Ok(m)
}

/// The file's tensors with its weight average (`ema.X`) in place of `X`.
fn averaged(ck: &Checkpoint) -> HashMap<String, Tensor> {
    let mut t = ck.tensors.clone();
    for (k, v) in &ck.tensors {
        if let Some(name) = k.strip_prefix("ema.") {
            t.insert(name.to_string(), v.clone());
        }
    }
    t
}

/// Every one of `needles` is in what the command printed.
fn assert_printed(printed: &str, needles: &[&str]) {
    for needle in needles {
        assert!(printed.contains(needle), "{needle:?} not in:\n{printed}");
    }
}

#[test]
fn dcgan_netg_with_data_parallel_prefix_matches_pytorch_examples() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (out, printed) = convert(
        tmp.path(),
        "dcgan",
        &[&fx("netG_epoch_24.pth")],
        "dcgan",
        &[],
    );
    assert_printed(
        &printed,
        &[
            "`module.` removed from 19 keys",
            "nz = 8",
            "ngf = 4",
            "image_size = 32",
            "ndf = 64 (not in the weights",
            "discriminator is not in the files",
            "module.main.1.num_batches_tracked",
        ],
    );
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    assert_eq!(ck.meta("genzoo.model"), Some("dcgan"));
    assert_eq!(ck.meta("genzoo.converted_from"), Some("netG_epoch_24.pth"));
    assert_eq!(
        ck.meta("genzoo.converted_initialised"),
        Some("discriminator")
    );
    let cfg: gan_variants::dcgan::Config = config(&ck);
    let m = build(&ck.tensors, |vb| gan_variants::dcgan::Dcgan::new(&cfg, vb))?;
    let f = forward();
    let input = GeneratorInput {
        noise: f["dcgan.z"].clone(),
        classes: None,
        codes: None,
    };
    let mut tally = Tally::default();
    tally.close(
        "outputs",
        "G(z)",
        &m.generate(&input, false)?,
        &f["dcgan.G"],
        1e-5,
    )?;
    tally.print("dcgan netG_epoch_24.pth");
    // `sample` and `eval` take the file as it is.
    let png = tmp.path().join("samples.png");
    ok(run(&["sample", s(&out), "-n", "4", "--out", s(&png)]));
    assert!(png.exists());
    ok(run(&["eval", s(&out), "--samples", "16", "--limit", "16"]));
    Ok(())
}

#[test]
fn a_plain_safetensors_file_converts_like_the_pth() -> Result<()> {
    // What the Python converter genzoo had before this command wrote: the keys as they are.
    let tmp = tempfile::tempdir()?;
    let (dcgan, _) = convert(
        tmp.path(),
        "dcgan",
        &[&fx("netG_epoch_24.pth")],
        "dcgan",
        &[],
    );
    let mut plain = Checkpoint::default();
    for (k, v) in Checkpoint::load(&dcgan, &Device::Cpu)?.tensors {
        if let Some(key) = k.strip_prefix("generator.") {
            plain.tensors.insert(key.to_string(), v);
        }
    }
    let src = tmp.path().join("netG.safetensors");
    plain.save(&src)?;
    let (out, printed) = convert(tmp.path(), "again", &[s(&src)], "dcgan", &[]);
    assert!(
        printed.contains("netG.safetensors -> generator"),
        "{printed}"
    );
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    let cfg: gan_variants::dcgan::Config = config(&ck);
    let m = build(&ck.tensors, |vb| gan_variants::dcgan::Dcgan::new(&cfg, vb))?;
    let f = forward();
    let input = GeneratorInput {
        noise: f["dcgan.z"].clone(),
        classes: None,
        codes: None,
    };
    parity::assert_close("G(z)", &m.generate(&input, false)?, &f["dcgan.G"], 1e-5)?;
    // genzoo's whole names, with a weight average, as scripts/train_gan_reference.py writes
    // them: placed as they are, the average kept.
    let mut whole = Checkpoint::default();
    for (k, v) in Checkpoint::load(&dcgan, &Device::Cpu)?.tensors {
        if k.starts_with("generator.") {
            whole.tensors.insert(format!("ema.{k}"), (&v * 0.5)?);
        }
        whole.tensors.insert(k, v);
    }
    let src = tmp.path().join("reference.safetensors");
    whole.save(&src)?;
    let (out, printed) = convert(tmp.path(), "whole", &[s(&src)], "dcgan", &[]);
    assert!(
        printed.contains("the model's names as they are"),
        "{printed}"
    );
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    let key = "ema.generator.main.0.weight";
    assert_eq!(
        parity::max_abs(&(&ck.tensors[key] - &whole.tensors[key])?)?,
        0.0
    );
    // A genzoo file is not converted again.
    fails_with(
        &[
            "convert",
            s(&out),
            "--model",
            "dcgan",
            "--out",
            s(&tmp.path().join("x.safetensors")),
        ],
        &["already a genzoo file (model `dcgan`)"],
    );
    Ok(())
}

/// A translation model's file as `sample` and `eval` load it, translating `x` in [-1, 1].
fn translate(path: &Path, x: &Tensor, target: &Target) -> Result<Tensor> {
    let loaded = load_for_sampling(path, &Device::Cpu, None, false)?;
    let t = loaded.model.as_translator().expect("a translator");
    Ok(to_tanh_range(&t.translate(&to_unit_range(x)?, target)?)?)
}

/// A run file with small discriminators for generator-only conversions (the defaults are the
/// references' full-size ones).
fn run_file(dir: &Path, model: &str, table: &str) -> PathBuf {
    common::run_file(
        dir.join(format!("{model}.toml")),
        format!("model = \"{model}\"\n[model_config]\n{table}\n"),
    )
}

#[test]
fn cyclegan_generators_of_junyanz_match_both_directions() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let files = [
        &fx("latest_net_G_A.pth"),
        &fx("latest_net_G_B.pth"),
        &fx("latest_net_D_A.pth"),
    ];
    let files: Vec<&str> = files.iter().map(|f| f.as_str()).collect();
    let cfg = run_file(tmp.path(), "cyclegan", "image_size = 16");
    let (out, printed) = convert(
        tmp.path(),
        "cyclegan",
        &files,
        "cyclegan",
        &["--config", s(&cfg)],
    );
    assert_printed(
        &printed,
        &[
            "ngf = 2",
            "n_blocks = 2",
            "ndf = 2",
            "n_layers_d = 2",
            "image_size = 16 (not in the weights",
            "netD_B is not in the files",
        ],
    );
    let f = forward();
    let mut tally = Tally::default();
    for (target, name) in [(Target::AToB, "G_A"), (Target::BToA, "G_B")] {
        let got = translate(&out, &f["cyclegan.x"], &target)?;
        tally.close("outputs", name, &got, &f[&format!("cyclegan.{name}")], 1e-5)?;
    }
    tally.print("cyclegan latest_net_G_A/G_B.pth");
    Ok(())
}

#[test]
fn an_old_legacy_format_generator_drops_its_instance_norm_statistics() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = run_file(
        tmp.path(),
        "cyclegan",
        "image_size = 16\nndf = 2\nn_layers_d = 2",
    );
    // Placed as netG_B by name; the A direction is left as initialised.
    let named = format!("netG_B={}", fx("old_net_G.pth"));
    let (out, printed) = convert(
        tmp.path(),
        "old",
        &[&named],
        "cyclegan",
        &["--config", s(&cfg)],
    );
    assert_printed(
        &printed,
        &[
            "old_net_G.pth -> netG_B",
            "dropped 27 norm buffer(s)",
            "model.2.running_mean",
            "netG_A is not in the files: left as initialised, so a2b translations are untrained",
        ],
    );
    let f = forward();
    let got = translate(&out, &f["cyclegan.x"], &Target::BToA)?;
    let mut tally = Tally::default();
    tally.close("outputs", "old G", &got, &f["cyclegan.old_G"], 1e-5)?;
    tally.print("cyclegan old_net_G.pth (legacy format)");
    // Without a name it is taken as the A -> B generator, and the guess is said.
    let (_, printed) = convert(
        tmp.path(),
        "guess",
        &[&fx("old_net_G.pth")],
        "cyclegan",
        &["--config", s(&cfg)],
    );
    assert!(printed.contains("taken as netG_A (A -> B)"), "{printed}");
    Ok(())
}

#[test]
fn stargan_legacy_g_and_d_match_yunjey() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (g, d) = (fx("200000-G.ckpt"), fx("200000-D.ckpt"));
    let (out, printed) = convert(tmp.path(), "stargan", &[&g, &d], "stargan", &[]);
    assert_printed(
        &printed,
        &[
            "c_dim = 3",
            "g_conv_dim = 2",
            "g_repeat_num = 2",
            "d_conv_dim = 4",
            "d_repeat_num = 3",
            "image_size = 16",
        ],
    );
    let f = forward();
    let mut tally = Tally::default();
    let target = Target::Attributes(f["stargan.c"].clone());
    let got = translate(&out, &f["stargan.x"], &target)?;
    tally.close("outputs", "G(x, c)", &got, &f["stargan.G"], 1e-5)?;
    // G alone: the critic's size is not in the weights; a run file gives it.
    let cfg = run_file(
        tmp.path(),
        "stargan",
        "image_size = 16\nd_conv_dim = 4\nd_repeat_num = 3",
    );
    let (out, printed) = convert(
        tmp.path(),
        "g-only",
        &[&g],
        "stargan",
        &["--config", s(&cfg)],
    );
    assert!(
        printed.contains("image_size = 16 (not in the weights"),
        "{printed}"
    );
    let got = translate(&out, &f["stargan.x"], &target)?;
    tally.close("outputs", "G(x, c), G alone", &got, &f["stargan.G"], 1e-5)?;
    tally.print("stargan 200000-G.ckpt");
    Ok(())
}

#[test]
fn pytorch_gan_zoo_checkpoint_keeps_its_weight_average() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (out, printed) = convert(tmp.path(), "pgan", &[&fx("pgan.pth")], "progan", &[]);
    assert_printed(
        &printed,
        &[
            "pgan.pth[avgG] -> ema.generator",
            "depths = [8, 8, 8]",
            "resolution = 16",
            "official_gains = false (assumed",
        ],
    );
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    let cfg: gan_variants::progan::Config = config(&ck);
    let phase = gan_variants::progan::Phase {
        level: 2,
        alpha: 1.0,
        index: 4,
    };
    let f = forward();
    let mut tally = Tally::default();
    for (tensors, name) in [(ck.tensors.clone(), "netG"), (averaged(&ck), "avgG")] {
        let m = build(&tensors, |vb| gan_variants::progan::ProGan::new(&cfg, vb))?;
        let (got, want) = (
            m.generate(&f["pgan.z"], phase)?,
            &f[&format!("pgan.{name}")],
        );
        // The reference is computed in float64 (no output activation: values reach 1.8).
        tally.close("outputs", name, &got, want, 1e-5)?;
    }
    tally.print("progan pgan.pth");
    ok(run(&[
        "sample",
        s(&out),
        "-n",
        "4",
        "--out",
        s(&tmp.path().join("s.png")),
    ]));
    // --key picks one entry: G's trained weights alone, no average.
    let (out, _) = convert(
        tmp.path(),
        "netg",
        &[&fx("pgan.pth")],
        "progan",
        &["--key", "netG"],
    );
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    assert!(!ck.tensors.keys().any(|k| k.starts_with("ema.")));
    Ok(())
}

/// Every tensor and the config of two converted files, which must be the same.
fn assert_same_conversion(a: &Path, b: &Path) -> Result<()> {
    let (a, b) = (
        Checkpoint::load(a, &Device::Cpu)?,
        Checkpoint::load(b, &Device::Cpu)?,
    );
    assert_eq!(a.meta(META_CONFIG), b.meta(META_CONFIG));
    let mut keys: Vec<_> = a.tensors.keys().collect();
    keys.sort();
    let mut other: Vec<_> = b.tensors.keys().collect();
    other.sort();
    assert_eq!(keys, other);
    for key in keys {
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        assert_eq!(flat(&a.tensors[key])?, flat(&b.tensors[key])?, "{key}");
    }
    Ok(())
}

/// `torch.save(..., pickle_protocol=4 or 5)` (frames, short strings, MEMOIZE, STACK_GLOBAL), in
/// the zip format and the legacy one, converts to what the protocol-2 file of the same state
/// dict converts to.
#[test]
fn higher_pickle_protocols_convert_as_protocol_2_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = run_file(
        tmp.path(),
        "cyclegan",
        "image_size = 16\nndf = 2\nn_layers_d = 2",
    );
    let cyclegan = ["--config", s(&cfg)];
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        ("netG_epoch_24", "protocol4", "dcgan", &[]),
        ("netG_epoch_24", "protocol5", "dcgan", &[]),
        ("pgan", "protocol4", "progan", &[]),
        ("old_net_G", "protocol4", "cyclegan", &cyclegan),
    ];
    for (name, protocol, model, extra) in cases {
        let file = |suffix: &str| match model {
            // Placed by name, as the legacy generator's own test does.
            "cyclegan" => format!("netG_B={}", fx(&format!("{name}{suffix}.pth"))),
            _ => fx(&format!("{name}{suffix}.pth")),
        };
        let (two, _) = convert(tmp.path(), name, &[&file("")], model, extra);
        let newer = format!("{name}.{protocol}");
        let (higher, _) = convert(
            tmp.path(),
            &newer,
            &[&file(&format!(".{protocol}"))],
            model,
            extra,
        );
        assert_same_conversion(&two, &higher)?;
    }
    Ok(())
}

/// The generator of netG_epoch_24.pth saved whole (`torch.save(netG)`, zip and legacy, pickle
/// protocols 2 and 4; its non-persistent buffer left out as `state_dict()` leaves it) and as
/// TorchScript converts to what its state dict converts to; before, each was refused as "a
/// make_convert_fixtures.DcganGenerator object".
#[test]
fn whole_pickled_and_torchscript_modules_convert_as_their_state_dict() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (state_dict, _) = convert(
        tmp.path(),
        "state",
        &[&fx("netG_epoch_24.pth")],
        "dcgan",
        &[],
    );
    for name in [
        "netG_module.pth",
        "netG_module_legacy.pth",
        "netG_module.protocol4.pth",
        "netG_script.pt",
    ] {
        let (module, printed) = convert(tmp.path(), name, &[&fx(name)], "dcgan", &[]);
        assert_same_conversion(&state_dict, &module)?;
        // BatchNorm's counters are buffers of the module as of its state dict.
        assert_printed(&printed, &["main.1.num_batches_tracked"]);
    }
    Ok(())
}

#[test]
fn a_lightning_style_wrapped_vae_matches_pytorch_examples() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (out, printed) = convert(tmp.path(), "vae", &[&fx("vae.ckpt")], "vae", &[]);
    assert_printed(
        &printed,
        &[
            "vae.ckpt[state_dict]",
            "`model.` removed from every key",
            "hidden_dim = 4",
            "latent_dim = 2",
            "passed over optimizer_states",
        ],
    );
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    let cfg: vae::Config = config(&ck);
    let m = build(&ck.tensors, |vb| vae::Vae::new(&cfg, vb))?;
    let f = forward();
    let mut tally = Tally::default();
    tally.close(
        "outputs",
        "decoder logits",
        &m.decode_logits(&f["vae.z"])?,
        &f["vae.logits"],
        1e-5,
    )?;
    tally.print("vae vae.ckpt");
    Ok(())
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `genzoo convert ARGS` fails with `needles` and leaves nothing in `dir` but `keep`.
#[track_caller]
fn fails_cleanly(dir: &Path, args: &[&str], needles: &[&str], keep: usize) {
    fails_with(args, needles);
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), keep, "left behind: {left:?}");
}

#[test]
fn bad_inputs_are_clear_errors_that_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out.safetensors");
    let out = s(&out);
    let convert = |file: &str, model: &str| {
        vec![
            "convert".to_string(),
            file.to_string(),
            "--model".into(),
            model.into(),
            "--out".into(),
            out.into(),
        ]
    };
    let notes = dir.join("notes.pth");
    std::fs::write(&notes, "not weights at all").unwrap();
    fails_cleanly(
        dir,
        &args(&convert(s(&notes), "dcgan")),
        &["notes.pth is not a PyTorch checkpoint"],
        1,
    );
    let bytes = std::fs::read(fixture("netG_epoch_24.pth")).unwrap();
    let half = dir.join("half.pth");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    fails_cleanly(
        dir,
        &args(&convert(s(&half), "dcgan")),
        &["half.pth", "truncated zip archive"],
        2,
    );
    let bytes = std::fs::read(fixture("old_net_G.pth")).unwrap();
    let old = dir.join("old.pth");
    std::fs::write(&old, &bytes[..bytes.len() - 100]).unwrap();
    fails_cleanly(
        dir,
        &args(&convert(s(&old), "cyclegan")),
        &["old.pth", "legacy", "truncated"],
        3,
    );
    fails_cleanly(
        dir,
        &args(&convert(&fx("netG_missing_key.pth"), "dcgan")),
        &[
            "netG_missing_key.pth: missing key `module.main.4.weight`",
            "shape [8]",
        ],
        3,
    );
    fails_cleanly(
        dir,
        &args(&convert(&fx("netG_wrong_shape.pth"), "dcgan")),
        &[
            "netG_wrong_shape.pth: `module.main.4.weight`",
            "has shape [9], the model expects [8]",
        ],
        3,
    );
    fails_cleanly(
        dir,
        &args(&convert(&fx("netG_epoch_24.pth"), "dcgn")),
        &["unknown model `dcgn`", "dcgan"],
        3,
    );
    // A run file that contradicts the shapes.
    let cfg = common::run_file(
        dir.join("c.toml"),
        "model = \"dcgan\"\n[model_config]\nngf = 8\n",
    );
    let mut a = convert(&fx("netG_epoch_24.pth"), "dcgan");
    a.extend(["--config".into(), s(&cfg).into()]);
    fails_cleanly(
        dir,
        &args(&a),
        &[
            "sets [model_config] ngf = 8",
            "the weights have ngf = 4",
            "generator.main.9.weight",
        ],
        4,
    );
    // Two generators of unnamed direction, and an entry that is not there.
    let twice = vec![
        "convert".to_string(),
        fx("old_net_G.pth"),
        fx("old_net_G.pth"),
        "--model".into(),
        "cyclegan".into(),
        "--out".into(),
        out.into(),
    ];
    fails_cleanly(
        dir,
        &args(&twice),
        &[
            "old_net_G.pth and old_net_G.pth both hold netG_A",
            "NET=FILE",
        ],
        4,
    );
    let mut a = convert(&fx("pgan.pth"), "progan");
    a.extend(["--key".into(), "ema".into()]);
    fails_cleanly(
        dir,
        &args(&a),
        &["pgan.pth: no state dict under `ema`", "`netG`"],
        4,
    );
    let bytes = std::fs::read(fixture("forward.safetensors")).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_cleanly(
        dir,
        &args(&convert(s(&cut), "dcgan")),
        &[
            "cut.safetensors is not a valid safetensors file",
            "truncated",
        ],
        5,
    );
    // A result that cannot be moved into place (a directory of that name) takes its staged
    // file with it.
    let taken = dir.join("taken");
    std::fs::create_dir(&taken).unwrap();
    let mut a = convert(&fx("netG_epoch_24.pth"), "dcgan");
    a[5] = s(&taken).into();
    fails_cleanly(dir, &args(&a), &["cannot move the result to"], 6);
    assert!(!Path::new(out).exists());
}

/// splitmix64: a seeded, dependency-free stream, so that a failing mutant can be named and
/// made again.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A position in `bytes`, two times in three among the first or last 4 KiB, where the
    /// headers, the pickle's opcodes and the length fields are.
    fn position(&mut self, bytes: &[u8]) -> usize {
        let edge = bytes.len().min(4096);
        match self.below(3) {
            0 => self.below(edge),
            // A zip archive's directory, with its sizes and offsets, is at the end.
            1 => bytes.len() - 1 - self.below(edge),
            _ => self.below(bytes.len()),
        }
    }
}

/// Damages `bytes` one way, and says how.
fn mutate(bytes: &mut Vec<u8>, rng: &mut Stream) -> String {
    if bytes.is_empty() {
        bytes.push(rng.next() as u8);
        return "one byte".into();
    }
    match rng.below(6) {
        0 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let at = rng.position(bytes);
                bytes[at] ^= 1 << rng.below(8);
            }
            format!("{n} bits flipped")
        }
        1 => {
            let at = rng.position(bytes);
            bytes[at] = rng.next() as u8;
            format!("byte {at} replaced")
        }
        2 => {
            let len = rng.below(bytes.len());
            bytes.truncate(len);
            format!("truncated to {len} bytes")
        }
        3 => {
            // A huge length or count: 4 or 8 bytes of one, little-endian.
            let at = rng.position(bytes);
            let value: u64 = [u64::MAX, 1 << 62, 1 << 40, u32::MAX as u64, 1 << 31][rng.below(5)];
            let width = [4, 8][rng.below(2)];
            let end = (at + width).min(bytes.len());
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            format!("{width} bytes at {at} set to {value:#x}")
        }
        4 => huge_integer(bytes, rng),
        _ => {
            let (from, len) = (rng.position(bytes), 1 + rng.below(64));
            let end = (from + len).min(bytes.len());
            let chunk = bytes[from..end].to_vec();
            let to = rng.position(bytes);
            bytes.splice(to..to, chunk);
            format!("{len} bytes from {from} copied to {to}")
        }
    }
}

/// One of the pickle's numbers (a size, an offset, a stride, a text's length) made huge,
/// negative, or an integer longer than 8 bytes, where a byte looks like its opcode.
fn huge_integer(bytes: &mut Vec<u8>, rng: &mut Stream) -> String {
    let ops: Vec<usize> = (0..bytes.len().saturating_sub(5))
        .filter(|i| matches!(bytes[*i], b'K' | b'M' | b'J' | b'X'))
        .collect();
    if ops.is_empty() {
        bytes.reverse();
        return "reversed".into();
    }
    let at = ops[rng.below(ops.len())];
    let (op, arg) = match bytes[at] {
        b'K' => (b'K', 1),
        b'M' => (b'M', 2),
        op => (op, 4),
    };
    let value: [u8; 4] = [[0xff; 4], [0xff, 0xff, 0xff, 0x7f], [0, 0, 0, 0x80]][rng.below(3)];
    match rng.below(3) {
        0 if arg == 4 => {
            bytes[at + 1..at + 5].copy_from_slice(&value);
            format!("{:?} at {at} set to {value:?}", op as char)
        }
        1 => {
            let n = 9 + rng.below(8);
            let mut long = vec![0x8a, n as u8];
            long.extend((0..n).map(|_| rng.next() as u8));
            bytes.splice(at..at + 1 + arg, long);
            format!("{:?} at {at} made a {n}-byte LONG1", op as char)
        }
        _ => {
            let mut long = vec![0x8a, 8];
            long.extend(i64::MAX.to_le_bytes());
            bytes.splice(at..at + 1 + arg, long);
            format!("{:?} at {at} made LONG1 i64::MAX", op as char)
        }
    }
}

/// A torch.save zip with its `data.pkl` damaged and the archive rebuilt around it (stored, CRCs
/// right), so that the damage reaches the pickle parser rather than stopping at a checksum.
fn with_damaged_pickle(archive: &[u8], rng: &mut Stream) -> Result<(Vec<u8>, String)> {
    use std::io::{Read, Write};
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive))?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut how = String::new();
    for i in 0..zip.len() {
        // Entries other than the pickle are copied as they are (TorchScript deflates its code,
        // which this build of the zip crate cannot inflate and genzoo never reads).
        let is_pickle = matches!(zip.name_for_index(i), Some(Ok(n)) if n.ends_with("data.pkl"));
        if !is_pickle {
            out.raw_copy_file(zip.by_index_raw(i)?)?;
            continue;
        }
        let mut entry = zip.by_index(i)?;
        let name = entry.name()?.into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        how = format!("data.pkl: {}", mutate(&mut data, rng));
        out.start_file(name, options)?;
        out.write_all(&data)?;
    }
    Ok((out.finish()?.into_inner(), how))
}

/// One fixture to damage, with what it is converted beside and as.
struct Damaged {
    file: PathBuf,
    others: Vec<PathBuf>,
    model: &'static str,
    model_config: &'static str,
}

/// What the mutants of one fixture came to.
#[derive(Debug, Default)]
struct Outcomes {
    converted: usize,
    refused: usize,
    panicked: Vec<String>,
    left_behind: Vec<String>,
}

/// Converts `iterations` damaged copies of `target.file` in this process: each must convert or
/// fail with an error, never panic, and a failure must leave nothing in the output directory.
fn damage(target: &Damaged, iterations: usize, seed: u64, dir: &Path) -> Result<Outcomes> {
    let original = std::fs::read(&target.file)?;
    let name = target.file.file_name().unwrap().to_string_lossy();
    let mutant = dir.join(format!("mutant-{name}"));
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir)?;
    let config = run_file(dir, target.model, target.model_config);
    let request = |path: &Path| runner::convert::Request {
        inputs: std::iter::once(path)
            .chain(target.others.iter().map(PathBuf::as_path))
            .map(|p| runner::convert::Input {
                path: p.to_path_buf(),
                network: None,
            })
            .collect(),
        model: target.model.to_string(),
        config: Some(config.clone()),
        key: None,
        out: out_dir.join("out.safetensors"),
    };
    // The fixture itself converts: the mutants start from a file that reaches every step.
    runner::convert::convert(&request(&target.file))?;
    std::fs::remove_file(out_dir.join("out.safetensors"))?;
    let mut rng = Stream(seed);
    let mut outcomes = Outcomes::default();
    for i in 0..iterations {
        let (bytes, how) = if original.starts_with(b"PK") && rng.below(2) == 0 {
            with_damaged_pickle(&original, &mut rng)?
        } else {
            let mut bytes = original.clone();
            let how = mutate(&mut bytes, &mut rng);
            (bytes, how)
        };
        std::fs::write(&mutant, &bytes)?;
        let what = format!("{name} mutant {i} (seed {seed}): {how}");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runner::convert::convert(&request(&mutant))
        }));
        match result {
            Ok(Ok(_)) => {
                outcomes.converted += 1;
                std::fs::remove_file(out_dir.join("out.safetensors"))?;
            }
            Ok(Err(_)) => outcomes.refused += 1,
            Err(_) => outcomes.panicked.push(what.clone()),
        }
        let left: Vec<_> = std::fs::read_dir(&out_dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        if !left.is_empty() {
            outcomes.left_behind.push(format!("{what}: {left:?}"));
            std::fs::remove_dir_all(&out_dir)?;
            std::fs::create_dir_all(&out_dir)?;
        }
    }
    Ok(outcomes)
}

/// Damaged downloads: byte flips, truncations, huge lengths and counts, too-long integers and
/// copied chunks, in each fixture's raw bytes and (for zip archives) inside a rebuilt
/// `data.pkl`. `GENZOO_FUZZ_ITERATIONS` sets the mutants per fixture (300 by default).
#[test]
fn damaged_files_convert_or_fail_cleanly_and_never_panic() -> Result<()> {
    let iterations: usize = std::env::var("GENZOO_FUZZ_ITERATIONS")
        .map(|n| n.parse().expect("GENZOO_FUZZ_ITERATIONS is a number"))
        .unwrap_or(300);
    let tmp = tempfile::tempdir()?;
    // A plain safetensors file, as the Python converter genzoo had before wrote them.
    let (dcgan, _) = convert(
        tmp.path(),
        "dcgan",
        &[&fx("netG_epoch_24.pth")],
        "dcgan",
        &["--config", s(&run_file(tmp.path(), "dcgan", "ndf = 4"))],
    );
    let mut plain = Checkpoint::default();
    for (k, v) in Checkpoint::load(&dcgan, &Device::Cpu)?.tensors {
        if let Some(key) = k.strip_prefix("generator.") {
            plain.tensors.insert(key.to_string(), v);
        }
    }
    let safetensors = tmp.path().join("netG.safetensors");
    plain.save(&safetensors)?;
    let cyclegan = [
        "latest_net_G_A.pth",
        "latest_net_G_B.pth",
        "latest_net_D_A.pth",
    ];
    let beside = |file: &str, all: &[&str]| -> Vec<PathBuf> {
        all.iter()
            .filter(|f| **f != file)
            .map(|f| fixture(f))
            .collect()
    };
    let stargan = ["200000-G.ckpt", "200000-D.ckpt"];
    let mut targets = vec![
        Damaged {
            file: fixture("netG_epoch_24.pth"),
            others: vec![],
            model: "dcgan",
            model_config: "ndf = 4",
        },
        Damaged {
            file: safetensors,
            others: vec![],
            model: "dcgan",
            model_config: "ndf = 4",
        },
        Damaged {
            file: fixture("old_net_G.pth"),
            others: vec![],
            model: "cyclegan",
            model_config: "image_size = 16\nndf = 2\nn_layers_d = 2",
        },
        Damaged {
            file: fixture("pgan.pth"),
            others: vec![],
            model: "progan",
            model_config: "",
        },
        Damaged {
            file: fixture("vae.ckpt"),
            others: vec![],
            model: "vae",
            model_config: "",
        },
    ];
    for f in cyclegan {
        targets.push(Damaged {
            file: fixture(f),
            others: beside(f, &cyclegan),
            model: "cyclegan",
            model_config: "image_size = 16",
        });
    }
    for f in stargan {
        targets.push(Damaged {
            file: fixture(f),
            others: beside(f, &stargan),
            model: "stargan",
            model_config: "",
        });
    }
    // Pickle protocol 4, rewritten into protocol 2 on the way: zip and legacy.
    targets.push(Damaged {
        file: fixture("netG_epoch_24.protocol4.pth"),
        others: vec![],
        model: "dcgan",
        model_config: "ndf = 4",
    });
    // Modules read as their state dicts: pickled whole, and TorchScript.
    for f in ["netG_module_legacy.pth", "netG_script.pt"] {
        targets.push(Damaged {
            file: fixture(f),
            others: vec![],
            model: "dcgan",
            model_config: "ndf = 4",
        });
    }
    targets.push(Damaged {
        file: fixture("old_net_G.protocol4.pth"),
        others: vec![],
        model: "cyclegan",
        model_config: "image_size = 16\nndf = 2\nn_layers_d = 2",
    });
    let mut failures = Vec::new();
    for (seed, target) in targets.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let o = damage(target, iterations, seed as u64, dir.path())?;
        println!(
            "{}: {iterations} mutants, {} converted, {} refused, {} panicked, {} left files behind",
            target.file.display(),
            o.converted,
            o.refused,
            o.panicked.len(),
            o.left_behind.len()
        );
        failures.extend(o.panicked.iter().map(|p| format!("panicked: {p}")));
        failures.extend(o.left_behind.iter().map(|l| format!("left behind: {l}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
