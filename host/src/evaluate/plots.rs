//! The evaluation's plots, as PNG files a person would rather look at than read:
//! label-efficiency and per-checkpoint curves ([`line_chart`]), ROC curves per finding
//! ([`roc_curves`]) and 2-D maps of the test features coloured by label ([`feature_map`]).
//!
//! Drawing is plotters' into an RGB buffer, encoded by the `png` crate and written atomically.
//! Text is set in DejaVu Sans embedded in the binary ([`text`]), so that plots have readable
//! text on a machine with no system fonts and no fontconfig. Colours are the Okabe-Ito
//! palette (safe for the common colour-vision deficiencies), continued with Paul Tol's muted
//! palette past eight series; lines also differ by marker shape. Legends of line charts and
//! maps stand beside the plot, never over the data.
//!
//! This module only draws: the numbers (metrics, ROC points, projections) are computed by the
//! caller; [`roc_points`] is here because only the plot needs the whole curve.

mod text;

use crate::atomic_file::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendCoord, DrawingErrorKind};
use std::path::Path;
use text::{text_width, Canvas};

/// One line of a [`line_chart`]: an encoder's metric at each x (label fraction, epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The name shown in the legend (the encoder's).
    pub name: String,
    /// The points, in any order (they are joined in order of x).
    pub points: Vec<Point>,
}

/// One point of a [`Series`]; `sd`, when given, is drawn as an error bar of ± sd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub sd: Option<f64>,
}

/// How a [`line_chart`] lays out its x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    /// Fractions in (0, 1] on a log scale, ticks written as percentages (1%, 10%, 100%):
    /// label-efficiency curves.
    LogPercent,
    /// A linear axis, ticks as plain numbers: kNN top-1 per checkpoint epoch.
    Linear,
}

/// One encoder's ROC curve in a panel of [`roc_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct Roc {
    /// The encoder's name, shown in the legend with the AUC.
    pub name: String,
    /// False positive rates, non-decreasing, from 0 to 1 (as [`roc_points`] gives them).
    pub fpr: Vec<f64>,
    /// True positive rates, one per false positive rate.
    pub tpr: Vec<f64>,
    /// The area under the curve shown in the legend.
    pub auc: f64,
}

impl Roc {
    /// The ROC curve of `scores` against `labels` ([`roc_points`]) and its area (trapezoidal,
    /// which over these points equals the Mann-Whitney AUC with ties counted one half).
    pub fn from_scores(name: &str, scores: &[f64], labels: &[bool]) -> Result<Roc> {
        let (fpr, tpr) = roc_points(scores, labels)?;
        let auc = fpr
            .windows(2)
            .zip(tpr.windows(2))
            .map(|(f, t)| (f[1] - f[0]) * (t[0] + t[1]) / 2.0)
            .sum();
        Ok(Roc {
            name: name.to_string(),
            fpr,
            tpr,
            auc,
        })
    }
}

/// The points of the ROC curve of `scores` (higher means more likely positive) against
/// `labels`: `(fpr, tpr)`, from (0, 0) to (1, 1), one point per distinct score threshold.
/// Samples with equal scores are crossed together, so ties make a diagonal step rather than
/// an order-dependent staircase. Errors when the lengths differ, a score is not finite, or
/// the labels hold no positive or no negative (the curve is then undefined).
pub fn roc_points(scores: &[f64], labels: &[bool]) -> Result<(Vec<f64>, Vec<f64>)> {
    ensure!(
        scores.len() == labels.len(),
        "ROC curve: {} scores but {} labels",
        scores.len(),
        labels.len()
    );
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        bail!("ROC curve: score {i} is {}, not a finite number", scores[i]);
    }
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    ensure!(
        positives > 0 && negatives > 0,
        "ROC curve: the labels hold {positives} positives and {negatives} negatives; \
         the curve needs both"
    );
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut fpr, mut tpr) = (vec![0.0], vec![0.0]);
    let (mut tp, mut fp) = (0usize, 0usize);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(k + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            fpr.push(fp as f64 / negatives as f64);
            tpr.push(tp as f64 / positives as f64);
        }
    }
    Ok((fpr, tpr))
}

/// Draws one line per series (metric against x, ± sd as error bars) with a legend beside the
/// plot, and writes it as a PNG to `path`: label-efficiency curves ([`XScale::LogPercent`])
/// and kNN top-1 per checkpoint ([`XScale::Linear`]).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_scale: XScale,
) -> Result<()> {
    for_plot(path, || {
        check_series(series, x_scale)?;
        let legend_width = legend_width(series.iter().map(|s| s.name.as_str()))?;
        let size = (LINE_PLOT_SIZE.0 + legend_width, LINE_PLOT_SIZE.1);
        render_png(path, size, |root| {
            let body = titled(root, title)?;
            let (plot, legend) = body.split_horizontally(LINE_PLOT_SIZE.0);
            draw_lines(&plot, x_label, y_label, series, x_scale)?;
            let entries: Vec<LegendEntry> = series
                .iter()
                .enumerate()
                .map(|(i, s)| LegendEntry {
                    text: s.name.clone(),
                    colour: colour(i),
                    marker: Some(Marker::of(i)),
                })
                .collect();
            draw_side_legend(&legend, &entries)
        })
    })
}

/// Draws ROC curves as small multiples, one panel per finding (or class) titled with its
/// name, one line per encoder with its AUC in the panel's legend and the chance diagonal
/// dashed, and writes them as a PNG to `path`.
pub fn roc_curves(path: &Path, title: &str, panels: &[(String, Vec<Roc>)]) -> Result<()> {
    for_plot(path, || {
        check_rocs(panels)?;
        let (cols, rows) = grid(panels.len(), ROC_MAX_COLUMNS);
        let size = (
            cols as u32 * ROC_PANEL_SIZE,
            rows as u32 * ROC_PANEL_SIZE + TITLE_BAND,
        );
        render_png(path, size, |root| {
            let body = titled(root, title)?;
            let cells = body.split_evenly((rows, cols));
            for ((finding, rocs), cell) in panels.iter().zip(&cells) {
                draw_roc_panel(cell, finding, rocs)?;
            }
            Ok(())
        })
    })
}

/// Draws a 2-D map of the test features per encoder (one panel each, titled with the
/// encoder's name, axes named after `method`, e.g. "t-SNE" or "PCA"), the points coloured by
/// label with one legend beside the panels, and writes it as a PNG to `path`. Every panel's
/// points are the same samples in the same order: `labels[i]` is the label of point `i` of
/// each panel, an index into `label_names`.
pub fn feature_map(
    path: &Path,
    title: &str,
    method: &str,
    panels: &[(String, Vec<(f32, f32)>)],
    labels: &[usize],
    label_names: &[String],
) -> Result<()> {
    for_plot(path, || {
        check_map(panels, labels, label_names)?;
        let mut counts = vec![0usize; label_names.len()];
        for &l in labels {
            counts[l] += 1;
        }
        let entries: Vec<LegendEntry> = label_names
            .iter()
            .zip(&counts)
            .enumerate()
            .map(|(i, (name, n))| LegendEntry {
                text: format!("{name} ({n})"),
                colour: colour(i),
                marker: None,
            })
            .collect();
        let legend_width = legend_width(entries.iter().map(|e| e.text.as_str()))?;
        let (cols, rows) = grid(panels.len(), MAP_MAX_COLUMNS);
        let plots_width = cols as u32 * MAP_PANEL_SIZE;
        let size = (
            plots_width + legend_width,
            rows as u32 * MAP_PANEL_SIZE + TITLE_BAND,
        );
        // Drawn in a fixed shuffled order, so that no label is painted wholly over another.
        let order = crate::seeds::permutation(labels.len(), 0x9107);
        render_png(path, size, |root| {
            let body = titled(root, title)?;
            let (plots, legend) = body.split_horizontally(plots_width);
            let cells = plots.split_evenly((rows, cols));
            for ((encoder, points), cell) in panels.iter().zip(&cells) {
                draw_map_panel(cell, encoder, method, points, labels, &order)?;
            }
            draw_side_legend(&legend, &entries)
        })
    })
}

// ---------------------------------------------------------------------------------------
// Layout and style.

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;

/// The font family named to plotters (one font draws all text: see [`text`]).
const FONT_FAMILY: &str = "sans-serif";

const TITLE_SIZE: u32 = 30;
/// The height the title takes above the plots.
const TITLE_BAND: u32 = 50;
const AXIS_NAME_SIZE: u32 = 22;
const TICK_SIZE: u32 = 18;
const LEGEND_SIZE: u32 = 20;
const PANEL_TITLE_SIZE: u32 = 22;
const PANEL_LEGEND_SIZE: u32 = 16;

/// The plot of a line chart, without its legend.
const LINE_PLOT_SIZE: (u32, u32) = (1000, 700);
const ROC_PANEL_SIZE: u32 = 480;
const ROC_MAX_COLUMNS: usize = 4;
const MAP_PANEL_SIZE: u32 = 640;
const MAP_MAX_COLUMNS: usize = 3;
/// The widest a side legend gets; longer names are cut with an ellipsis.
const LEGEND_MAX_WIDTH: u32 = 420;

const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const CHANCE: RGBColor = RGBColor(0x88, 0x88, 0x88);

/// Okabe & Ito's eight colours (yellow last: faint as a line on white), then Paul Tol's
/// muted palette for a ninth series on.
const PALETTE: [RGBColor; 16] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(240, 228, 66),  // yellow
    RGBColor(51, 34, 136),   // indigo
    RGBColor(68, 170, 153),  // teal
    RGBColor(153, 153, 51),  // olive
    RGBColor(136, 34, 85),   // wine
    RGBColor(204, 102, 119), // rose
    RGBColor(221, 204, 119), // sand
    RGBColor(17, 119, 51),   // green
    RGBColor(170, 68, 153),  // purple
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn text_style(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, size as f64).into_font()).color(&TEXT)
}

/// The marker drawn at a series' points and in its legend entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
}

impl Marker {
    fn of(series: usize) -> Marker {
        [
            Marker::Circle,
            Marker::Square,
            Marker::Triangle,
            Marker::Diamond,
        ][series % 4]
    }

    /// The marker as an element centred at `at`, `r` pixels across half its width.
    fn at<C>(self, at: C, r: i32, style: ShapeStyle) -> MarkerElement<C> {
        MarkerElement {
            at,
            marker: self,
            r,
            style,
        }
    }
}

/// A [`Marker`] drawn at a point (a plotters element).
struct MarkerElement<C> {
    at: C,
    marker: Marker,
    r: i32,
    style: ShapeStyle,
}

impl<'a, C> PointCollection<'a, C> for &'a MarkerElement<C> {
    type Point = &'a C;
    type IntoIter = std::iter::Once<&'a C>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for MarkerElement<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut points: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = points.next() else {
            return Ok(());
        };
        let (r, h) = (self.r, self.r + self.r / 3);
        match self.marker {
            Marker::Circle => backend.draw_circle((x, y), r as u32, &self.style, true),
            Marker::Square => backend.draw_rect((x - r, y - r), (x + r, y + r), &self.style, true),
            Marker::Triangle => {
                backend.fill_polygon([(x, y - h), (x + h, y + r), (x - h, y + r)], &self.style)
            }
            Marker::Diamond => backend.fill_polygon(
                [(x, y - h), (x + h, y), (x, y + h), (x - h, y)],
                &self.style,
            ),
        }
    }
}

/// A vertical error bar from `ends[0]` to `ends[1]` with caps `cap` pixels each side (a
/// plotters element; plotters' own draws a circle at the mean over the series' marker).
struct ErrorBar<C> {
    ends: [C; 2],
    style: ShapeStyle,
    cap: i32,
}

impl<'a, C> PointCollection<'a, C> for &'a ErrorBar<C> {
    type Point = &'a C;
    type IntoIter = &'a [C];
    fn point_iter(self) -> Self::IntoIter {
        &self.ends
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for ErrorBar<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut points: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let (Some(low), Some(high)) = (points.next(), points.next()) else {
            return Ok(());
        };
        backend.draw_line(low, high, &self.style)?;
        for (x, y) in [low, high] {
            backend.draw_line((x - self.cap, y), (x + self.cap, y), &self.style)?;
        }
        Ok(())
    }
}

/// Runs `draw` and names the output file in its error.
fn for_plot(path: &Path, draw: impl FnOnce() -> Result<()>) -> Result<()> {
    draw().with_context(|| format!("writing the plot {}", path.display()))
}

/// Draws on a white `size` canvas with `draw` and writes it to `path` as an RGB PNG.
fn render_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = Canvas::new(&mut rgb, size).into_drawing_area();
        draw(&root)?;
        root.present()?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    write_atomic(path, &png_bytes)
}

/// Draws `title` centred in the band at the top of `root` and returns the area below it.
fn titled<'a>(root: &Area<'a>, title: &str) -> Result<Area<'a>> {
    let (w, _) = root.dim_in_pixel();
    let style = text_style(TITLE_SIZE).pos(Pos::new(HPos::Center, VPos::Center));
    let title = fit_text(title, TITLE_SIZE, w.saturating_sub(20))?;
    root.draw(&Text::new(
        title,
        (w as i32 / 2, TITLE_BAND as i32 / 2 + 2),
        style,
    ))?;
    Ok(root.split_vertically(TITLE_BAND).1)
}

/// Columns and rows of a grid of `n` panels, at most `max_cols` wide, near square.
fn grid(n: usize, max_cols: usize) -> (usize, usize) {
    let cols = ((n as f64).sqrt().ceil() as usize).clamp(1, max_cols);
    (cols, n.div_ceil(cols))
}

/// A number as a tick label: at most three significant digits, no trailing zeros.
fn short_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{}", if v == 0.0 { 0.0 } else { v });
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

fn percent(v: f64) -> String {
    format!("{}%", short_number(v * 100.0))
}

/// `text` cut with an ellipsis to fit in `max_width` pixels at `size`.
fn fit_text(text: &str, size: u32, max_width: u32) -> Result<String> {
    if text_width(text, size as f64)? <= max_width {
        return Ok(text.to_string());
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut: String = chars.iter().collect::<String>() + "…";
        if text_width(&cut, size as f64)? <= max_width {
            return Ok(cut);
        }
    }
    Ok("…".to_string())
}

// ---------------------------------------------------------------------------------------
// Side legend (line charts, feature maps): an entry per row, never over the data.

struct LegendEntry {
    text: String,
    colour: RGBColor,
    /// A line with this marker; `None` draws a filled dot (a label's colour on a map).
    marker: Option<Marker>,
}

const LEGEND_SWATCH: i32 = 44;
const LEGEND_PAD: i32 = 16;

fn legend_width<'a>(texts: impl Iterator<Item = &'a str>) -> Result<u32> {
    let mut widest = 0;
    for t in texts {
        widest = widest.max(text_width(t, LEGEND_SIZE as f64)?);
    }
    let w = widest + (LEGEND_SWATCH + 3 * LEGEND_PAD) as u32;
    Ok(w.clamp(160, LEGEND_MAX_WIDTH))
}

fn draw_side_legend(area: &Area, entries: &[LegendEntry]) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let row = (LEGEND_SIZE as f64 * 1.6) as i32;
    let top = 60;
    let fits = ((h as i32 - top - row) / row).max(1) as usize;
    let text_x = LEGEND_PAD + LEGEND_SWATCH + LEGEND_PAD / 2;
    let max_text = (w as i32 - text_x - LEGEND_PAD).max(20) as u32;
    let left_style = text_style(LEGEND_SIZE).pos(Pos::new(HPos::Left, VPos::Center));
    let shown = if entries.len() > fits {
        fits - 1
    } else {
        entries.len()
    };
    for (k, e) in entries.iter().take(shown).enumerate() {
        let y = top + k as i32 * row;
        let style = ShapeStyle::from(e.colour).filled();
        match e.marker {
            Some(marker) => {
                area.draw(&PathElement::new(
                    vec![(LEGEND_PAD, y), (LEGEND_PAD + LEGEND_SWATCH, y)],
                    e.colour.stroke_width(3),
                ))?;
                area.draw(&marker.at((LEGEND_PAD + LEGEND_SWATCH / 2, y), 6, style))?;
            }
            None => {
                area.draw(&Circle::new((LEGEND_PAD + LEGEND_SWATCH / 2, y), 8, style))?;
            }
        }
        let text = fit_text(&e.text, LEGEND_SIZE, max_text)?;
        area.draw(&Text::new(text, (text_x, y), left_style.clone()))?;
    }
    if shown < entries.len() {
        let y = top + shown as i32 * row;
        let more = format!("… and {} more", entries.len() - shown);
        area.draw(&Text::new(more, (LEGEND_PAD, y), left_style))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Line chart.

fn check_series(series: &[Series], x_scale: XScale) -> Result<()> {
    ensure!(!series.is_empty(), "no series to draw");
    for s in series {
        ensure!(!s.points.is_empty(), "series `{}` has no points", s.name);
        for p in &s.points {
            let sd_ok = p.sd.is_none_or(|sd| sd.is_finite() && sd >= 0.0);
            ensure!(
                p.x.is_finite() && p.y.is_finite() && sd_ok,
                "series `{}` has the point x = {}, y = {}, sd = {:?}: each must be a finite \
                 number, and sd not negative",
                s.name,
                p.x,
                p.y,
                p.sd
            );
            if x_scale == XScale::LogPercent {
                ensure!(
                    p.x > 0.0,
                    "series `{}` has x = {} on a log axis: label fractions must be above 0",
                    s.name,
                    p.x
                );
            }
        }
    }
    Ok(())
}

/// The distinct x values of all series, ascending.
fn distinct_xs(series: &[Series]) -> Vec<f64> {
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs
}

/// The most label fractions that get a tick each on a log axis.
const MAX_DATA_TICKS: usize = 12;

fn draw_lines(
    area: &Area,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_scale: XScale,
) -> Result<()> {
    let xs = distinct_xs(series);
    let (x_lo, x_hi) = (xs[0], xs[xs.len() - 1]);
    let (mut y_lo, mut y_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in series.iter().flat_map(|s| &s.points) {
        let sd = p.sd.unwrap_or(0.0);
        y_lo = y_lo.min(p.y - sd);
        y_hi = y_hi.max(p.y + sd);
    }
    let y_range = padded(y_lo, y_hi);
    let labels = (x_label, y_label);
    match x_scale {
        XScale::LogPercent => {
            let (lo, hi) = if x_lo == x_hi {
                (x_lo / 2.0, x_hi * 2.0)
            } else {
                let pad = (x_hi / x_lo).powf(0.05);
                (x_lo / pad, x_hi * pad)
            };
            let log = (lo..hi).log_scale();
            let fmt = |v: &f64| percent(*v);
            draw_line_axes(
                area,
                log.with_key_points(log_ticks(&xs)),
                y_range,
                &fmt,
                labels,
                series,
            )
        }
        XScale::Linear => {
            let fmt = |v: &f64| short_number(*v);
            draw_line_axes(area, padded(x_lo, x_hi), y_range, &fmt, labels, series)
        }
    }
}

/// The ticks of a log axis over the sorted values `xs`: the values themselves while there are
/// few of them (the fractions evaluated), else 1, 2 and 5 times the powers of ten between them.
fn log_ticks(xs: &[f64]) -> Vec<f64> {
    if xs.len() <= MAX_DATA_TICKS {
        return xs.to_vec();
    }
    let (lo, hi) = (xs[0], xs[xs.len() - 1]);
    let mut ticks = Vec::new();
    for decade in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(decade);
            if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) {
                ticks.push(t);
            }
        }
    }
    if ticks.len() < 2 {
        ticks = vec![lo, hi];
    }
    ticks
}

/// `lo..hi` widened by 6% of the span on each side (or around a single value).
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.06
    } else {
        (lo.abs() * 0.1).max(0.05)
    };
    (lo - pad)..(hi + pad)
}

fn draw_line_axes<X>(
    area: &Area,
    x: X,
    y: std::ops::Range<f64>,
    x_format: &dyn Fn(&f64) -> String,
    (x_label, y_label): (&str, &str),
    series: &[Series],
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(90)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style(text_style(AXIS_NAME_SIZE))
        .label_style(text_style(TICK_SIZE))
        .x_label_formatter(x_format)
        .y_label_formatter(&|v| short_number(*v))
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(WHITE.mix(0.0))
        .axis_style(TEXT.stroke_width(1))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        let mut points = s.points.clone();
        points.sort_by(|a, b| a.x.total_cmp(&b.x));
        chart.draw_series(points.iter().filter_map(|p| {
            p.sd.map(|sd| ErrorBar {
                ends: [(p.x, p.y - sd), (p.x, p.y + sd)],
                style: c.stroke_width(2),
                cap: 6,
            })
        }))?;
        chart.draw_series(LineSeries::new(
            points.iter().map(|p| (p.x, p.y)),
            c.stroke_width(3),
        ))?;
        let marker = Marker::of(i);
        chart.draw_series(points.iter().map(|p| marker.at((p.x, p.y), 6, c.filled())))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ROC curves.

fn check_rocs(panels: &[(String, Vec<Roc>)]) -> Result<()> {
    ensure!(!panels.is_empty(), "no ROC panels to draw");
    for (finding, rocs) in panels {
        ensure!(!rocs.is_empty(), "the ROC panel `{finding}` has no curve");
        for r in rocs {
            ensure!(
                r.fpr.len() == r.tpr.len() && r.fpr.len() >= 2,
                "the ROC curve of `{}` for `{finding}` has {} false and {} true positive \
                 rates: it needs as many of each, at least two",
                r.name,
                r.fpr.len(),
                r.tpr.len()
            );
            let in_unit = |v: &f64| (0.0..=1.0).contains(v);
            ensure!(
                r.fpr.iter().chain(&r.tpr).all(in_unit) && in_unit(&r.auc),
                "the ROC curve of `{}` for `{finding}` has a rate or AUC outside [0, 1]",
                r.name
            );
        }
    }
    Ok(())
}

/// The smallest step drawn along a ROC curve, about a pixel of a panel: the thousands of
/// steps of a large test set, drawn one by one with a wide pen, make a ragged line.
const ROC_MIN_STEP: f64 = 0.002;

/// The points of the curve `(xs, ys)` at least `min_step` apart (in x + y) from the last kept
/// one; the first and last are always kept.
fn thinned(xs: &[f64], ys: &[f64], min_step: f64) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = Vec::new();
    let n = xs.len().min(ys.len());
    for (i, p) in xs.iter().copied().zip(ys.iter().copied()).enumerate() {
        let far = kept
            .last()
            .is_none_or(|q| (p.0 - q.0).abs() + (p.1 - q.1).abs() >= min_step);
        if far || i + 1 == n {
            kept.push(p);
        }
    }
    kept
}

fn draw_roc_panel(area: &Area, finding: &str, rocs: &[Roc]) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let caption = fit_text(finding, PANEL_TITLE_SIZE, w - 20)?;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text_style(PANEL_TITLE_SIZE))
        .margin(14)
        .x_label_area_size(52)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("False positive rate")
        .y_desc("True positive rate")
        .axis_desc_style(text_style(PANEL_LEGEND_SIZE + 2))
        .label_style(text_style(PANEL_LEGEND_SIZE))
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| short_number(*v))
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(WHITE.mix(0.0))
        .axis_style(TEXT.stroke_width(1))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(0.0, 0.0), (1.0, 1.0)],
        8,
        6,
        CHANCE.stroke_width(2),
    ))?;
    let name_width = w.saturating_sub(250).max(60);
    for (i, r) in rocs.iter().enumerate() {
        let c = colour(i);
        let label = format!(
            "{}  AUC {:.3}",
            fit_text(&r.name, PANEL_LEGEND_SIZE, name_width)?,
            r.auc
        );
        chart
            .draw_series(LineSeries::new(
                thinned(&r.fpr, &r.tpr, ROC_MIN_STEP),
                c.stroke_width(3),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(4)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(text_style(PANEL_LEGEND_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(GRID)
        .margin(8)
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Feature map.

fn check_map(
    panels: &[(String, Vec<(f32, f32)>)],
    labels: &[usize],
    label_names: &[String],
) -> Result<()> {
    ensure!(!panels.is_empty(), "no feature-map panels to draw");
    ensure!(
        !label_names.is_empty(),
        "the feature map has no label names"
    );
    if let Some(&bad) = labels.iter().find(|&&l| l >= label_names.len()) {
        bail!(
            "the feature map has label {bad} but only {} label names",
            label_names.len()
        );
    }
    for (encoder, points) in panels {
        ensure!(
            points.len() == labels.len(),
            "the feature map of `{encoder}` has {} points but there are {} labels",
            points.len(),
            labels.len()
        );
        ensure!(
            !points.is_empty(),
            "the feature map of `{encoder}` has no points"
        );
        if let Some(p) = points
            .iter()
            .find(|p| !(p.0.is_finite() && p.1.is_finite()))
        {
            bail!("the feature map of `{encoder}` has the point {p:?}: not finite");
        }
    }
    Ok(())
}

fn draw_map_panel(
    area: &Area,
    encoder: &str,
    method: &str,
    points: &[(f32, f32)],
    labels: &[usize],
    order: &[usize],
) -> Result<()> {
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_lo = x_lo.min(x as f64);
        x_hi = x_hi.max(x as f64);
        y_lo = y_lo.min(y as f64);
        y_hi = y_hi.max(y as f64);
    }
    let (w, _) = area.dim_in_pixel();
    let caption = fit_text(encoder, PANEL_TITLE_SIZE, w - 20)?;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text_style(PANEL_TITLE_SIZE))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(padded(x_lo, x_hi), padded(y_lo, y_hi))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(format!("{method} 1"))
        .y_desc(format!("{method} 2"))
        .axis_desc_style(text_style(AXIS_NAME_SIZE - 2))
        .label_style(text_style(TICK_SIZE - 3))
        .x_labels(5)
        .y_labels(5)
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| short_number(*v))
        .axis_style(TEXT.stroke_width(1))
        .draw()?;
    let radius = match points.len() {
        0..=1000 => 4,
        1001..=5000 => 3,
        _ => 2,
    };
    chart.draw_series(order.iter().map(|&i| {
        let (x, y) = points[i];
        Circle::new(
            (x as f64, y as f64),
            radius,
            colour(labels[i]).mix(0.75).filled(),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoded RGB pixels and size of a PNG written by this module.
    fn decode(path: &Path) -> (Vec<[u8; 3]>, u32, u32) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let pixels = buf[..info.buffer_size()]
            .chunks(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        (pixels, info.width, info.height)
    }

    fn is_dark(p: &[u8; 3]) -> bool {
        p.iter().all(|&c| c < 90)
    }

    fn non_white(pixels: &[[u8; 3]]) -> usize {
        pixels.iter().filter(|p| **p != [255, 255, 255]).count()
    }

    /// How many palette colours appear (exactly) on at least `min` pixels.
    fn palette_colours_used(pixels: &[[u8; 3]], min: usize) -> usize {
        PALETTE
            .iter()
            .filter(|c| pixels.iter().filter(|p| **p == [c.0, c.1, c.2]).count() >= min)
            .count()
    }

    /// Dark pixels in rows `rows` (the title band, say).
    fn dark_in_rows(pixels: &[[u8; 3]], width: u32, rows: std::ops::Range<u32>) -> usize {
        rows.flat_map(|y| (0..width).map(move |x| (y * width + x) as usize))
            .filter(|&i| is_dark(&pixels[i]))
            .count()
    }

    fn curve(name: &str, base: f64) -> Series {
        Series {
            name: name.to_string(),
            points: [0.01, 0.1, 1.0]
                .iter()
                .enumerate()
                .map(|(k, &x)| Point {
                    x,
                    y: base + 0.1 * k as f64,
                    sd: Some(0.02),
                })
                .collect(),
        }
    }

    #[test]
    fn line_chart_writes_a_readable_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("label_efficiency.png");
        let series = vec![
            curve("byol", 0.5),
            curve("simclr", 0.4),
            curve("random", 0.2),
        ];
        line_chart(
            &path,
            "Linear probe accuracy vs labels",
            "Labelled fraction",
            "Accuracy",
            &series,
            XScale::LogPercent,
        )
        .unwrap();
        let (pixels, w, h) = decode(&path);
        assert_eq!(h, 700);
        assert!(w >= 1000 + 160, "width {w} has no room for the legend");
        assert!(non_white(&pixels) > 20_000, "too little drawn");
        assert_eq!(
            palette_colours_used(&pixels, 200),
            3,
            "one colour per series"
        );
        assert!(
            dark_in_rows(&pixels, w, 0..TITLE_BAND) > 300,
            "no title text"
        );
        // The legend (right of the plot) has text.
        let legend_dark = (0..h)
            .flat_map(|y| (1000..w).map(move |x| (y * w + x) as usize))
            .filter(|&i| is_dark(&pixels[i]))
            .count();
        assert!(legend_dark > 200, "no legend text");
    }

    #[test]
    fn line_chart_without_a_title_leaves_the_title_band_blank() {
        // The counterpart of the test above: dark pixels in the band come from the title.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knn.png");
        let series = vec![Series {
            name: "byol".into(),
            points: (1..=5)
                .map(|e| Point {
                    x: e as f64 * 10.0,
                    y: 0.5 + e as f64 * 0.05,
                    sd: None,
                })
                .collect(),
        }];
        line_chart(&path, "", "Epoch", "kNN top-1", &series, XScale::Linear).unwrap();
        let (pixels, w, _) = decode(&path);
        assert_eq!(dark_in_rows(&pixels, w, 0..TITLE_BAND - 10), 0);
        assert!(non_white(&pixels) > 5_000);
    }

    #[test]
    fn line_chart_refuses_bad_points_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let mut s = curve("byol", 0.5);
        s.points[0].x = 0.0;
        let e = line_chart(&path, "t", "x", "y", &[s.clone()], XScale::LogPercent).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("bad.png") && msg.contains("byol"), "{msg}");
        assert!(!path.exists());
        s.points[0].x = 0.5;
        s.points[0].y = f64::NAN;
        assert!(line_chart(&path, "t", "x", "y", &[s], XScale::Linear).is_err());
        assert!(line_chart(&path, "t", "x", "y", &[], XScale::Linear).is_err());
        let empty = Series {
            name: "e".into(),
            points: vec![],
        };
        assert!(line_chart(&path, "t", "x", "y", &[empty], XScale::Linear).is_err());
    }

    #[test]
    fn edge_cases_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let one = |x: f64| Series {
            name: "only".into(),
            points: vec![Point {
                x,
                y: 0.5,
                sd: Some(0.0),
            }],
        };
        // One point, on either axis.
        line_chart(
            &dir.path().join("a.png"),
            "t",
            "x",
            "y",
            &[one(0.1)],
            XScale::LogPercent,
        )
        .unwrap();
        line_chart(
            &dir.path().join("b.png"),
            "t",
            "x",
            "y",
            &[one(3.0)],
            XScale::Linear,
        )
        .unwrap();
        // More fractions than get a tick each; more series than colours.
        let many: Vec<Series> = (0..20)
            .map(|k| Series {
                name: format!("encoder {k}"),
                points: (1..=30)
                    .map(|i| Point {
                        x: i as f64 / 30.0,
                        y: k as f64,
                        sd: None,
                    })
                    .collect(),
            })
            .collect();
        line_chart(
            &dir.path().join("c.png"),
            "t",
            "x",
            "y",
            &many,
            XScale::LogPercent,
        )
        .unwrap();
        // More labels than legend rows: the legend ends with "… and N more".
        let names: Vec<String> = (0..100).map(|k| format!("class {k}")).collect();
        let labels: Vec<usize> = (0..500).map(|i| i % 100).collect();
        let points: Vec<(f32, f32)> = (0..500).map(|i| (i as f32, (i % 7) as f32)).collect();
        let path = dir.path().join("d.png");
        feature_map(&path, "t", "PCA", &[("e".into(), points)], &labels, &names).unwrap();
        let (pixels, w, h) = decode(&path);
        assert!(h < 1000, "the legend grew the image to {w}x{h}");
        assert!(non_white(&pixels) > 1_000);
    }

    #[test]
    fn roc_points_cross_ties_together() {
        // Scores 0.9 (+), 0.8 (+), 0.8 (-), 0.5 (-), 0.3 (+), 0.3 (-): 3 positives, 3
        // negatives. Thresholds: 0.9 -> (0, 1/3); 0.8 (a tie of + and -) -> (1/3, 2/3);
        // 0.5 -> (2/3, 2/3); 0.3 (tie) -> (1, 1).
        let scores = [0.3, 0.8, 0.5, 0.9, 0.8, 0.3];
        let labels = [true, false, false, true, true, false];
        let (fpr, tpr) = roc_points(&scores, &labels).unwrap();
        let third = 1.0 / 3.0;
        let want_fpr = [0.0, 0.0, third, 2.0 * third, 1.0];
        let want_tpr = [0.0, third, 2.0 * third, 2.0 * third, 1.0];
        assert_eq!(fpr.len(), want_fpr.len());
        for k in 0..fpr.len() {
            assert!((fpr[k] - want_fpr[k]).abs() < 1e-12, "fpr {fpr:?}");
            assert!((tpr[k] - want_tpr[k]).abs() < 1e-12, "tpr {tpr:?}");
        }
        // AUC by pairs: of 9 (positive, negative) pairs, 6 are ordered right (ties count 1/2):
        // 0.9 beats all 3 negatives; 0.8 beats 0.5 and 0.3 and ties 0.8; 0.3 ties 0.3.
        let roc = Roc::from_scores("e", &scores, &labels).unwrap();
        assert!((roc.auc - 6.0 / 9.0).abs() < 1e-12, "auc {}", roc.auc);
    }

    #[test]
    fn thinning_keeps_the_ends_and_drops_tiny_steps() {
        let xs = [0.0, 0.0005, 0.001, 0.5, 0.5004, 1.0];
        let ys = [0.0, 0.0005, 0.0015, 0.7, 0.7, 1.0];
        assert_eq!(
            thinned(&xs, &ys, 0.002),
            vec![(0.0, 0.0), (0.001, 0.0015), (0.5, 0.7), (1.0, 1.0)]
        );
    }

    #[test]
    fn roc_points_refuse_undefined_curves() {
        assert!(roc_points(&[0.1, 0.2], &[true, true]).is_err());
        assert!(roc_points(&[0.1, 0.2], &[false, false]).is_err());
        assert!(roc_points(&[0.1], &[true, false]).is_err());
        assert!(roc_points(&[f64::NAN, 0.2], &[true, false]).is_err());
        let (fpr, tpr) = roc_points(&[0.9, 0.1], &[true, false]).unwrap();
        assert_eq!((fpr, tpr), (vec![0.0, 0.0, 1.0], vec![0.0, 1.0, 1.0]));
    }

    fn fake_rocs(k: usize) -> Vec<(String, Vec<Roc>)> {
        (0..k)
            .map(|f| {
                let n = 200;
                let labels: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
                let rocs = (0..3)
                    .map(|e| {
                        let scores: Vec<f64> = (0..n)
                            .map(|i| {
                                let noise = crate::seeds::mix(f as u64 * 7 + e, i as u64) % 1000;
                                let signal = if labels[i] { 0.4 + 0.2 * e as f64 } else { 0.0 };
                                signal + noise as f64 / 1000.0
                            })
                            .collect();
                        Roc::from_scores(&format!("encoder-{e}"), &scores, &labels).unwrap()
                    })
                    .collect();
                (format!("Finding {f}"), rocs)
            })
            .collect()
    }

    #[test]
    fn roc_curves_write_one_panel_per_finding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        roc_curves(&path, "ROC curves", &fake_rocs(5)).unwrap();
        let (pixels, w, h) = decode(&path);
        // 5 panels: 3 columns, 2 rows.
        assert_eq!(
            (w, h),
            (3 * ROC_PANEL_SIZE, 2 * ROC_PANEL_SIZE + TITLE_BAND)
        );
        assert_eq!(
            palette_colours_used(&pixels, 300),
            3,
            "one colour per encoder"
        );
        assert!(
            dark_in_rows(&pixels, w, 0..TITLE_BAND) > 200,
            "no title text"
        );
        // The last cell of the grid is empty.
        let empty_cell = (TITLE_BAND + ROC_PANEL_SIZE + 10..h - 10)
            .flat_map(|y| (2 * ROC_PANEL_SIZE + 10..w - 10).map(move |x| (y * w + x) as usize))
            .filter(|&i| pixels[i] != [255, 255, 255])
            .count();
        assert_eq!(empty_cell, 0);
    }

    #[test]
    fn roc_curves_refuse_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        assert!(roc_curves(&path, "t", &[]).is_err());
        assert!(roc_curves(&path, "t", &[("f".into(), vec![])]).is_err());
        let mut rocs = fake_rocs(1);
        rocs[0].1[0].tpr.pop();
        let msg = format!("{:#}", roc_curves(&path, "t", &rocs).unwrap_err());
        assert!(
            msg.contains("roc.png") && msg.contains("encoder-0"),
            "{msg}"
        );
    }

    /// Three labelled blobs per panel.
    type Panels = Vec<(String, Vec<(f32, f32)>)>;

    fn fake_map(n: usize, panels: usize) -> (Panels, Vec<usize>) {
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let panels = (0..panels)
            .map(|p| {
                let points = (0..n)
                    .map(|i| {
                        let r = |s: u64| (crate::seeds::mix(s, i as u64) % 1000) as f32 / 250.0;
                        let c = labels[i] as f32 * 6.0;
                        (c + r(p as u64), c * (p as f32 - 0.5) + r(p as u64 + 9))
                    })
                    .collect();
                (format!("encoder-{p}"), points)
            })
            .collect();
        (panels, labels)
    }

    #[test]
    fn feature_map_colours_points_by_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.png");
        let (panels, labels) = fake_map(12_000, 2);
        let names: Vec<String> = ["cat", "dog", "bird"].map(String::from).to_vec();
        let start = std::time::Instant::now();
        feature_map(&path, "Test features", "t-SNE", &panels, &labels, &names).unwrap();
        assert!(
            start.elapsed().as_secs() < 20,
            "{:?} for 24k points",
            start.elapsed()
        );
        let (pixels, w, h) = decode(&path);
        assert_eq!(h, MAP_PANEL_SIZE + TITLE_BAND);
        assert!(w > 2 * MAP_PANEL_SIZE);
        // The points are blended (alpha), so count colours near each label's.
        for c in &PALETTE[..3] {
            let near = pixels
                .iter()
                .filter(|p| {
                    let d = |a: u8, b: u8| (a as i32 - b as i32).abs();
                    d(p[0], c.0) + d(p[1], c.1) + d(p[2], c.2) < 90
                })
                .count();
            assert!(near > 2_000, "label colour {c:?} on {near} pixels");
        }
        assert!(
            dark_in_rows(&pixels, w, 0..TITLE_BAND) > 200,
            "no title text"
        );
    }

    #[test]
    fn feature_map_refuses_mismatched_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.png");
        let (panels, labels) = fake_map(30, 1);
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let msg = format!(
            "{:#}",
            feature_map(&path, "t", "PCA", &panels, &labels, &two).unwrap_err()
        );
        assert!(msg.contains("map.png") && msg.contains("label 2"), "{msg}");
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert!(feature_map(&path, "t", "PCA", &panels, &labels[1..], &three).is_err());
        let mut nan = panels.clone();
        nan[0].1[3].0 = f32::NAN;
        assert!(feature_map(&path, "t", "PCA", &nan, &labels, &three).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn log_ticks_are_the_data_or_round_numbers() {
        assert_eq!(log_ticks(&[0.01, 0.1, 1.0]), [0.01, 0.1, 1.0]);
        let many: Vec<f64> = (1..=30).map(|i| i as f64 / 30.0).collect();
        let t = log_ticks(&many);
        assert_eq!(t.len(), 5, "{t:?}");
        for (a, b) in t.iter().zip([0.05, 0.1, 0.2, 0.5, 1.0]) {
            assert!((a - b).abs() < 1e-12, "{t:?}");
        }
        let narrow: Vec<f64> = (0..20).map(|i| 0.3 + i as f64 * 0.001).collect();
        assert_eq!(log_ticks(&narrow), [0.3, narrow[19]]);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.005), "0.5%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(short_number(0.8500000001), "0.85");
        assert_eq!(short_number(100.0), "100");
        assert_eq!(short_number(-0.0001), "-0.0001");
        assert_eq!(short_number(0.0), "0");
    }

    #[test]
    fn long_names_are_cut_to_fit() {
        let long = "a-very-long-encoder-name-that-goes-on-and-on-and-on";
        let cut = fit_text(long, 20, 150).unwrap();
        assert!(cut.ends_with('…') && cut.len() < long.len(), "{cut}");
        assert!(text_width(&cut, 20.0).unwrap() <= 150);
        assert_eq!(fit_text("byol", 20, 150).unwrap(), "byol");
    }

    /// Writes one plot of each kind from fake data to $SSL_HOST_PLOT_SAMPLES (default
    /// target/plot-samples), to be looked at: `cargo test -p ssl-host --lib plot_samples --
    /// --ignored`.
    #[test]
    #[ignore]
    fn plot_samples() {
        use ssl_plugin_api::tch::{Device, Kind, Tensor};
        let dir = std::env::var("SSL_HOST_PLOT_SAMPLES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plot-samples")
            });
        std::fs::create_dir_all(&dir).unwrap();
        let fractions = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0];
        let encoders = [
            "byol-resnet50-ep300",
            "simclr-resnet50-ep300",
            "supervised-imagenet",
            "random-init",
        ];
        let series: Vec<Series> = encoders
            .iter()
            .enumerate()
            .map(|(e, name)| Series {
                name: name.to_string(),
                points: fractions
                    .iter()
                    .map(|&f: &f64| Point {
                        x: f,
                        y: 0.9 - 0.12 * e as f64 - 0.08 * (1.0 / f).ln() / (1.0 + e as f64 * 0.3),
                        sd: Some(0.02 + 0.01 * (1.0 - f)),
                    })
                    .collect(),
            })
            .collect();
        line_chart(
            &dir.join("label_efficiency.png"),
            "Linear probe: top-1 accuracy vs labelled fraction",
            "Labelled fraction of the training set",
            "Top-1 accuracy",
            &series,
            XScale::LogPercent,
        )
        .unwrap();
        let knn = vec![Series {
            name: "byol-resnet50".into(),
            points: (1..=10)
                .map(|k| Point {
                    x: 30.0 * k as f64,
                    y: 0.3 + 0.5 * (1.0 - (-(k as f64) / 3.0).exp()),
                    sd: None,
                })
                .collect(),
        }];
        line_chart(
            &dir.join("knn_per_checkpoint.png"),
            "kNN top-1 per checkpoint",
            "Epoch",
            "kNN top-1 accuracy",
            &knn,
            XScale::Linear,
        )
        .unwrap();
        let findings = ssl_builtin_datasets::NIH_FINDINGS;
        let panels: Vec<(String, Vec<Roc>)> = findings
            .iter()
            .enumerate()
            .map(|(f, name)| {
                let n = 2_000;
                let labels: Vec<bool> = (0..n)
                    .map(|i| crate::seeds::mix(f as u64, i).is_multiple_of(7))
                    .collect();
                let rocs = encoders[..3]
                    .iter()
                    .enumerate()
                    .map(|(e, enc)| {
                        let scores: Vec<f64> = (0..n as usize)
                            .map(|i| {
                                let u =
                                    (crate::seeds::mix(100 + e as u64 * 31 + f as u64, i as u64)
                                        % 10_000) as f64
                                        / 10_000.0;
                                let signal = if labels[i] {
                                    0.25 + 0.1 * (2 - e) as f64
                                } else {
                                    0.0
                                };
                                signal + u
                            })
                            .collect();
                        Roc::from_scores(enc, &scores, &labels).unwrap()
                    })
                    .collect();
                (name.to_string(), rocs)
            })
            .collect();
        roc_curves(
            &dir.join("roc.png"),
            "ROC curves per finding (test set)",
            &panels,
        )
        .unwrap();
        let names: Vec<String> = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        .map(String::from)
        .to_vec();
        let n = 8_000i64;
        ssl_plugin_api::tch::manual_seed(5);
        let labels: Vec<usize> = (0..n as usize).map(|i| i % 10).collect();
        let label_t = Tensor::from_slice(&labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
        let mut maps = Vec::new();
        let mut indices = Vec::new();
        let mut method = "";
        for (e, name) in encoders[..3].iter().enumerate() {
            let centres =
                Tensor::randn([10, 128], (Kind::Float, Device::Cpu)) * (2.0 - 0.6 * e as f64);
            let x = centres.index_select(0, &label_t)
                + Tensor::randn([n, 128], (Kind::Float, Device::Cpu));
            let p = crate::evaluate::projection::project_2d(&x, 5_000, 1).unwrap();
            method = p.method;
            indices = p.indices;
            maps.push((name.to_string(), p.points));
        }
        let chosen: Vec<usize> = indices.iter().map(|&i| labels[i]).collect();
        feature_map(
            &dir.join("feature_map.png"),
            "Test features, coloured by label",
            method,
            &maps,
            &chosen,
            &names,
        )
        .unwrap();
        println!("plots written to {}", dir.display());
    }
}
