//! The sampling chain: penalties and bias, the stages in their order, then the draw.
//!
//! Input: logits, [`Overrides`] and a [`Config`]. Output: the final
//! survivors, a rank prefix of the candidates, at the front of the scratch
//! buffer, with the scale of the final distribution and per-stage counts.
//! Invariants: candidates are the tokens whose effective logit is neither
//! NaN nor -inf; every stage keeps a rank prefix of its input, so the top
//! token always survives; nothing is allocated.

use crate::config::Stage;
use crate::penalty::Overrides;
use crate::select::{keep_top, sort_by_rank};
use crate::softmax::{Scale, LN_WEIGHT_ONE};
use crate::{draw, minp, temperature, topk, topp};
use crate::{Alternative, Candidate, Choice, Config, Error, Input, Report, Survivors};

/// What a stage left behind, shown to an observer after it runs.
pub(crate) struct StageView<'a> {
    /// Position of the stage in the order.
    pub index: usize,
    /// Survivors after the stage, in any order.
    pub survivors: &'a [Candidate],
    /// Scale of the distribution after the stage.
    pub scale: Scale,
}

/// The state the chain ends in.
pub(crate) struct Outcome {
    /// Number of final survivors, at the front of the scratch buffer.
    pub len: usize,
    /// Scale of the final distribution.
    pub scale: Scale,
    /// Counts after each stage.
    pub survivors: Survivors,
}

/// Largest vocabulary that a scratch buffer of `len` elements supports.
pub(crate) fn capacity(len: usize) -> usize {
    // Ids are u32, so a larger buffer does not raise the limit.
    len.min(u32::MAX as usize)
}

/// Checks the lengths of `input` against the scratch capacity.
pub(crate) fn check_input(input: &Input<'_>, scratch_len: usize) -> Result<(), Error> {
    let len = input.logits.len();
    if len == 0 {
        return Err(Error::EmptyLogits);
    }
    let capacity = capacity(scratch_len);
    if len > capacity {
        return Err(Error::VocabTooLarge { len, capacity });
    }
    Ok(())
}

/// Copies every candidate, with its effective logit, into `scratch`; returns the count.
pub(crate) fn collect_all(logits: &[f32], ov: &Overrides, scratch: &mut [Candidate]) -> usize {
    let mut pending = ov.as_slice().iter().peekable();
    let mut slots = scratch.iter_mut();
    let mut n = 0usize;
    for (id, &raw) in (0u32..).zip(logits.iter()) {
        let x = match pending.peek() {
            Some(o) if o.id == id => {
                let v = o.value;
                pending.next();
                v
            }
            _ => raw,
        };
        // NaN fails the comparison, so NaN and -inf are never candidates.
        if x > f32::NEG_INFINITY {
            if let Some(slot) = slots.next() {
                *slot = Candidate { id, logit: x };
                n += 1;
            }
        }
    }
    n
}

/// Runs the stages of `config.order` on the candidates of `logits`.
///
/// # Errors
///
/// - [`Error::NoFiniteLogit`] if there is no candidate.
pub(crate) fn run(
    logits: &[f32],
    ov: &Overrides,
    config: &Config,
    scratch: &mut [Candidate],
    observe: &mut dyn FnMut(StageView<'_>),
) -> Result<Outcome, Error> {
    let n = collect_all(logits, ov, scratch);
    let s = scratch.get_mut(..n).unwrap_or(&mut []);
    let top = s.iter().fold(
        f32::NEG_INFINITY,
        |a, c| if c.logit > a { c.logit } else { a },
    );
    if n == 0 {
        return Err(Error::NoFiniteLogit);
    }

    let mut scale = Scale::new(top);
    let mut len = n;
    let mut counts = [None::<usize>; 3];
    for (index, &stage) in config.order.stages().iter().enumerate() {
        let live = s.get_mut(..len).unwrap_or(&mut []);
        match stage {
            Stage::Temperature => {
                (len, scale) = temperature::apply(live, config, scale);
            }
            Stage::TopK => {
                if let Some(k) = topk::limit(config.top_k, logits.len()) {
                    len = topk::apply(live, k);
                }
            }
            Stage::TopP => {
                len = topp::apply(live, config.top_p, |x| scale.weight(x));
            }
            Stage::MinP => {
                len = minp::apply(live, config.min_p, &scale);
            }
        }
        if let Some(slot) = count_slot(stage).and_then(|i| counts.get_mut(i)) {
            *slot = Some(len);
        }
        let survivors = s.get(..len).unwrap_or(&[]);
        observe(StageView {
            index,
            survivors,
            scale,
        });
    }

    let [k, p, m] = counts.map(|c| c.unwrap_or(len));
    let survivors = Survivors {
        vocab: logits.len(),
        after_top_k: k,
        after_top_p: p,
        after_min_p: m,
        final_count: len,
    };
    Ok(Outcome {
        len,
        scale,
        survivors,
    })
}

fn count_slot(stage: Stage) -> Option<usize> {
    match stage {
        Stage::Temperature => None,
        Stage::TopK => Some(0),
        Stage::TopP => Some(1),
        Stage::MinP => Some(2),
    }
}

/// Log-probability of a token with scaled difference `d` when the total weight is `total`.
fn logprob(d: f32, ln_total: f64) -> f32 {
    (f64::from(d) - ln_total) as f32
}

/// Draws from the final survivors `s` with uniform `u` and fills `report`.
pub(crate) fn finish(
    s: &mut [Candidate],
    scale: Scale,
    u: f64,
    survivors: Survivors,
    report: Option<&mut Report<'_>>,
) -> Choice {
    let weight = |x: f32| scale.weight(x);
    let (j, total) = draw::pick(s, u, weight);
    let chosen = s.get(j).or(s.first()).copied().unwrap_or_default();
    // ln(total / 2^30): the top token's weight is 2^30, so this is the log
    // of the normaliser in units of the top token.
    let ln_total = libm::log(total as f64) - LN_WEIGHT_ONE;
    let choice = Choice {
        id: chosen.id,
        logprob: logprob(scale.d(chosen.logit), ln_total),
    };

    if let Some(report) = report {
        report.survivors = survivors;
        report.entropy = entropy(s, &scale, total, ln_total);
        let n = report.alternatives.len().min(s.len());
        keep_top(s, n);
        let head = s.get_mut(..n).unwrap_or(&mut []);
        sort_by_rank(head);
        for (slot, c) in report.alternatives.iter_mut().zip(head.iter()) {
            *slot = Alternative {
                id: c.id,
                logprob: logprob(scale.d(c.logit), ln_total),
            };
        }
        report.n_alternatives = n;
    }
    choice
}

/// Fixed-point scale of the entropy accumulator.
const ENTROPY_ONE: f64 = (1u64 << 24) as f64;

/// Entropy in nats of the distribution of weights over `s`.
///
/// `H = ln(W / 2^30) + sum(w * -d) / W`. Each term is rounded to a fixed-point
/// integer before summing so that the result does not depend on the order
/// of `s`.
fn entropy(s: &[Candidate], scale: &Scale, total: u64, ln_total: f64) -> f32 {
    let mut acc: u128 = 0;
    for c in s {
        let w = scale.weight(c.logit);
        if w > 0 {
            let term = w as f64 * -f64::from(scale.d(c.logit));
            acc += u128::from((term * ENTROPY_ONE) as u64);
        }
    }
    let h = ln_total + (acc as f64 / ENTROPY_ONE) / total as f64;
    if h > 0.0 {
        h as f32
    } else {
        0.0
    }
}
