//! The PNG: 4 KiB random read and random write IOPS against queue depth,
//! one line per contender (medians). Text is drawn with a TrueType font
//! found at run time (`BENCH_FONT` or DejaVu/Liberation); without one the
//! plot is drawn without text rather than not at all.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::tables::blk_medians;
use crate::Record;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn load_font() -> bool {
    let env = std::env::var("BENCH_FONT").ok();
    for p in env.iter().map(String::as_str).chain(FONTS.iter().copied()) {
        if let Ok(bytes) = std::fs::read(p) {
            // The font must outlive every chart: leak it once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

const COLORS: &[RGBColor] = &[
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Points `(qd, iops)` per contender for workloads `rw-4k-qd*`.
fn series(recs: &[Record], rw: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let (wls, cons, med) = blk_medians(recs);
    let prefix = format!("{rw}-4k-qd");
    let mut out = Vec::new();
    for c in cons {
        let mut pts: Vec<(f64, f64)> = wls
            .iter()
            .filter_map(|w| {
                let qd: f64 = w.strip_prefix(&prefix)?.parse().ok()?;
                let m = med.get(&(c.clone(), w.clone()))?;
                Some((qd, m.iops))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !pts.is_empty() {
            out.push((c, pts));
        }
    }
    out
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    data: &[(String, Vec<(f64, f64)>)],
    text: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let ymax = data
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    // x is log2(queue depth), labelled with the depth itself.
    let xmax = data
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0.log2()))
        .fold(1.0f64, f64::max)
        + 0.3;
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(title, ("sans-serif", 20))
            .x_label_area_size(36)
            .y_label_area_size(64);
    } else {
        b.x_label_area_size(8).y_label_area_size(8);
    }
    let mut chart = b
        .build_cartesian_2d(-0.3f64..xmax, 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("queue depth")
            .y_desc("IOPS")
            .x_labels(((xmax + 0.3) as usize) + 1)
            .x_label_formatter(&|v| format!("{:.0}", v.exp2()))
            .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.light_line_style(WHITE)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, pts)) in data.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let s = chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(x, y)| (x.log2(), y)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        if text {
            s.label(crate::tables::label(name)).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x.log2(), y), 4, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

/// Draws the plot into `path`.
pub fn draw(recs: &[Record], path: &Path) -> Result<()> {
    let rr = series(recs, "randread");
    let rw = series(recs, "randwrite");
    if rr.is_empty() && rw.is_empty() {
        bail!("no 4 KiB random results");
    }
    let text = load_font();
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let halves = root.split_evenly((1, 2));
    panel(
        &halves[0],
        "4 KiB random read: IOPS vs queue depth",
        &rr,
        text,
    )?;
    panel(
        &halves[1],
        "4 KiB random write: IOPS vs queue depth",
        &rw,
        text,
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
