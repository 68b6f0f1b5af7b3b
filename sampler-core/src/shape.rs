//! The stage-by-stage table of one step, without drawing.
//!
//! Input: the same [`Input`] and [`Config`] as a sampling step, a scratch
//! buffer and a caller-owned table. Output: for the highest-ranked tokens,
//! their effective logit, plain softmax probability, and probability after
//! each stage of the order (or `None` once removed), plus survivor counts.
//! Invariant: it runs the very chain [`Sampler::sample`](crate::Sampler::sample)
//! runs, so the table shows the distribution the draw would use; no
//! generator is touched.

use crate::chain::{self, Path, StageView, WeightCache};
use crate::config::MAX_STAGES;
use crate::penalty::Overrides;
use crate::select::{keep_top, mass, sort_by_rank};
use crate::softmax::Scale;
use crate::{Candidate, Config, Error, Input, Order, Survivors};

/// One token's row of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShapeRow {
    /// Token id.
    pub id: u32,
    /// Effective logit: after penalties and bias, before temperature.
    pub logit: f32,
    /// Softmax probability of the effective logits at temperature 1, before any stage.
    pub prob: f32,
    /// `after[j]` is the probability after stage `order.stages()[j]` ran,
    /// renormalised over that stage's survivors; `None` once removed.
    pub after: [Option<f32>; MAX_STAGES],
}

/// The table filled by [`shape`].
#[derive(Debug)]
pub struct ShapeReport<'b> {
    /// Caller's rows, highest rank first; the length is the capacity.
    pub rows: &'b mut [ShapeRow],
    /// How many rows were written.
    pub n_rows: usize,
    /// The stage order the columns of `after` follow.
    pub order: Order,
    /// Survivor counts per stage.
    pub survivors: Survivors,
}

impl<'b> ShapeReport<'b> {
    /// A table of at most `rows.len()` rows.
    pub fn new(rows: &'b mut [ShapeRow]) -> Self {
        ShapeReport {
            rows,
            n_rows: 0,
            order: Order::TALKBACK,
            survivors: Survivors::default(),
        }
    }

    /// The rows written by the last call.
    pub fn written(&self) -> &[ShapeRow] {
        self.rows.get(..self.n_rows).unwrap_or(&[])
    }
}

/// Fills `out` with the distribution after each stage, for the top `out.rows.len()` tokens.
///
/// Rows are in rank order (higher effective logit first, ties by lower id).
/// `scratch` must be at least as long as the vocabulary.
///
/// # Errors
///
/// - Any error of [`Config::validate`].
/// - The input errors of [`Sampler::sample`](crate::Sampler::sample).
///
/// # Panics
///
/// Never.
///
/// # Examples
///
/// ```
/// use sampler_core::{shape, Candidate, Config, Input, ShapeReport, ShapeRow};
/// let logits = [2.5f32, 1.8, 1.2, 0.9, 0.3, -0.2, -1.1];
/// let config = Config { temperature: 1.0, top_k: 3, top_p: 1.0, min_p: 0.0, ..Config::default() };
/// let mut scratch = [Candidate::default(); 7];
/// let mut rows = [ShapeRow::default(); 4];
/// let mut table = ShapeReport::new(&mut rows);
/// shape(Input::new(&logits), &config, &mut scratch, &mut table).unwrap();
/// assert_eq!(table.survivors.after_top_k, 3);
/// assert!(table.written()[3].after[1].is_none());
/// ```
pub fn shape(
    input: Input<'_>,
    config: &Config,
    scratch: &mut [Candidate],
    out: &mut ShapeReport<'_>,
) -> Result<(), Error> {
    config.validate()?;
    chain::check_input(&input, scratch.len())?;
    let mut ov = Overrides::new();
    ov.build_with(input.logits, input.recent, input.bias, config, None)?;

    let n = chain::collect_all(input.logits, &ov, scratch);
    let all = scratch.get_mut(..n).unwrap_or(&mut []);
    let top = all.iter().fold(
        f32::NEG_INFINITY,
        |a, c| if c.logit > a { c.logit } else { a },
    );
    if n == 0 {
        return Err(Error::NoFiniteLogit);
    }
    let plain = Scale::new(top);
    let total = mass(all, &plain);
    let rows = out.rows.len().min(n);
    keep_top(all, rows);
    let head = all.get_mut(..rows).unwrap_or(&mut []);
    sort_by_rank(head);
    for (row, c) in out.rows.iter_mut().zip(head.iter()) {
        *row = ShapeRow {
            id: c.id,
            logit: c.logit,
            prob: ratio(plain.weight(c.logit), total),
            after: [None; MAX_STAGES],
        };
    }

    let table = out.rows.get_mut(..rows).unwrap_or(&mut []);
    let mut observe = |view: StageView<'_>| {
        let scale = view.scale;
        let total = mass(view.survivors, &scale);
        // Survivors are a rank prefix, so row r survives exactly when r < count.
        for row in table.iter_mut().take(view.survivors.len()) {
            if let Some(cell) = row.after.get_mut(view.index) {
                *cell = Some(ratio(scale.weight(row.logit), total));
            }
        }
    };
    let outcome = chain::run(
        input.logits,
        &ov,
        config,
        chain::Buffers {
            scratch,
            weights: &mut WeightCache::new(),
        },
        Path::Reference,
        Some(0),
        Some(&mut observe),
    )?;
    out.n_rows = rows;
    out.order = config.order;
    out.survivors = outcome.survivors;
    Ok(())
}

fn ratio(w: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (w as f64 / total as f64) as f32
    }
}
