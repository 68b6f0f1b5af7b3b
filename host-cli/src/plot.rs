//! `talkback plot`: the size of the final distribution per step for several
//! settings, as SVG.
//!
//! Each setting (every combination of the listed temperatures, top-k, top-p
//! and min-p values) generates from the same prompt with the same seed; the
//! chart draws, per step, how many tokens were left to draw from after every
//! stage, one line per setting. A line ends where its reply ended.

use std::io::{self, Write as _};
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters_backend::DrawingErrorKind;

use crate::app::Interrupted;
use crate::generate::{Finish, Generator, Request, Sink, Step};
use crate::infile::named;
use crate::model::{Model, Session};
use crate::outfile::ReservedFile;

/// Colours of the lines: dark enough to read on white, and far apart in hue.
const COLOURS: [RGBColor; 12] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 96, 180),
    RGBColor(30, 140, 60),
    RGBColor(230, 115, 0),
    RGBColor(120, 50, 160),
    RGBColor(0, 140, 140),
    RGBColor(140, 80, 20),
    RGBColor(200, 30, 150),
    RGBColor(90, 90, 90),
    RGBColor(120, 120, 0),
    RGBColor(10, 40, 110),
    RGBColor(230, 80, 110),
];

/// How a line is drawn, after its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stroke {
    /// A solid line, a dot at every step.
    Solid,
    /// A dashed line, a triangle at every step.
    Dashed,
    /// A dotted line, a cross at every step.
    Dotted,
}

/// The strokes, each used with every colour before the next.
const STROKES: [Stroke; 3] = [Stroke::Solid, Stroke::Dashed, Stroke::Dotted];

/// Most settings one chart shows: every line has a colour and stroke of its
/// own, so that no two can be mistaken (and each setting is a whole run).
pub const MAX_SERIES: usize = COLOURS.len() * STROKES.len();

/// The colour and stroke of the line at `index`.
fn style_of(index: usize) -> (RGBColor, Stroke) {
    let colour = COLOURS.get(index % COLOURS.len()).copied();
    let stroke = STROKES.get(index / COLOURS.len() % STROKES.len()).copied();
    (colour.unwrap_or(BLACK), stroke.unwrap_or(Stroke::Solid))
}

/// What the vertical axis counts.
const Y_LABEL: &str = "tokens left after every stage";

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label, e.g. `top-p 0.5`.
    pub label: String,
    /// Tokens left after every stage, one entry per generated token.
    pub sizes: Vec<usize>,
}

/// Records the size of the final distribution per step.
#[derive(Default)]
struct Sizes(Vec<usize>);

impl Sink for Sizes {
    fn text(&mut self, _bytes: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn token(&mut self, step: &Step<'_>) -> io::Result<()> {
        // The last stage in the order may be any of them, and min-p or
        // top-k after top-p would not show in an earlier count.
        self.0.push(step.survivors.final_count);
        Ok(())
    }

    fn statistics(&self) -> bool {
        true
    }
}

/// Generates once per request and collects each run's distribution sizes.
///
/// # Errors
///
/// - a run fails.
pub fn collect(
    model: &Model,
    session: &mut Session<'_>,
    prompt: &[llama_cpp_2::token::LlamaToken],
    runs: &[(String, Request<'_>)],
) -> Result<Vec<Series>> {
    let mut generator = Generator::new(model);
    let mut out = Vec::with_capacity(runs.len());
    for (label, req) in runs {
        let mut sink = Sizes::default();
        let outcome = generator
            .run(model, session, prompt, req, &mut sink)
            .with_context(|| format!("generating for `{label}`"))?;
        // Ctrl-C ends this run early; the rest would end at once, and a
        // chart of cut-short lines would pass for a finished one.
        if outcome.finish == Finish::Interrupted {
            return Err(Interrupted.into());
        }
        out.push(Series {
            label: label.clone(),
            sizes: sink.0,
        });
    }
    Ok(out)
}

/// Where the chart goes: a file, opened before any generation so that a
/// path that cannot be written fails at once, not after every run; or
/// stdout, for `-o -`.
pub enum Output {
    /// A file, removed again if it was new and no chart was drawn.
    File(ReservedFile),
    /// stdout.
    Stdout,
}

impl Output {
    /// Opens `path` for writing, creating it if needed, without changing it
    /// yet; `-` stands for stdout.
    ///
    /// # Errors
    ///
    /// - the file cannot be opened for writing (a directory, a missing
    ///   folder, no permission).
    pub fn open(path: &Path) -> Result<Self> {
        if path == Path::new("-") {
            return Ok(Self::Stdout);
        }
        ReservedFile::open(path, "chart").map(Self::File)
    }

    /// Whether the chart goes to stdout.
    pub fn is_stdout(&self) -> bool {
        matches!(self, Self::Stdout)
    }

    /// The chart's destination as messages name it.
    fn name(&self) -> String {
        match self {
            Self::File(file) => named(file.path()).to_string(),
            Self::Stdout => "stdout".to_owned(),
        }
    }

    fn write(&mut self, svg: &[u8]) -> io::Result<()> {
        match self {
            Self::File(file) => file.replace(svg),
            Self::Stdout => {
                let mut out = crate::output::stdout();
                out.write_all(svg)?;
                out.flush()
            }
        }
    }
}

/// Draws the series as an SVG line chart into `out`.
///
/// # Errors
///
/// - the chart cannot be drawn, or its file or stdout cannot be written.
pub fn draw(mut out: Output, title: &str, series: &[Series]) -> Result<()> {
    let mut svg = String::new();
    render(&mut svg, title, series)
        .map_err(|e| anyhow!("cannot draw chart {}: {}", out.name(), draw_reason(&e)))?;
    let written = out.write(svg.as_bytes());
    if out.is_stdout() {
        // Its errors already say "cannot write to stdout".
        return written.map_err(Into::into);
    }
    written.with_context(|| format!("cannot write chart {}", out.name()))
}

/// What went wrong while drawing, without the wrappers plotters adds
/// around it ("backend error: Drawing backend error: ...").
fn draw_reason<E>(e: &DrawingAreaErrorKind<E>) -> String
where
    E: std::error::Error + Send + Sync,
{
    match e {
        DrawingAreaErrorKind::BackendError(DrawingErrorKind::DrawingError(inner)) => {
            inner.to_string()
        }
        DrawingAreaErrorKind::BackendError(DrawingErrorKind::FontError(inner)) => {
            format!("no usable font ({inner})")
        }
        DrawingAreaErrorKind::SharingError => "the drawing area was in use".to_owned(),
        DrawingAreaErrorKind::LayoutError => "the chart does not fit its area".to_owned(),
    }
}

type DrawResult = std::result::Result<(), DrawingAreaErrorKind<io::Error>>;

/// Height of one legend entry, in pixels, with room to spare.
const LEGEND_LINE: u32 = 20;

fn render(svg: &mut String, title: &str, series: &[Series]) -> DrawResult {
    let steps = series
        .iter()
        .map(|s| s.sizes.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let top = series
        .iter()
        .flat_map(|s| s.sizes.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);

    // Tall enough for the legend, a line per series inside the plot area.
    let height = 540.max(160 + LEGEND_LINE * u32::try_from(series.len()).unwrap_or(u32::MAX / 64));
    let root = SVGBackend::with_string(svg, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0..(steps - 1).max(1), 0..top + top / 10 + 1)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(Y_LABEL)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let (colour, stroke) = style_of(i);
        let line = colour.stroke_width(2);
        let points = || s.sizes.iter().enumerate().map(|(x, &y)| (x, y));
        let label = s.label.clone();
        match stroke {
            Stroke::Solid => {
                chart
                    .draw_series(LineSeries::new(points(), line))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], line));
            }
            Stroke::Dashed | Stroke::Dotted => {
                let (dash, gap) = if stroke == Stroke::Dashed {
                    (8, 5)
                } else {
                    (2, 4)
                };
                chart
                    .draw_series(DashedLineSeries::new(points(), dash, gap, line))?
                    .label(label)
                    .legend(move |(x, y)| {
                        DashedPathElement::new([(x, y), (x + 18, y)], dash, gap, line)
                    });
            }
        }
        // A mark at every step: a line of one step draws nothing alone.
        match stroke {
            Stroke::Solid => {
                chart.draw_series(points().map(|p| Circle::new(p, 3, colour.filled())))?;
            }
            Stroke::Dashed => {
                chart.draw_series(points().map(|p| TriangleMarker::new(p, 4, colour.filled())))?;
            }
            Stroke::Dotted => {
                chart.draw_series(points().map(|p| Cross::new(p, 3, line)))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawing_error_is_named_once() {
        let denied = io::Error::new(io::ErrorKind::PermissionDenied, "permission denied");
        let e = DrawingAreaErrorKind::BackendError(DrawingErrorKind::DrawingError(denied));
        assert_eq!(draw_reason(&e), "permission denied");
        let e: DrawingAreaErrorKind<io::Error> = DrawingAreaErrorKind::LayoutError;
        assert_eq!(draw_reason(&e), "the chart does not fit its area");
    }

    #[test]
    fn dash_means_stdout_and_creates_no_file() {
        let out = Output::open(Path::new("-")).expect("stdout");
        assert!(out.is_stdout());
        assert_eq!(out.name(), "stdout");
        drop(out);
        assert!(!Path::new("-").exists());
    }

    #[test]
    fn every_series_is_drawn_with_its_label() {
        let series = [
            Series {
                label: "min-p 0.1".to_owned(),
                sizes: vec![7, 3, 1],
            },
            Series {
                label: "min-p 0.2".to_owned(),
                sizes: vec![4, 2],
            },
        ];
        let mut svg = String::new();
        assert!(render(&mut svg, "title", &series).is_ok());
        for text in ["title", Y_LABEL, "min-p 0.1", "min-p 0.2"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // A dot per step: five in all.
        assert_eq!(svg.matches("<circle").count(), 5);
    }

    #[test]
    fn every_line_has_a_style_of_its_own_that_reads_on_white() {
        let styles: Vec<_> = (0..MAX_SERIES).map(style_of).collect();
        for (i, a) in styles.iter().enumerate() {
            for b in styles.get(i + 1..).unwrap_or(&[]) {
                assert_ne!(a, b, "line {i} shares its style");
            }
        }
        // Contrast against white of at least 3:1, as for graphics that
        // carry meaning; the palette used before had white-ish yellows.
        let linear = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        for RGBColor(r, g, b) in COLOURS {
            let l = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
            let contrast = 1.05 / (l + 0.05);
            assert!(contrast >= 3.0, "({r}, {g}, {b}): {contrast:.2}");
        }
        let twelve = COLOURS.len();
        assert_eq!(style_of(twelve), (COLOURS[0], Stroke::Dashed));
        assert_eq!(
            style_of(MAX_SERIES - 1),
            (COLOURS[twelve - 1], Stroke::Dotted)
        );
    }

    #[test]
    fn one_step_shows_and_every_legend_entry_fits() {
        let series: Vec<Series> = (0..MAX_SERIES)
            .map(|i| Series {
                label: format!("top-p 0.{i:02}"),
                sizes: vec![i + 1],
            })
            .collect();
        let mut svg = String::new();
        assert!(render(&mut svg, "title", &series).is_ok());
        // A dot for each solid line; triangles and crosses for the rest.
        assert_eq!(svg.matches("<circle").count(), COLOURS.len());
        assert_eq!(svg.matches("<polygon").count(), COLOURS.len());
        let attr = |tag: &str, name: &str| -> Option<f64> {
            let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
            tag.get(at..)?.split('"').next()?.parse().ok()
        };
        let height = svg
            .split("<svg")
            .nth(1)
            .and_then(|tag| attr(tag, "height"))
            .expect("the chart's height");
        for (i, s) in series.iter().enumerate() {
            let tag = svg
                .split("<text")
                .find(|t| t.contains(&format!(">\n{}\n<", s.label)))
                .unwrap_or_else(|| panic!("legend entry {i} missing"));
            let y = attr(tag, "y").expect("y");
            assert!(y > 0.0 && y + 12.0 < height, "entry {i} at {y} of {height}");
        }
    }
}
