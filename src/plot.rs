//! Pictures for users: SVG charts drawn with plotters (SVG needs no system fonts, so the CPU
//! build stays self-contained), each rendered in memory and written atomically.

use crate::atomic_file::write_atomic;
use anyhow::{Result, anyhow};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (720, 480);

fn span(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    // A little room so points on the extremes are not clipped by the frame.
    let pad = 0.03 * (hi - lo);
    (lo - pad, hi + pad)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one chart (title, labelled mesh, `draw`'s series, a legend when `legend`) and writes
/// it to `path`.
fn render(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
    legend: bool,
    draw: impl FnOnce(&mut Chart) -> Result<()>,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        draw(&mut chart)?;
        if legend {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    write_atomic(path, svg.as_bytes())
}

/// A histogram of `values` in `bins` equal-width bins.
pub fn histogram(
    path: &Path,
    values: &[f64],
    title: &str,
    x_label: &str,
    bins: usize,
) -> Result<()> {
    let (lo, hi) = span(values);
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for &v in values {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = f64::from(counts.iter().copied().max().unwrap_or(1).max(1));
    render(
        path,
        title,
        (x_label, "samples"),
        (lo..hi, 0.0..top * 1.1 + 1.0),
        false,
        |chart| {
            chart
                .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + width, f64::from(c))],
                        BLUE.mix(0.6).filled(),
                    )
                }))
                .map_err(|e| anyhow!("{e}"))?;
            Ok(())
        },
    )
}

/// A scatter plot of (x, y) pairs with the y = x diagonal.
pub fn scatter(
    path: &Path,
    xs: &[f64],
    ys: &[f64],
    title: &str,
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let all: Vec<f64> = xs.iter().chain(ys).copied().collect();
    let (lo, hi) = span(&all);
    render(
        path,
        title,
        (x_label, y_label),
        (lo..hi, lo..hi),
        false,
        |chart| {
            chart
                .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.3)))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(
                    xs.iter()
                        .zip(ys)
                        .map(|(&x, &y)| Circle::new((x, y), 3, RED.mix(0.6).filled())),
                )
                .map_err(|e| anyhow!("{e}"))?;
            Ok(())
        },
    )
}

/// One or more named line series over a shared x axis (empty series are skipped).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let lines: Vec<Line> = series
        .iter()
        .map(|(name, points)| Line {
            name,
            points: points.clone(),
            band: Vec::new(),
        })
        .collect();
    lines_with_bands(path, title, x_label, y_label, &lines)
}

/// A named line, with a band around it (`(x, low, high)`; empty for none).
pub struct Line<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

/// Colours told apart on white, one per series in turn.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Named lines over a shared x axis, each in its own colour, with its band filled in a light
/// shade of it beneath (empty lines are skipped, and keep their colour).
pub fn lines_with_bands(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Line],
) -> Result<()> {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|l| {
            let band = l.band.iter().flat_map(|&(_, lo, hi)| [lo, hi]);
            l.points.iter().map(|p| p.1).chain(band)
        })
        .collect();
    let ((x0, x1), (y0, y1)) = (span(&xs), span(&ys));
    render(
        path,
        title,
        (x_label, y_label),
        (x0..x1, y0..y1),
        true,
        |chart| {
            for (k, line) in series.iter().enumerate() {
                let color = COLORS[k % COLORS.len()];
                if line.band.len() > 1 {
                    let outline: Vec<(f64, f64)> = line
                        .band
                        .iter()
                        .map(|&(x, lo, _)| (x, lo))
                        .chain(line.band.iter().rev().map(|&(x, _, hi)| (x, hi)))
                        .collect();
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            outline,
                            color.mix(0.18).filled(),
                        )))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
            for (k, line) in series.iter().enumerate() {
                let (name, points) = (line.name, &line.points);
                if points.is_empty() {
                    continue;
                }
                let color = COLORS[k % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                if points.len() < 40 {
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_svg_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("h.svg");
        histogram(
            &h,
            &[0.1, 0.2, 0.2, 0.9, 1.5],
            "Entropy of 5 samples",
            "entropy (nats)",
            10,
        )
        .unwrap();
        let text = std::fs::read_to_string(&h).unwrap();
        assert!(
            text.starts_with("<svg")
                && text.contains("Entropy of 5 samples")
                && text.contains("<rect")
        );
        let s = dir.path().join("s.svg");
        scatter(
            &s,
            &[1.0, 2.0],
            &[1.5, 2.5],
            "prefix vs full",
            "full",
            "prefix",
        )
        .unwrap();
        let text = std::fs::read_to_string(&s).unwrap();
        assert!(text.contains("prefix vs full") && text.matches("<circle").count() == 2);
        let l = dir.path().join("l.svg");
        lines(
            &l,
            "loss",
            "step",
            "nats",
            &[("train", vec![(1.0, 2.0), (2.0, 1.5)]), ("empty", vec![])],
        )
        .unwrap();
        let text = std::fs::read_to_string(&l).unwrap();
        assert!(text.contains("<polyline") && text.contains("train"));
        let b = dir.path().join("b.svg");
        let band = Line {
            name: "edco",
            points: vec![(0.0, 20.0), (1.0, 25.0)],
            band: vec![(0.0, 18.0, 22.0), (1.0, 21.0, 29.0)],
        };
        lines_with_bands(&b, "accuracy", "round", "%", &[band]).unwrap();
        let text = std::fs::read_to_string(&b).unwrap();
        // The band is one filled polygon, in a light shade of the line's colour, drawn first
        // (beneath the line).
        assert_eq!(text.matches("<polygon").count(), 1, "{text}");
        let polygon = text.find("<polygon opacity=\"0.18\" fill=\"#1F77B4\"");
        let line = text.find("stroke=\"#1F77B4\" stroke-width=\"2\"");
        assert!(polygon.is_some() && polygon < line, "{text}");
    }
}
