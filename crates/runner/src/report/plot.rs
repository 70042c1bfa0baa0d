//! The loss-curve plot of a run.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// One named curve of `(step, value)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bitmap backend has no system fonts; DejaVu Sans is compiled in.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws the curves on one chart and writes it as PNG.
pub fn plot_curves(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    ensure_font();
    let all: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite())
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let margin = ((y1 - y0) * 0.05).max(1e-6);
    let (width, height) = (900u32, 540u32);
    // Drawn into memory and encoded by `image`, so plotters needs no encoder of its own.
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - margin)..(y1 + margin))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied().filter(|p| p.1.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    let png = image::RgbImage::from_raw(width, height, pixels).context("plot buffer size")?;
    let bytes = {
        let mut out = std::io::Cursor::new(Vec::new());
        png.write_to(&mut out, image::ImageFormat::Png)?;
        out.into_inner()
    };
    layers::train::checkpoint::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("loss.png");
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 100.0 / (1.0 + i as f64)))
            .collect();
        plot_curves(
            &p,
            "t",
            "nats",
            &[Series {
                name: "train",
                points: &pts,
            }],
        )?;
        let img = image::open(&p)?;
        assert_eq!((img.width(), img.height()), (900, 540));
        Ok(())
    }
}
