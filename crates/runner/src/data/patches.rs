//! Key patches of an image (Puzzle-GAN): chosen without labels as the non-overlapping square
//! windows holding the most ink, most first, or read from a boxes file for a user's images.
//! Each patch's crop is resized (Catmull-Rom, as the reference's bicubic) to the full side, as
//! the reference's part encoder reads it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use image::{imageops, ImageBuffer, Luma};
use layers::step::{overlap, PatchBox};

use crate::data::transforms::Image;

/// Up to `count` non-overlapping `size x size` windows of `image`, each the window with the
/// most ink (the channels summed) among those that overlap no window chosen before; windows
/// without ink are not chosen (a blank image has none).
pub fn key_patches(image: &Image, count: usize, size: usize) -> Vec<PatchBox> {
    let [c, h, w] = image.shape;
    if size == 0 || size > h || size > w {
        return Vec::new();
    }
    // Summed-area table of the ink.
    let mut table = vec![0f64; (h + 1) * (w + 1)];
    for y in 0..h {
        for x in 0..w {
            let ink: f64 = (0..c).map(|k| image.data[(k * h + y) * w + x] as f64).sum();
            table[(y + 1) * (w + 1) + x + 1] =
                ink + table[y * (w + 1) + x + 1] + table[(y + 1) * (w + 1) + x]
                    - table[y * (w + 1) + x];
        }
    }
    let window = |x: usize, y: usize| {
        let at = |yy: usize, xx: usize| table[yy * (w + 1) + xx];
        at(y + size, x + size) - at(y, x + size) - at(y + size, x) + at(y, x)
    };
    let mut chosen: Vec<PatchBox> = Vec::with_capacity(count);
    while chosen.len() < count {
        let mut best: Option<(f64, PatchBox)> = None;
        for y in 0..=h - size {
            for x in 0..=w - size {
                let candidate = [x, y, size, size];
                if chosen.iter().any(|b| overlap(b, &candidate)) {
                    continue;
                }
                let ink = window(x, y);
                if ink > 1e-6 && best.is_none_or(|(b, _)| ink > b) {
                    best = Some((ink, candidate));
                }
            }
        }
        match best {
            Some((_, b)) => chosen.push(b),
            None => break,
        }
    }
    chosen
}

/// The crop of `b` resized to the image's own side, each channel through Catmull-Rom.
pub fn crop_resized(image: &Image, b: PatchBox) -> Result<Image> {
    let [c, h, w] = image.shape;
    let [x, y, bw, bh] = b;
    ensure!(
        bw > 0 && bh > 0 && x + bw <= w && y + bh <= h,
        "box [{x}, {y}, {bw}, {bh}] (x, y, w, h) lies outside the {w} x {h} image"
    );
    let mut data = Vec::with_capacity(c * h * w);
    for k in 0..c {
        let crop: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_fn(bw as u32, bh as u32, |cx, cy| {
                Luma([image.data[(k * h + y + cy as usize) * w + x + cx as usize]])
            });
        let resized = imageops::resize(&crop, w as u32, h as u32, imageops::FilterType::CatmullRom);
        data.extend(resized.pixels().map(|p| p.0[0].clamp(0.0, 1.0)));
    }
    Image::new(image.shape, data)
}

/// A boxes file: one line per image, `NAME x,y,w,h [x,y,w,h ...]`, the boxes in pixels of the
/// image as the model sees it (after resizing to the model's side), most important first.
pub fn read_boxes(path: &Path, side: usize) -> Result<HashMap<String, Vec<PatchBox>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the boxes file {}", path.display()))?;
    let mut boxes = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let mut list = Vec::new();
        for field in fields {
            let values: Vec<usize> = field
                .split(',')
                .map(|v| v.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .ok()
                .filter(|v: &Vec<usize>| v.len() == 4)
                .with_context(|| {
                    format!(
                        "{} line {}: box {field:?} of {name}: expected x,y,w,h (four whole numbers)",
                        path.display(),
                        n + 1
                    )
                })?;
            let b = [values[0], values[1], values[2], values[3]];
            // Checked sums: coordinates near usize::MAX must be refused, not overflow.
            let inside = |at: usize, len: usize| at.checked_add(len).is_some_and(|end| end <= side);
            if b[2] == 0 || b[3] == 0 || !inside(b[0], b[2]) || !inside(b[1], b[3]) {
                bail!(
                    "{} line {}: box {field} of {name} lies outside the {side} x {side} image the model sees",
                    path.display(),
                    n + 1
                );
            }
            list.push(b);
        }
        ensure!(
            !list.is_empty(),
            "{} line {}: {name} has no box",
            path.display(),
            n + 1
        );
        boxes.insert(name.to_string(), list);
    }
    ensure!(!boxes.is_empty(), "{}: no boxes", path.display());
    Ok(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(side: usize, ink: &[(usize, usize)]) -> Image {
        let mut data = vec![0f32; side * side];
        for &(x, y) in ink {
            data[y * side + x] = 1.0;
        }
        Image::new([1, side, side], data).unwrap()
    }

    #[test]
    fn key_patches_take_the_most_ink_without_overlap() {
        // A 3 x 3 blob at (10, 10) and a single dot at (2, 2).
        let mut ink: Vec<(usize, usize)> = (10..13)
            .flat_map(|x| (10..13).map(move |y| (x, y)))
            .collect();
        ink.push((2, 2));
        let img = image(16, &ink);
        // The blob's window, then the dot's; no third window holds ink.
        let boxes = key_patches(&img, 3, 4);
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        let [first, second] = [boxes[0], boxes[1]];
        assert!(
            first[0] <= 10 && first[0] + 4 >= 13 && first[1] <= 10 && first[1] + 4 >= 13,
            "{first:?}"
        );
        assert!(
            second[0] <= 2 && second[0] + 4 > 2 && second[1] <= 2 && second[1] + 4 > 2,
            "{second:?}"
        );
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                assert!(!overlap(a, b), "{a:?} {b:?}");
            }
        }
        assert!(key_patches(&image(16, &[]), 3, 4).is_empty());
        assert!(key_patches(&img, 3, 20).is_empty());
    }

    #[test]
    fn crops_resize_to_the_full_side() -> Result<()> {
        let img = image(8, &[(0, 0), (1, 0), (0, 1), (1, 1)]);
        let part = crop_resized(&img, [0, 0, 2, 2])?;
        assert_eq!(part.shape, [1, 8, 8]);
        assert!(
            part.data.iter().all(|&v| (v - 1.0).abs() < 1e-5),
            "an inked crop stays inked"
        );
        let e = crop_resized(&img, [6, 6, 4, 4]).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        Ok(())
    }

    #[test]
    fn boxes_files_are_checked_line_by_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("boxes.txt");
        std::fs::write(&path, "a.png 0,0,8,8 10,10,4,4\nb.png 1,2,3,4\n")?;
        let boxes = read_boxes(&path, 32)?;
        assert_eq!(boxes["a.png"], vec![[0, 0, 8, 8], [10, 10, 4, 4]]);
        for (text, needle) in [
            ("a.png 30,30,8,8\n", "outside the 32 x 32"),
            ("a.png 1,2,3\n", "expected x,y,w,h"),
            ("a.png\n", "has no box"),
        ] {
            std::fs::write(&path, text)?;
            let e = format!("{:#}", read_boxes(&path, 32).unwrap_err());
            assert!(
                e.contains(needle) && e.contains("line 1")
                    || needle == "has no box" && e.contains(needle),
                "{e}"
            );
        }
        Ok(())
    }

    /// Coordinates near `usize::MAX` (found by tests/fuzz_loaders.rs) lie outside the image:
    /// `x + w` overflowed, a panic, before the sums were checked.
    #[test]
    fn huge_box_coordinates_are_outside_not_an_overflow() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("boxes.txt");
        for text in [
            "a.png 18446744073709551615,0,8,8\n",
            "a.png 0,1,8,18446744073709551615\n",
        ] {
            std::fs::write(&path, text)?;
            let e = format!("{:#}", read_boxes(&path, 32).unwrap_err());
            assert!(
                e.contains("boxes.txt line 1") && e.contains("outside the 32 x 32"),
                "{e}"
            );
        }
        Ok(())
    }
}
