//! MNIST-format IDX files (gzipped or raw; Fashion-MNIST shares the format) and the bundled
//! subset compiled into the binary.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;

use super::{Dataset, Split};

const IDX_UBYTE: u8 = 0x08;

/// Reads a possibly gzipped file whole.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decompress_if_gz(raw, path)
}

fn decompress_if_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| {
                format!(
                    "{} is not a valid gzip file (corrupt or truncated)",
                    path.display()
                )
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes with `rank` dimensions; returns the dims and the data.
pub fn parse_idx(bytes: &[u8], rank: u8, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(
        bytes.len() >= 4,
        "{}: {} bytes is too short for an IDX header",
        path.display(),
        bytes.len()
    );
    ensure!(
        bytes[0] == 0 && bytes[1] == 0 && bytes[2] == IDX_UBYTE && bytes[3] == rank,
        "{}: expected an IDX file of unsigned bytes with {rank} dimension(s) (magic 00 00 08 0{rank}), found magic {:02x} {:02x} {:02x} {:02x}",
        path.display(),
        bytes[0],
        bytes[1],
        bytes[2],
        bytes[3]
    );
    let header = 4 + 4 * rank as usize;
    ensure!(
        bytes.len() >= header,
        "{}: truncated IDX header ({} bytes, expected at least {header})",
        path.display(),
        bytes.len()
    );
    let dims: Vec<usize> = (0..rank as usize)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let found = bytes.len() - header;
    // The dims are the file's claim: their product may overflow, so it is checked, and it is
    // compared with the bytes there before anything is sized by it.
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    ensure!(
        expected == Some(found),
        "{}: header says {dims:?} = {} bytes of data, found {found} (truncated or corrupt)",
        path.display(),
        expected.map_or("more".to_string(), |e| e.to_string())
    );
    Ok((dims, bytes[header..].to_vec()))
}

/// Finds `{stem}` or `{stem}.gz` in `dir`.
fn find_idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The four standard file names of an IDX dataset.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

pub fn is_idx_dir(dir: &Path) -> bool {
    IDX_FILES.iter().any(|f| find_idx_file(dir, f).is_some())
}

/// Loads one split of an MNIST-format dataset from `dir`.
pub fn load_idx_dir(dir: &Path, split: Split) -> Result<Dataset> {
    let prefix = split.idx_prefix();
    let find = |kind: &str| {
        let stem = format!("{prefix}-{kind}");
        find_idx_file(dir, &stem).with_context(|| {
            format!(
                "{}: missing {stem} (or {stem}.gz); an MNIST-format directory holds {}",
                dir.display(),
                IDX_FILES.join(", ")
            )
        })
    };
    let images_path = find("images-idx3-ubyte")?;
    let labels_path = find("labels-idx1-ubyte")?;
    from_idx_bytes(
        &read_maybe_gz(&images_path)?,
        &images_path,
        &read_maybe_gz(&labels_path)?,
        &labels_path,
        format!("{}:{}", dir.display(), split.name()),
    )
}

fn from_idx_bytes(
    images: &[u8],
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    name: String,
) -> Result<Dataset> {
    let (dims, pixels) = parse_idx(images, 3, images_path)?;
    // Images of no pixels would leave every later image index dividing by zero.
    ensure!(
        dims[1] > 0 && dims[2] > 0,
        "{}: images of {} x {} pixels; expected at least 1 x 1",
        images_path.display(),
        dims[1],
        dims[2]
    );
    let (ldims, labels) = parse_idx(labels, 1, labels_path)?;
    ensure!(
        ldims[0] == dims[0],
        "{} holds {} labels but {} holds {} images",
        labels_path.display(),
        ldims[0],
        images_path.display(),
        dims[0]
    );
    if let Some(bad) = labels.iter().find(|&&l| l > 9) {
        bail!("{}: label {bad} is outside 0-9", labels_path.display());
    }
    Ok(Dataset {
        name,
        shape: [1, dims[1], dims[2]],
        pixels,
        labels: Some(labels.into_iter().map(u32::from).collect()),
    })
}

/// The bundled MNIST subset (8,006 training and 997 test digits; MNIST by LeCun, Cortes and
/// Burges, CC BY-SA 3.0), compiled into the binary so that `genzoo train` needs no files.
pub fn bundled_mnist(split: Split) -> Result<Dataset> {
    const TRAIN_IMAGES: &[u8] = include_bytes!("../../../../data/mnist/train-images-idx3-ubyte.gz");
    const TRAIN_LABELS: &[u8] = include_bytes!("../../../../data/mnist/train-labels-idx1-ubyte.gz");
    const TEST_IMAGES: &[u8] = include_bytes!("../../../../data/mnist/t10k-images-idx3-ubyte.gz");
    const TEST_LABELS: &[u8] = include_bytes!("../../../../data/mnist/t10k-labels-idx1-ubyte.gz");
    let (images, labels) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS),
        Split::Test => (TEST_IMAGES, TEST_LABELS),
    };
    let ip = Path::new("<bundled>/images");
    let lp = Path::new("<bundled>/labels");
    from_idx_bytes(
        &decompress_if_gz(images.to_vec(), ip)?,
        ip,
        &decompress_if_gz(labels.to_vec(), lp)?,
        lp,
        format!("bundled-mnist:{}", split.name()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, IDX_UBYTE, rank];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn bundled_subset_has_the_documented_sizes() -> Result<()> {
        let train = bundled_mnist(Split::Train)?;
        let test = bundled_mnist(Split::Test)?;
        assert_eq!((train.len(), test.len()), (8006, 997));
        assert_eq!(train.shape, [1, 28, 28]);
        // Every digit is present in the test split.
        let labels = test.labels.as_ref().unwrap();
        for d in 0..10u32 {
            assert!(labels.iter().filter(|&&l| l == d).count() > 50);
        }
        Ok(())
    }
    #[test]
    fn idx_parser_rejects_bad_headers_and_lengths() {
        let p = Path::new("f.idx");
        let ok = idx(3, &[2, 2, 2], &[0; 8]);
        assert!(parse_idx(&ok, 3, p).is_ok());
        let e = parse_idx(&ok[..ok.len() - 1], 3, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("found 7"), "{e}");
        let e = parse_idx(&idx(1, &[8], &[0; 8]), 3, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("magic 00 00 08 03") && e.contains("found magic 00 00 08 01"),
            "{e}"
        );
        let e = parse_idx(&[1, 2], 3, p).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }
    /// Dims whose product overflows (found by tests/fuzz_loaders.rs: a panic) are a header
    /// that does not match the file.
    #[test]
    fn dims_that_overflow_are_a_named_error() {
        let p = Path::new("f.idx");
        let huge = idx(3, &[u32::MAX, u32::MAX, u32::MAX], &[0; 8]);
        let e = parse_idx(&huge, 3, p).unwrap_err().to_string();
        assert!(
            e.contains("f.idx: header says [4294967295, 4294967295, 4294967295] = more bytes")
                && e.contains("found 8"),
            "{e}"
        );
    }

    /// Images of 0 x N pixels (found by tests/fuzz_loaders.rs) are refused: the dataset's
    /// image count divided by their size, zero.
    #[test]
    fn images_without_pixels_are_refused() {
        let (ip, lp) = (Path::new("images"), Path::new("labels"));
        let labels = idx(1, &[2], &[1, 2]);
        for dims in [[2, 0, 5], [2, 5, 0], [2, 0, 0]] {
            let images = idx(3, &dims, &[]);
            let e = from_idx_bytes(&images, ip, &labels, lp, "x".into())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("images: images of") && e.contains("pixels"),
                "{e}"
            );
        }
    }

    #[test]
    fn missing_and_corrupt_files_are_named() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let e = format!("{:#}", load_idx_dir(dir.path(), Split::Train).unwrap_err());
        assert!(e.contains("missing train-images-idx3-ubyte"), "{e}");
        fs::write(
            dir.path().join("train-images-idx3-ubyte.gz"),
            [0x1f, 0x8b, 1, 2, 3],
        )?;
        fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            idx(1, &[1], &[3]),
        )?;
        let e = format!("{:#}", load_idx_dir(dir.path(), Split::Train).unwrap_err());
        assert!(
            e.contains("train-images-idx3-ubyte.gz is not a valid gzip file"),
            "{e}"
        );
        fs::write(
            dir.path().join("train-images-idx3-ubyte.gz"),
            idx(3, &[2, 1, 1], &[0, 1]),
        )?;
        let e = format!("{:#}", load_idx_dir(dir.path(), Split::Train).unwrap_err());
        assert!(
            e.contains("holds 1 labels but") && e.contains("holds 2 images"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            crate::data::folder::load_image_folder(&dir.path().join("none"), 8, 1).unwrap_err()
        );
        assert!(e.contains("cannot read directory"), "{e}");
        Ok(())
    }
}
