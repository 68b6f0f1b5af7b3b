//! `talkback plot`: nucleus size per step for several settings, as SVG.
//!
//! Each setting (every combination of the listed temperatures, top-k, top-p
//! and min-p values) generates from the same prompt with the same seed; the
//! chart draws, per step, how many tokens survived top-p, one line per
//! setting.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use plotters::prelude::*;

use crate::app::Interrupted;
use crate::generate::{Finish, Generator, Request, Sink, Step};
use crate::model::{Model, Session};

/// Most settings one chart shows: beyond this many its colours repeat and
/// two lines could not be told apart (and each setting is a whole run).
pub const MAX_SERIES: usize = 99;

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label, e.g. `top-p 0.5`.
    pub label: String,
    /// Survivors after top-p at each step.
    pub sizes: Vec<usize>,
}

/// Records survivors after top-p per step.
#[derive(Default)]
struct Sizes(Vec<usize>);

impl Sink for Sizes {
    fn text(&mut self, _bytes: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn token(&mut self, step: &Step<'_>) -> io::Result<()> {
        self.0.push(step.survivors.after_top_p);
        Ok(())
    }
}

/// Generates once per request and collects each run's nucleus sizes.
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

/// The chart's file, opened before any generation so that a path that
/// cannot be written fails at once, not after every run.
pub struct Output {
    file: File,
    path: PathBuf,
    created: bool,
    done: bool,
}

impl Output {
    /// Opens `path` for writing, creating it if needed, without changing it yet.
    ///
    /// # Errors
    ///
    /// - the file cannot be opened for writing (a directory, a missing
    ///   folder, no permission).
    pub fn open(path: &Path) -> Result<Self> {
        let created = !path.exists();
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write chart {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            created,
            done: false,
        })
    }

    /// The path the chart goes to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // A chart that was never drawn leaves no empty file behind.
        if self.created && !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Draws the series as an SVG line chart into `out`.
///
/// # Errors
///
/// - the file cannot be written.
pub fn draw(mut out: Output, title: &str, series: &[Series]) -> Result<()> {
    let mut svg = String::new();
    render(&mut svg, out.path(), title, series)?;
    let fail = |e: io::Error| anyhow!("cannot write chart {}: {e}", out.path.display());
    out.file.set_len(0).map_err(fail)?;
    out.file.write_all(svg.as_bytes()).map_err(fail)?;
    out.file.flush().map_err(fail)?;
    out.done = true;
    Ok(())
}

fn render(svg: &mut String, path: &Path, title: &str, series: &[Series]) -> Result<()> {
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

    let root = SVGBackend::with_string(svg, (960, 540)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0..steps, 0..top + top / 10 + 1)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("tokens left after top-p")
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.sizes.iter().enumerate().map(|(x, &y)| (x, y)),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
