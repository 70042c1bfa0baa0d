//! Every loader of a file a user may download, fuzzed (see `common/fuzz.rs`): safetensors
//! checkpoints (`Checkpoint::load`, `genzoo inspect`, a genzoo checkpoint rebuilt into its
//! model), IDX files, image folders, run files, captions (JSONL and reedscot's text_c10),
//! CelebA-style attribute files and boxes files. No input may panic, hang, allocate by an
//! unchecked size or fail without naming its file.
//!
//! The default run is short (CI); `GENZOO_FUZZ_ITERATIONS=100000` runs long.

#[path = "common/fuzz.rs"]
mod fuzz;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fuzz::{interesting_length, interesting_numeral, Target};
use layers::{Checkpoint, Rng};
use runner::config::RunConfig;
use runner::data::attributes::AttributeTable;
use runner::data::{captions, folder, patches, Split};
use runner::run::checkpoint as run_checkpoint;
use serde_json::Value;

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

const MIB: usize = 1 << 20;

/// A scratch folder the loader of one target reads from, kept for the whole run.
fn scratch() -> &'static Path {
    Box::leak(Box::new(tempfile::tempdir().unwrap())).path()
}

/// A loader of one file: writes the input to `path`, then runs `load` on it.
fn file_loader(
    path: PathBuf,
    load: impl Fn(&Path) -> anyhow::Result<()> + Send + Sync + 'static,
) -> fuzz::Loader {
    Arc::new(move |input: &[u8]| {
        std::fs::write(&path, input)?;
        load(&path)
    })
}

fn run_target(make: impl FnOnce() -> Target) {
    let report = fuzz::fuzz(make);
    assert!(report.inputs > 0 || std::env::var("GENZOO_FUZZ_REPLAY").is_ok());
}

// ---------------------------------------------------------------- safetensors

/// A small safetensors file of every dtype Candle reads, with metadata.
fn safetensors_seed() -> Vec<u8> {
    let dev = Device::Cpu;
    let base = Tensor::arange(0f32, 6.0, &dev)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let mut ck = Checkpoint::default();
    for dtype in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::U8,
        DType::U32,
        DType::I64,
    ] {
        let name = format!("w.{dtype:?}").to_lowercase();
        ck.tensors.insert(name, base.to_dtype(dtype).unwrap());
    }
    ck.tensors
        .insert("scalar".into(), Tensor::new(1.5f32, &dev).unwrap());
    ck.metadata.insert("genzoo.model".into(), "vae".into());
    ck.metadata.insert("note".into(), "é".repeat(150));
    save_to_bytes(&ck)
}

fn save_to_bytes(ck: &Checkpoint) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    ck.save(&path).unwrap();
    std::fs::read(path).unwrap()
}

/// Splits a safetensors file into its header (JSON) and its data.
fn split_safetensors(bytes: &[u8]) -> Option<(Value, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    Some((
        serde_json::from_slice(header).ok()?,
        bytes[8 + n..].to_vec(),
    ))
}

const DTYPES: [&str; 20] = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "X",
];

/// Rewrites one field of a safetensors header (a tensor's shape, offsets or dtype, or a
/// metadata value) to something hostile, then the length prefix (usually true, sometimes a
/// lie).
fn mutate_safetensors(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let Some((mut header, data)) = split_safetensors(bytes) else {
        return bytes.to_vec();
    };
    let map = header.as_object_mut().unwrap();
    let keys: Vec<String> = map.keys().cloned().collect();
    let key = &keys[rng.below(keys.len())];
    if key == "__metadata__" {
        mutate_metadata(rng, map.get_mut(key).unwrap());
    } else {
        mutate_tensor_entry(rng, map.get_mut(key).unwrap());
    }
    let text = serde_json::to_vec(&header).unwrap();
    let n = match rng.below(4) {
        0 => interesting_length(rng),
        1 => (text.len() as u64).wrapping_add(rng.below(16) as u64),
        _ => text.len() as u64,
    };
    let mut out = n.to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

fn huge_dims(rng: &mut Rng) -> Value {
    let dims: Vec<Value> = (0..rng.below(5))
        .map(|_| match rng.below(3) {
            0 => Value::from(rng.below(8)),
            _ => Value::from(interesting_length(rng)),
        })
        .collect();
    Value::Array(dims)
}

fn mutate_tensor_entry(rng: &mut Rng, entry: &mut Value) {
    let Some(e) = entry.as_object_mut() else {
        return;
    };
    match rng.below(4) {
        0 => {
            e.insert("shape".into(), huge_dims(rng));
        }
        1 => {
            let offsets = [interesting_length(rng), interesting_length(rng)];
            e.insert("data_offsets".into(), Value::from(offsets.to_vec()));
        }
        2 => {
            e.insert("dtype".into(), DTYPES[rng.below(DTYPES.len())].into());
        }
        _ => {
            // A shape that still matches the data's length, of another dtype.
            e.insert("dtype".into(), DTYPES[rng.below(DTYPES.len())].into());
            e.insert("shape".into(), Value::from(vec![0u64, 1 << 40]));
        }
    }
}

/// Makes one metadata value hostile: not a string, long text with multi-byte characters, or
/// a number inside genzoo's JSON config made huge.
fn mutate_metadata(rng: &mut Rng, metadata: &mut Value) {
    let Some(m) = metadata.as_object_mut() else {
        return;
    };
    let keys: Vec<String> = m.keys().cloned().collect();
    if keys.is_empty() {
        return;
    }
    let key = keys[rng.below(keys.len())].clone();
    let value = m.get_mut(&key).unwrap();
    match rng.below(4) {
        0 => *value = Value::from(interesting_length(rng)),
        1 => *value = Value::from("ü".repeat(rng.below(300)) + "€"),
        2 => *value = Value::from(interesting_numeral(rng)),
        _ => {
            if let Some(text) = value.as_str() {
                *value = Value::from(mutate_json_number(rng, text));
            }
        }
    }
}

/// Replaces one number in a JSON text (genzoo's run config) with a hostile one.
fn mutate_json_number(rng: &mut Rng, text: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    let mut numbers: Vec<*mut Value> = Vec::new();
    collect_numbers(&mut v, &mut numbers);
    if !numbers.is_empty() {
        let pick = numbers[rng.below(numbers.len())];
        let replacement = match rng.below(4) {
            0 => Value::from(interesting_length(rng)),
            1 => Value::from(-1),
            2 => Value::from(1e300),
            _ => Value::from(1u64 << rng.below(40)),
        };
        // SAFETY: `pick` points into `v`, which outlives this write and is not borrowed.
        unsafe { *pick = replacement };
    }
    v.to_string()
}

fn collect_numbers(v: &mut Value, out: &mut Vec<*mut Value>) {
    match v {
        Value::Number(_) => out.push(v as *mut Value),
        Value::Array(a) => a.iter_mut().for_each(|x| collect_numbers(x, out)),
        Value::Object(o) => o.values_mut().for_each(|x| collect_numbers(x, out)),
        _ => {}
    }
}

#[test]
fn checkpoint_load() {
    let dir = scratch();
    let path = dir.join("ck.safetensors");
    let empty = save_to_bytes(&Checkpoint::default());
    run_target(move || Target {
        name: "checkpoint-load",
        seeds: vec![safetensors_seed(), empty],
        structured: Some(Box::new(mutate_safetensors)),
        load: file_loader(path.clone(), |p| {
            let ck = Checkpoint::load(p, &Device::Cpu)?;
            ck.parameter_count(|_| true);
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 1500,
    });
}

#[test]
fn inspect() {
    let dir = scratch();
    let path = dir.join("inspected.safetensors");
    run_target(move || Target {
        name: "inspect",
        seeds: vec![safetensors_seed()],
        structured: Some(Box::new(mutate_safetensors)),
        load: file_loader(path.clone(), |p| {
            let i = runner::commands::inspect::inspect(p)?;
            runner::commands::inspect::render(&i);
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 800,
    });
}

/// A run of a tiny VAE, as a genzoo checkpoint holds it.
fn tiny_run() -> RunConfig {
    let mut run = RunConfig::new("vae");
    run.model_config = toml::from_str("hidden_dim = 3\nlatent_dim = 2\nimage_size = 4").unwrap();
    run
}

/// A genzoo checkpoint of a tiny VAE: weights, a weight average and the metadata that
/// rebuilds it.
fn genzoo_checkpoint_seed() -> Vec<u8> {
    let (_, varmap, run) = run_checkpoint::build_model(&tiny_run(), &Device::Cpu).unwrap();
    let mut tensors = layers::train::checkpoint::varmap_tensors(&varmap);
    let averages: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (format!("{}.{k}", run_checkpoint::AVERAGE_PREFIX), t.clone()))
        .collect();
    tensors.extend(averages);
    let metadata = [
        (run_checkpoint::META_FORMAT, "1".to_string()),
        (run_checkpoint::META_MODEL, "vae".into()),
        (run_checkpoint::META_CONFIG, run.to_json().unwrap()),
        (run_checkpoint::META_STEP, "12".into()),
        (run_checkpoint::META_EPOCH, "1".into()),
        (
            run_checkpoint::META_EPOCH_SUMS,
            r#"{"__steps":2,"loss":3.5,"__count.kl":1,"kl":0.5}"#.into(),
        ),
        (run_checkpoint::META_AVERAGE_UPDATES, "12".into()),
    ];
    let ck = Checkpoint {
        tensors,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    save_to_bytes(&ck)
}

#[test]
fn load_for_sampling() {
    let dir = scratch();
    let path = dir.join("run.safetensors");
    run_target(move || Target {
        name: "load-for-sampling",
        seeds: vec![genzoo_checkpoint_seed()],
        structured: Some(Box::new(mutate_safetensors)),
        load: file_loader(path.clone(), |p| {
            run_checkpoint::load_for_sampling(p, &Device::Cpu, None, false)?;
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 32 * MIB,
        default_iterations: 600,
    });
}

/// The tiny VAE's weights without genzoo's metadata, as converted from PyTorch.
fn plain_weights_seed() -> Vec<u8> {
    let (_, varmap, _) = run_checkpoint::build_model(&tiny_run(), &Device::Cpu).unwrap();
    save_to_bytes(&Checkpoint {
        tensors: layers::train::checkpoint::varmap_tensors(&varmap),
        metadata: Default::default(),
    })
}

#[test]
fn load_plain_weights() {
    let path = scratch().join("plain.safetensors");
    let run = tiny_run();
    run_target(move || Target {
        name: "load-plain-weights",
        seeds: vec![plain_weights_seed()],
        structured: Some(Box::new(mutate_safetensors)),
        load: file_loader(path.clone(), move |p| {
            run_checkpoint::load_model(p, &Device::Cpu, Some(&run))?;
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 32 * MIB,
        default_iterations: 300,
    });
}

// ---------------------------------------------------------------- IDX

fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, rank];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Rewrites an IDX header: a dimension made huge or zero, the type byte or the rank; gzips the
/// result a quarter of the time.
fn mutate_idx(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() >= 8 {
        let rank = usize::from(out[3]).clamp(1, 3);
        match rng.below(3) {
            0 => out[2] = 0x08 + rng.below(8) as u8,
            1 => out[3] = rng.below(5) as u8,
            _ => {
                let i = 4 + 4 * rng.below(rank);
                let v = interesting_length(rng) as u32;
                if out.len() >= i + 4 {
                    out[i..i + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    if rng.below(4) == 0 {
        out = gzip(&out);
    }
    out
}

/// An IDX directory whose `which` file is the input and whose other file is a valid one of
/// three items; the loaded digits are read as training reads them.
fn idx_target(name: &'static str, images_are_input: bool) -> Target {
    let dir = scratch();
    let images = idx(
        3,
        &[3, 2, 2],
        &[0, 50, 100, 150, 200, 250, 1, 2, 3, 4, 5, 6],
    );
    let labels = idx(1, &[3], &[1, 7, 9]);
    let (input_name, other_name, input, other) = if images_are_input {
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            images,
            labels,
        )
    } else {
        (
            "train-labels-idx1-ubyte",
            "train-images-idx3-ubyte",
            labels,
            images,
        )
    };
    std::fs::write(dir.join(other_name), &other).unwrap();
    let path = dir.join(input_name);
    let dir_buf = dir.to_path_buf();
    Target {
        name,
        seeds: vec![input.clone(), gzip(&input)],
        structured: Some(Box::new(mutate_idx)),
        load: file_loader(path, move |_| {
            let data = runner::data::load_idx_dir(&dir_buf, Split::Train)?;
            for i in 0..data.len() {
                data.image(i);
            }
            data.class_count();
            Ok(())
        }),
        names: dir.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 1500,
    }
}

#[test]
fn idx_images() {
    run_target(|| idx_target("idx-images", true));
}

#[test]
fn idx_labels() {
    run_target(|| idx_target("idx-labels", false));
}

// ---------------------------------------------------------------- images

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn image_seeds(format: image::ImageFormat) -> Vec<Vec<u8>> {
    let rgb = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, 90]));
    let grey = image::GrayImage::from_fn(5, 7, |x, y| image::Luma([(x * y * 7) as u8]));
    vec![encode(rgb.into(), format), encode(grey.into(), format)]
}

/// Makes every PNG chunk's CRC right again, so that a mutation inside a chunk reaches the
/// decoder instead of stopping at the checksum.
fn repair_png_crcs(png: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= png.len()) else {
            return;
        };
        // PNG's CRC-32 keeps the rewritten chunk valid, so the decoder reads its new fields.
        let crc = crc32fast::hash(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// Half the time a huge (or zero) width or height ([`claim_image_size`]), else generic
/// mutations; a PNG's checksums are then made right again.
fn mutate_image(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = if rng.below(2) == 0 {
        claim_image_size(rng, bytes)
    } else {
        let mut out = bytes.to_vec();
        for _ in 0..1 + rng.below(3) {
            fuzz::mutate(rng, &mut out);
        }
        out
    };
    if out.starts_with(b"\x89PNG") {
        repair_png_crcs(&mut out);
    }
    out
}

/// Claims a huge (or zero) width or height: in a PNG's IHDR or in a JPEG's start-of-frame.
fn claim_image_size(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let side = [
        0u32,
        1,
        0xffff,
        0x7fff_ffff,
        0xffff_ffff,
        12_000,
        40_000,
        100_000,
    ][rng.below(8)];
    if out.starts_with(b"\x89PNG") && out.len() >= 33 {
        let at = 16 + 4 * rng.below(2);
        out[at..at + 4].copy_from_slice(&side.to_be_bytes());
    } else if let Some(sof) = out.windows(2).position(|w| w == [0xff, 0xc0]) {
        let at = sof + 5 + 2 * rng.below(2);
        if out.len() >= at + 2 {
            out[at..at + 2].copy_from_slice(&(side as u16).to_be_bytes());
        }
    }
    out
}

/// A folder of two images, one of them the input, loaded in memory, streamed, and probed for
/// colour as training does.
fn folder_target(name: &'static str, format: image::ImageFormat, ext: &str) -> Target {
    let dir = scratch();
    for class in ["a", "b"] {
        std::fs::create_dir(dir.join(class)).unwrap();
    }
    std::fs::write(
        dir.join("b").join(format!("ok.{ext}")),
        &image_seeds(format)[0],
    )
    .unwrap();
    let path = dir.join("a").join(format!("input.{ext}"));
    let dir_buf = dir.to_path_buf();
    Target {
        name,
        seeds: image_seeds(format),
        structured: Some(Box::new(mutate_image)),
        load: file_loader(path, move |_| load_folder(&dir_buf)),
        names: "input.".to_string(),
        // The decoder's limit (`folder::MAX_DECODED_BYTES`, 256 MiB) and a little.
        memory_limit: 300 * MIB,
        default_iterations: 200,
    }
}

fn load_folder(dir: &Path) -> anyhow::Result<()> {
    let listing = folder::list_images(dir)?;
    folder::probe_channels(&listing.paths, 4)?;
    folder::load_image_folder(dir, 8, 3)?;
    let streamed = folder::folder_source(listing, 6, 1, Default::default(), 0)?;
    let mut rng = Rng::new(0);
    for i in 0..streamed.len() {
        streamed.image(i, &mut rng)?;
    }
    Ok(())
}

#[test]
fn image_folder_png() {
    run_target(|| folder_target("image-folder-png", image::ImageFormat::Png, "png"));
}

#[test]
fn image_folder_jpeg() {
    run_target(|| folder_target("image-folder-jpeg", image::ImageFormat::Jpeg, "jpg"));
}

// ---------------------------------------------------------------- text formats

/// Every run file the project ships, and a hand-written one with every table.
fn run_file_seeds() -> Vec<Vec<u8>> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.sort();
    seeds.push(
        br#"model = "stargan"
[train]
epochs = 3
batch_size = 16
schedule = "linear"
decay_start = 1
[gan]
loss = "wgan-gp"
d_steps = 5
[data]
transforms = [{ pad = 2 }, "rgb", { resize = 32 }, { random-crop = 28 }, { rotate = 90 }, { tint = [1, 0.5, 0.5] }]
attrs = ["Black_Hair", "Male"]
test_count = 10
hold_out = ["7:thick"]
[model_config]
image_size = 28
"#
        .to_vec(),
    );
    seeds
}

/// Reads a run file and uses it as `genzoo train` does before it builds anything.
fn load_run_file(path: &Path) -> anyhow::Result<()> {
    let run = RunConfig::from_file(path, None)?;
    let named = |e: anyhow::Error| e.context(format!("{}", path.display()));
    run.train.validate().map_err(named)?;
    run.gan.validate().map_err(named)?;
    run.train.total_steps(1000);
    run.train.decay_start_step(1000);
    run.data
        .transforms
        .output_shape([1, 28, 28])
        .map_err(named)?;
    RunConfig::from_json(&run.to_json()?)?;
    run.to_toml()?;
    Ok(())
}

#[test]
fn run_file() {
    let path = scratch().join("run.toml");
    run_target(move || Target {
        name: "run-file",
        seeds: run_file_seeds(),
        structured: None,
        load: file_loader(path.clone(), load_run_file),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 2000,
    });
}

#[test]
fn captions_jsonl() {
    let dir = scratch();
    for name in ["a.png", "b.png"] {
        std::fs::write(dir.join(name), b"not decoded here").unwrap();
    }
    let path = dir.join("captions.jsonl");
    let seed = br#"{"image": "a.png", "caption": "a thin seven"}
{"image": "b.png", "caption": "a big \"bold\" two \u00e9"}
{"image": "a.png", "caption": "seven, leaning left"}
"#;
    run_target(move || Target {
        name: "captions-jsonl",
        seeds: vec![seed.to_vec()],
        structured: None,
        load: file_loader(path.clone(), |p| {
            captions::read_jsonl(p)?;
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 2000,
    });
}

#[test]
fn captions_text_c10() {
    let dir = scratch();
    std::fs::create_dir_all(dir.join("images/001.Bird")).unwrap();
    std::fs::create_dir_all(dir.join("text_c10/001.Bird")).unwrap();
    std::fs::write(dir.join("images/001.Bird/x.jpg"), b"not decoded here").unwrap();
    let path = dir.join("text_c10/001.Bird/x.txt");
    let dir_buf = dir.to_path_buf();
    run_target(move || Target {
        name: "captions-text-c10",
        seeds: vec![b"a small bird\n\nwith a red crown\r\n  and black wings \n".to_vec()],
        structured: None,
        load: file_loader(path.clone(), move |_| {
            captions::read_reference_layout(&dir_buf)?;
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 1000,
    });
}

#[test]
fn attribute_file() {
    let path = scratch().join("list_attr_celeba.txt");
    let seed = "3\nBlack_Hair Blond_Hair Male\n000001.jpg -1  1 -1\n000002.jpg  1 -1  1\n000003.jpg -1 -1  0\n";
    run_target(move || Target {
        name: "attribute-file",
        seeds: vec![seed.into()],
        structured: None,
        load: file_loader(path.clone(), |p| {
            let table = AttributeTable::read(p)?;
            table.select(&["Male".into(), "Black_Hair".into()], p)?;
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 2000,
    });
}

#[test]
fn boxes_file() {
    let path = scratch().join("boxes.txt");
    let seed = "a.png 1,2,10,10 20,20,8,8\nb.png 0,0,32,32\n\nsub/c.png 3,4,5,6\n";
    run_target(move || Target {
        name: "boxes-file",
        seeds: vec![seed.into()],
        structured: None,
        load: file_loader(path.clone(), |p| {
            let boxes: HashMap<String, Vec<[usize; 4]>> = patches::read_boxes(p, 32)?;
            assert!(boxes
                .values()
                .flatten()
                .all(|b| b[0] + b[2] <= 32 && b[1] + b[3] <= 32));
            Ok(())
        }),
        names: path.display().to_string(),
        memory_limit: 16 * MIB,
        default_iterations: 2000,
    });
}
