//! Image folders: every png/jpg under a directory, labelled by sub-folder as torchvision's
//! `ImageFolder` does, resized and centre-cropped to the model's size; held in memory when they
//! fit, else decoded from disk batch by batch.

use std::fs;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;

use super::source::{InMemory, Source, Streamed};
use super::transforms::Pipeline;
use super::Dataset;

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The most bytes one image may decode to: 8192 x 8192 RGBA. A header's width and height are
/// a claim (a 100-byte PNG may claim 40,000 x 40,000 pixels); every image is resized to the
/// model's side, so no dataset needs more.
const MAX_DECODED_BYTES: u64 = 256 << 20;

/// Decodes the image at `path` (its format from its extension, as `image::open`), refusing
/// one whose header claims more than [`MAX_DECODED_BYTES`] before allocating for it.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?;
    reader.limits(limits);
    reader
        .decode()
        .with_context(|| format!("cannot decode image {}", path.display()))
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The images of a folder (recursively, sorted) and their classes by sub-folder.
pub struct Listing {
    pub dir: PathBuf,
    pub paths: Vec<PathBuf>,
    /// Class per image, when every image sits in a sub-folder.
    pub labels: Option<Vec<u32>>,
}

/// Lists every png/jpg under `dir`, each labelled by its first sub-folder in sorted order, as
/// torchvision's `ImageFolder` does; an empty folder is an error naming it.
pub fn list_images(dir: &Path) -> Result<Listing> {
    let mut paths = Vec::new();
    collect_images(dir, &mut paths)?;
    paths.sort();
    ensure!(
        !paths.is_empty(),
        "{}: no png or jpg images found (and no MNIST IDX files)",
        dir.display()
    );
    let mut classes: Vec<String> = paths.iter().filter_map(|p| class_of(dir, p)).collect();
    classes.sort();
    classes.dedup();
    let labels: Vec<u32> = paths
        .iter()
        .filter_map(|p| class_of(dir, p))
        .map(|c| classes.binary_search(&c).unwrap_or(0) as u32)
        .collect();
    let labelled = !classes.is_empty() && labels.len() == paths.len();
    Ok(Listing {
        dir: dir.to_path_buf(),
        paths,
        labels: labelled.then_some(labels),
    })
}

/// 3 if any of the images (up to `probe` of them, spread over the folder) has colour, else 1.
pub fn probe_channels(paths: &[PathBuf], probe: usize) -> Result<usize> {
    let step = (paths.len() / probe.max(1)).max(1);
    for path in paths.iter().step_by(step) {
        let img = open_image(path)?;
        if img.color().has_color() {
            return Ok(3);
        }
    }
    Ok(1)
}

/// Decodes `paths` at `size x size` with `channels`, in parallel on the worker threads.
pub fn decode_all(paths: &[PathBuf], size: usize, channels: usize) -> Result<Vec<u8>> {
    let images: Vec<Vec<u8>> = paths
        .par_iter()
        .map(|path| {
            let img = open_image(path)?;
            Ok(resize_center_crop(&img, size, channels))
        })
        .collect::<Result<_>>()?;
    Ok(images.concat())
}

/// Loads every png/jpg under `dir` (recursively), resized so the shorter side is `size` and
/// center-cropped to `size x size` (torchvision's `Resize(size)` + `CenterCrop(size)`), as
/// grayscale (`channels = 1`) or RGB (`channels = 3`). Images in sub-folders are labelled by
/// folder, in sorted order, as torchvision's `ImageFolder` does.
pub fn load_image_folder(dir: &Path, size: usize, channels: usize) -> Result<Dataset> {
    check_geometry(size, channels)?;
    let listing = list_images(dir)?;
    Ok(Dataset {
        name: dir.display().to_string(),
        shape: [channels, size, size],
        pixels: decode_all(&listing.paths, size, channels)?,
        labels: listing.labels,
    })
}

fn check_geometry(size: usize, channels: usize) -> Result<()> {
    ensure!(
        channels == 1 || channels == 3,
        "image folders load as 1 (grayscale) or 3 (RGB) channels, not {channels}"
    );
    ensure!(size > 0, "image size must be positive");
    Ok(())
}

/// A folder as a source: decoded into memory when it fits in `memory_limit_mib`, else read
/// from disk as batches are taken (decoded on the worker threads).
pub fn folder_source(
    listing: Listing,
    size: usize,
    channels: usize,
    transforms: Pipeline,
    memory_limit_mib: usize,
) -> Result<Box<dyn Source>> {
    check_geometry(size, channels)?;
    let bytes = listing.paths.len() * channels * size * size;
    let name = listing.dir.display().to_string();
    if bytes > memory_limit_mib << 20 {
        tracing::info!(
            "{name}: {} images ({} MiB decoded) stream from disk",
            listing.paths.len(),
            bytes >> 20
        );
        return Ok(Box::new(Streamed::new(
            name,
            listing.paths,
            listing.labels,
            size,
            channels,
            transforms,
        )?));
    }
    let data = Dataset {
        name,
        shape: [channels, size, size],
        pixels: decode_all(&listing.paths, size, channels)?,
        labels: listing.labels,
    };
    Ok(Box::new(InMemory::new(Arc::new(data), None, transforms)?))
}

fn class_of(root: &Path, path: &Path) -> Option<String> {
    let parent = path.parent()?;
    (parent != root).then(|| {
        parent
            .strip_prefix(root)
            .ok()?
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    })?
}

/// `(c, size, size)` bytes, channel-major.
pub fn resize_center_crop(img: &image::DynamicImage, size: usize, channels: usize) -> Vec<u8> {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = size as f64 / w.min(h);
    let nw = ((w * scale).round() as u32).max(size as u32);
    let nh = ((h * scale).round() as u32).max(size as u32);
    let resized = img.resize_exact(nw, nh, image::imageops::FilterType::Triangle);
    let left = (nw - size as u32) / 2;
    let top = (nh - size as u32) / 2;
    let cropped = resized.crop_imm(left, top, size as u32, size as u32);
    if channels == 1 {
        cropped.to_luma8().into_raw()
    } else {
        let rgb = cropped.to_rgb8();
        let mut planar = vec![0u8; 3 * size * size];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                planar[c * size * size + i] = px.0[c];
            }
        }
        planar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_folder_resizes_crops_and_labels_by_folder() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for (class, shade) in [("cats", 10u8), ("dogs", 200u8)] {
            fs::create_dir(dir.path().join(class))?;
            let img = image::RgbImage::from_pixel(40, 20, image::Rgb([shade, shade, shade]));
            img.save(dir.path().join(class).join("a.png"))?;
        }
        let data = load_image_folder(dir.path(), 8, 3)?;
        assert_eq!(data.len(), 2);
        assert_eq!(data.shape, [3, 8, 8]);
        assert_eq!(data.labels, Some(vec![0, 1]));
        assert!(data.image(0).iter().all(|&p| p == 10));
        assert!(data.image(1).iter().all(|&p| p == 200));
        let gray = load_image_folder(dir.path(), 4, 1)?;
        assert_eq!(gray.image_size(), 16);
        Ok(())
    }

    /// A folder over the memory limit is read from disk as it is taken and gives the images,
    /// labels and channels the in-memory one gives; the channel probe sees colour.
    #[test]
    fn a_streamed_folder_yields_what_memory_holds() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for (i, class) in ["a", "b", "c"].iter().enumerate() {
            fs::create_dir(dir.path().join(class))?;
            for j in 0..3u32 {
                let img = image::RgbImage::from_fn(24, 18, |x, y| {
                    image::Rgb([(x * 9 + j) as u8, (y * 11) as u8, (40 * i) as u8])
                });
                img.save(dir.path().join(class).join(format!("{j}.png")))?;
            }
        }
        let listing = || list_images(dir.path());
        assert_eq!(probe_channels(&listing()?.paths, 4)?, 3);
        let flip = Pipeline(vec![crate::data::transforms::Transform::Flip]);
        let memory = folder_source(listing()?, 8, 3, flip.clone(), 64)?;
        let streamed = folder_source(listing()?, 8, 3, flip, 0)?;
        assert_eq!((memory.len(), streamed.len()), (9, 9));
        assert_eq!(memory.shape(), streamed.shape());
        assert_eq!(streamed.classes(), Some(3));
        for i in 0..9 {
            let (mut r1, mut r2) = (layers::Rng::new(i as u64), layers::Rng::new(i as u64));
            assert_eq!(
                memory.image(i, &mut r1)?,
                streamed.image(i, &mut r2)?,
                "image {i}"
            );
            assert_eq!(memory.label(i), streamed.label(i));
        }
        let grey = dir.path().join("grey");
        fs::create_dir(&grey)?;
        image::GrayImage::from_pixel(5, 5, image::Luma([7])).save(grey.join("g.png"))?;
        assert_eq!(probe_channels(&list_images(&grey)?.paths, 4)?, 1);
        Ok(())
    }

    /// A PNG whose header claims 12,000 x 12,000 RGB pixels (432 MB) is refused by the
    /// decoder's limit before it allocates, with an error naming the file.
    #[test]
    fn an_image_claiming_too_many_pixels_is_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big.png");
        let mut png = Vec::new();
        image::RgbImage::new(2, 2)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        // IHDR's width and height, and its CRC made right again.
        png[16..20].copy_from_slice(&12_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&12_000u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        fs::write(&path, png)?;
        let e = format!("{:#}", open_image(&path).unwrap_err());
        assert!(
            e.contains("cannot decode image") && e.contains("big.png") && e.contains("limit"),
            "{e}"
        );
        Ok(())
    }
}
