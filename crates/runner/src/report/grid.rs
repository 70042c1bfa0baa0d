//! Image grids with torchvision's `make_grid` / `save_image` conventions: `nrow` images per
//! row, `padding` pixels of `pad_value` around and between them, values in [0, 1] mapped to
//! bytes by `x * 255 + 0.5` clamped.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct GridOptions {
    pub nrow: usize,
    pub padding: usize,
    pub pad_value: f32,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            nrow: 8,
            padding: 2,
            pad_value: 0.0,
        }
    }
}

/// Lays `(n, c, h, w)` images out in a grid: returns `(c, H, W)` values as f32.
pub fn make_grid(images: &Tensor, opts: GridOptions) -> Result<(usize, usize, usize, Vec<f32>)> {
    let (n, c, h, w) = images.dims4().context("images must be (n, c, h, w)")?;
    ensure!(n > 0, "no images to lay out");
    ensure!(opts.nrow > 0, "nrow must be positive");
    let xmaps = opts.nrow.min(n);
    let ymaps = n.div_ceil(xmaps);
    let (cell_h, cell_w) = (h + opts.padding, w + opts.padding);
    let (gh, gw) = (ymaps * cell_h + opts.padding, xmaps * cell_w + opts.padding);
    let mut grid = vec![opts.pad_value; c * gh * gw];
    let values = images
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for k in 0..n {
        let (gy, gx) = (k / xmaps, k % xmaps);
        for ch in 0..c {
            for y in 0..h {
                let src = ((k * c + ch) * h + y) * w;
                let dst =
                    (ch * gh + gy * cell_h + opts.padding + y) * gw + gx * cell_w + opts.padding;
                grid[dst..dst + w].copy_from_slice(&values[src..src + w]);
            }
        }
    }
    Ok((c, gh, gw, grid))
}

fn to_byte(v: f32) -> u8 {
    (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

/// Saves `(n, c, h, w)` images in [0, 1] as a PNG grid (grayscale for one channel, RGB for three).
pub fn save_image(images: &Tensor, path: &Path, opts: GridOptions) -> Result<()> {
    let (c, gh, gw, grid) = make_grid(images, opts)?;
    let plane = gh * gw;
    let result = match c {
        1 => image::GrayImage::from_raw(
            gw as u32,
            gh as u32,
            grid.iter().map(|&v| to_byte(v)).collect(),
        )
        .context("grid buffer size")?
        .save(path),
        3 => {
            let mut bytes = Vec::with_capacity(3 * plane);
            for i in 0..plane {
                bytes.extend((0..3).map(|ch| to_byte(grid[ch * plane + i])));
            }
            image::RgbImage::from_raw(gw as u32, gh as u32, bytes)
                .context("grid buffer size")?
                .save(path)
        }
        _ => anyhow::bail!("can save 1- or 3-channel images, not {c}"),
    };
    result.with_context(|| format!("cannot write image {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn grid_layout_matches_torchvision() -> Result<()> {
        // 3 images of 2x2 with nrow 2 and padding 1: torchvision gives a 1 x 7 x 7 grid.
        let x = Tensor::ones((3, 1, 2, 2), DType::F32, &Device::Cpu)?;
        let (c, h, w, g) = make_grid(
            &x,
            GridOptions {
                nrow: 2,
                padding: 1,
                pad_value: 0.0,
            },
        )?;
        assert_eq!((c, h, w), (1, 7, 7));
        let ones: Vec<usize> = g
            .iter()
            .enumerate()
            .filter(|(_, v)| **v == 1.0)
            .map(|(i, _)| i)
            .collect();
        // Rows 1-2 cols 1-2 and 4-5; rows 4-5 cols 1-2.
        assert_eq!(ones, vec![8, 9, 11, 12, 15, 16, 18, 19, 29, 30, 36, 37]);
        assert_eq!((to_byte(0.5), to_byte(1.2), to_byte(-0.1)), (128, 255, 0));
        Ok(())
    }

    #[test]
    fn saves_gray_and_rgb_pngs() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for c in [1, 3] {
            let x = Tensor::zeros((5, c, 4, 4), DType::F32, &Device::Cpu)?;
            let p = dir.path().join(format!("g{c}.png"));
            save_image(&x, &p, GridOptions::default())?;
            let img = image::open(&p)?;
            assert_eq!((img.width(), img.height()), (5 * 6 + 2, 6 + 2));
        }
        let x = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu)?;
        assert!(save_image(&x, &dir.path().join("x.png"), GridOptions::default()).is_err());
        Ok(())
    }
}
