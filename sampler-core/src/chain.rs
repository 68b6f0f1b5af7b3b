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
use crate::select::{
    keep_top, mass, partition, sort_by_rank, weighted_select, weighted_select_above,
};
use crate::softmax::{Scale, WEIGHT_ONE};
use crate::{dense, draw, minp, temperature, topk, topp};
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
    /// Number of candidates held at the front of the scratch buffer: every
    /// final survivor of nonzero weight, and at least as many of the top
    /// survivors as alternatives were asked for.
    pub held: usize,
    /// Whether the held candidates are in rank order.
    pub sorted: bool,
    /// `Some(total)` when only the head of the final distribution is held:
    /// the held tokens are a rank prefix of it and `total` is the exact
    /// weight of all of it. A draw past the head needs the rest collected.
    pub partial: Option<u64>,
    /// The exact total weight of the held candidates under `scale`, when the
    /// chain already knows it.
    pub mass: Option<u64>,
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
            Some(o) if o.id() == id => {
                let v = o.value();
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

/// How the chain finds its candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Stay on the dense logits until the first truncating stage, then
    /// collect only what that stage keeps.
    Fast,
    /// Collect every candidate first; simple, and the definition the fast
    /// path must match bit for bit.
    Reference,
}

/// At or below this scaled difference every weight is zero (e^-22 * 2^30 < 0.3).
pub(crate) const ZERO_WEIGHT_CUT: f32 = -22.0;

/// Where the survivors are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Live {
    /// Every candidate survives and none has been collected.
    All,
    /// The survivors are exactly `scratch[..n]`, a rank prefix of the candidates.
    Held(usize),
}

/// Top logit and candidate count, each computed by a dense pass when first needed.
struct Summary<'a> {
    logits: &'a [f32],
    ov: &'a Overrides,
    top: Option<f32>,
    count: Option<usize>,
    /// The last top-p cut over every candidate, with the `1 / t` it was
    /// made under: its mass is the final total if nothing changes after it.
    cut: Option<(Cut, f32)>,
}

impl Summary<'_> {
    /// The top effective logit.
    fn top(&mut self) -> Result<f32, Error> {
        let m = match self.top {
            Some(m) => m,
            None => dense::top(self.logits, self.ov),
        };
        self.top = Some(m);
        // NaN never wins, so -inf means no candidate at all.
        if m == f32::NEG_INFINITY {
            return Err(Error::NoFiniteLogit);
        }
        Ok(m)
    }

    /// The number of candidates.
    fn count(&mut self) -> Result<usize, Error> {
        let n = match self.count {
            Some(n) => n,
            None => dense::count(self.logits, self.ov),
        };
        self.count = Some(n);
        if n == 0 {
            return Err(Error::NoFiniteLogit);
        }
        Ok(n)
    }
}

/// Where [`run`] works: the scratch buffer for candidates, and the
/// weights of the final ones.
pub(crate) struct Buffers<'a> {
    pub scratch: &'a mut [Candidate],
    pub weights: &'a mut WeightCache,
}

/// Runs the stages of `config.order` on the candidates of `logits`.
///
/// `report` is `Some(n)` when the caller wants a report with `n`
/// alternatives; the fast path then holds at least that many top tokens and
/// every token the report's entropy needs. Without a report, survivor
/// counts are not computed and a chain that truncates nothing may hold only
/// the head of the distribution (see [`Outcome::partial`]). `observe`,
/// when given, is shown the survivors after each stage that holds them;
/// without it (and without a report) the fast path may do top-k and the
/// stages after it in one step (see [`min_p_after_top_k`]).
///
/// # Errors
///
/// - [`Error::NoFiniteLogit`] if there is no candidate.
pub(crate) fn run(
    logits: &[f32],
    ov: &Overrides,
    config: &Config,
    buffers: Buffers<'_>,
    path: Path,
    report: Option<usize>,
    mut observe: Option<&mut dyn FnMut(StageView<'_>)>,
) -> Result<Outcome, Error> {
    let Buffers {
        scratch,
        weights: cache,
    } = buffers;
    let vocab = logits.len();
    let mut summary = Summary {
        logits,
        ov,
        top: None,
        count: None,
        cut: None,
    };
    let mut live = Live::All;
    let mut top = f32::NEG_INFINITY;
    let mut inv_t = 1.0f32;
    let mut sorted = false;
    cache.clear();
    if path == Path::Reference {
        let n = collect_all(logits, ov, scratch);
        top = held_top(scratch.get(..n).unwrap_or(&[]));
        summary.count = Some(n);
        summary.count()?;
        live = Live::Held(n);
    }

    // Per counted stage: Some(Held(n)) or Some(All) once it ran; None if absent.
    let mut counts = [None::<Live>; 3];
    let stages = config.order.stages();
    // Stages already done by a fused top-k and min-p (see `min_p_after_top_k`).
    let mut done = 0usize;
    for (index, &stage) in stages.iter().enumerate() {
        let fused = match (stage, live, path, report, &observe) {
            (Stage::TopK, Live::All, Path::Fast, None, None) => {
                let rest = stages.get(index + 1..).unwrap_or(&[]);
                topk::limit(config.top_k, vocab).zip(min_p_after_top_k(config, rest))
            }
            _ => None,
        };
        if done > 0 {
            done -= 1;
        } else if let Some((k, (later, top_p))) = fused {
            let cut = minp::cut(config.min_p);
            let spares = |head: dense::Head<'_>| top_p_spares(head, top_p, cache);
            let (n, is_cut) = match dense::top_k_min_p(logits, ov, k, inv_t, cut, scratch, spares) {
                dense::TopKHead::Cut(n) => (n, true),
                dense::TopKHead::TopK(n) => (n, false),
            };
            if n == 0 {
                return Err(Error::NoFiniteLogit);
            }
            top = held_top(scratch.get(..n).unwrap_or(&[]));
            sorted = n <= SORTED_MAX && dense::top_k_sorts(n);
            live = Live::Held(n);
            if is_cut {
                done = later;
            }
        } else {
            match live {
                Live::Held(len) => {
                    let s = scratch.get_mut(..len).unwrap_or(&mut []);
                    if !sorted && len <= SORTED_MAX {
                        sort_by_rank(s);
                        sorted = true;
                    }
                    let scale = Scale {
                        inv_t,
                        ..Scale::new(top)
                    };
                    let (n, t) = if sorted {
                        sorted_stage(stage, config, vocab, s, scale, cache)
                    } else {
                        held_stage(stage, config, vocab, s, scale)
                    };
                    live = Live::Held(n);
                    inv_t = t;
                }
                Live::All => {
                    let (next, t) =
                        all_stage(stage, config, ov, logits, scratch, inv_t, &mut summary)?;
                    if let Live::Held(n) = next {
                        if n == 0 {
                            return Err(Error::NoFiniteLogit);
                        }
                        top = held_top(scratch.get(..n).unwrap_or(&[]));
                        // Top-k of a few, and greedy, come out in rank order.
                        let by_top_k = matches!(stage, Stage::TopK | Stage::Temperature);
                        sorted = by_top_k && n <= SORTED_MAX && dense::top_k_sorts(n);
                    }
                    live = next;
                    inv_t = t;
                }
            }
        }
        if let Some(slot) = count_slot(stage).and_then(|i| counts.get_mut(i)) {
            *slot = Some(live);
        }
        if let (Live::Held(n), Some(observe)) = (live, observe.as_mut()) {
            let survivors = scratch.get(..n).unwrap_or(&[]);
            let scale = Scale {
                inv_t,
                ..Scale::new(top)
            };
            observe(StageView {
                index,
                survivors,
                scale,
            });
        }
    }

    let mut partial = None;
    let (held, len) = match live {
        Live::Held(n) => (n, n),
        Live::All => {
            // Nothing truncated: the final distribution is every candidate.
            let m = summary.top()?;
            top = m;
            let scale = Scale {
                inv_t,
                ..Scale::new(m)
            };
            match (report, final_head(logits, ov, &scale, scratch)) {
                (None, Some((n, total))) => {
                    partial = Some(total);
                    (n, n)
                }
                _ => {
                    // Only tokens of nonzero weight can be drawn, so hold
                    // those, unless the report wants more alternatives than
                    // they number.
                    let n = summary.count()?;
                    let mut held = dense::at_least(logits, ov, &scale, ZERO_WEIGHT_CUT, scratch);
                    if held < report.unwrap_or(0).min(n) {
                        held = collect_all(logits, ov, scratch);
                    }
                    (held, n)
                }
            }
        }
    };
    if report.is_none() {
        // Nobody will read the counts; skip the passes they might need.
        counts = [Some(Live::Held(len)); 3];
    }
    let mut count = |c: Option<Live>| -> Result<usize, Error> {
        match c {
            None => Ok(len),
            Some(Live::Held(n)) => Ok(n),
            Some(Live::All) => summary.count(),
        }
    };
    let survivors = Survivors {
        vocab,
        after_top_k: count(counts[0])?,
        after_top_p: count(counts[1])?,
        after_min_p: count(counts[2])?,
        final_count: len,
    };
    let scale = Scale {
        inv_t,
        ..Scale::new(top)
    };
    let held_s = scratch.get_mut(..held).unwrap_or(&mut []);
    if !sorted && held <= SORTED_MAX {
        sort_by_rank(held_s);
        sorted = true;
    }
    // A top-p cut's mass is the total if no later stage cut or rescaled.
    let mass = summary
        .cut
        .filter(|&(cut, t)| cut.len == held && t == inv_t && partial.is_none())
        .map(|(cut, _)| cut.mass);
    Ok(Outcome {
        held,
        scale,
        survivors,
        sorted,
        partial,
        mass,
    })
}

/// How many of the stages after a top-k a fused top-k and min-p does,
/// and the top-p between them, if any: `Some` when they are min-p, or
/// top-p then min-p, with min-p on.
///
/// Min-p keeps the tokens whose scaled difference reaches its cut, so it
/// keeps from the best `k` exactly the candidates above the cut when
/// those are fewer than `k`; and top-p between them, which keeps a rank
/// prefix, then changes nothing unless it cuts inside them
/// ([`top_p_spares`] decides). [`dense::top_k_min_p`] finds those
/// candidates reading only the blocks that can hold one, instead of
/// every block that can hold one of the best `k`.
fn min_p_after_top_k(config: &Config, rest: &[Stage]) -> Option<(usize, Option<f32>)> {
    if config.min_p <= 0.0 {
        return None;
    }
    match rest {
        [Stage::MinP, ..] => Some((1, None)),
        [Stage::TopP, Stage::MinP, ..] => Some((2, Some(config.top_p).filter(|&p| p < 1.0))),
        _ => None,
    }
}

/// Whether top-p over the best `k` keeps every token of `head.few`, the
/// candidates above min-p's cut, so that top-p then min-p keep just them.
///
/// Top-p keeps the shortest rank prefix whose weight reaches its target,
/// which grows with the total weight of the best `k`; that total is at
/// least the weight of `few` plus `head.rest`. If the tokens before the
/// last of `few` fall short of the target of that lower bound, they fall
/// short of the exact one too, and the prefix top-p keeps ends at the
/// last of `few` or after it.
fn top_p_spares(head: dense::Head<'_>, top_p: Option<f32>, cache: &mut WeightCache) -> bool {
    let Some(p) = top_p else {
        return true;
    };
    let n = head.few.len();
    if n <= 1 {
        return true;
    }
    let w = cache.get(head.few, head.scale);
    let above: u64 = w.iter().take(n - 1).sum();
    let held = above + w.get(n - 1).copied().unwrap_or(0);
    above < topp::target(p, held + head.rest)
}

/// The top logit of a non-empty rank prefix.
fn held_top(s: &[Candidate]) -> f32 {
    s.iter().fold(
        f32::NEG_INFINITY,
        |a, c| if c.logit > a { c.logit } else { a },
    )
}

/// Runs one stage on held survivors; returns the new count and `1 / t`.
fn held_stage(
    stage: Stage,
    config: &Config,
    vocab: usize,
    s: &mut [Candidate],
    scale: Scale,
) -> (usize, f32) {
    let len = s.len();
    match stage {
        Stage::Temperature => {
            let (n, scale) = temperature::apply(s, config, scale);
            (n, scale.inv_t)
        }
        Stage::TopK => match topk::limit(config.top_k, vocab) {
            Some(k) => (topk::apply(s, k), scale.inv_t),
            None => (len, scale.inv_t),
        },
        Stage::TopP => (topp::apply(s, config.top_p, &scale), scale.inv_t),
        Stage::MinP => (minp::apply(s, config.min_p, &scale), scale.inv_t),
    }
}

/// Held sets at most this long are sorted once and then cut as prefixes.
pub(crate) const SORTED_MAX: usize = 64;

/// Integer weights of the first `len` candidates of a sorted held set.
///
/// A sampler keeps one from call to call, so that a call neither clears
/// its 512 bytes on the stack nor copies them out with its outcome.
pub(crate) struct WeightCache {
    scale: Option<Scale>,
    len: usize,
    w: [u64; SORTED_MAX],
}

impl WeightCache {
    pub(crate) const fn new() -> Self {
        WeightCache {
            scale: None,
            len: 0,
            w: [0; SORTED_MAX],
        }
    }

    /// Forgets the weights held: they belong to an earlier held set.
    fn clear(&mut self) {
        self.scale = None;
        self.len = 0;
    }

    /// Weights of `s` (at most [`SORTED_MAX`] long) under `scale`, reusing earlier work.
    fn get(&mut self, s: &[Candidate], scale: Scale) -> &[u64] {
        if self.scale != Some(scale) || self.len < s.len() {
            // One at a time: for at most 64 weights the eight-lane batch
            // was more than twice the code, and a call after a decode step
            // fetches every line of its code again.
            for (w, c) in self.w.iter_mut().zip(s) {
                *w = scale.weight(c.logit);
            }
            self.scale = Some(scale);
            self.len = s.len().min(SORTED_MAX);
        }
        self.w.get(..s.len()).unwrap_or(&[])
    }
}

/// Runs one stage on a held set sorted by rank; every stage keeps a prefix.
///
/// Gives the same survivors as [`held_stage`]: the prefix each stage keeps
/// is the set the selection-based version finds.
fn sorted_stage(
    stage: Stage,
    config: &Config,
    vocab: usize,
    s: &mut [Candidate],
    scale: Scale,
    cache: &mut WeightCache,
) -> (usize, f32) {
    let len = s.len();
    match stage {
        Stage::Temperature if config.is_greedy() => (len.min(1), scale.inv_t),
        Stage::Temperature => (len, scale.with_temperature(config.temperature).inv_t),
        Stage::TopK => match topk::limit(config.top_k, vocab) {
            Some(k) => (len.min(k), scale.inv_t),
            None => (len, scale.inv_t),
        },
        Stage::TopP if config.top_p < 1.0 && len > 1 => {
            let w = cache.get(s, scale);
            (topp::prefix(w, config.top_p), scale.inv_t)
        }
        Stage::MinP if config.min_p > 0.0 && len > 1 => {
            let cut = minp::cut(config.min_p);
            let kept = s.iter().take_while(|c| scale.d(c.logit) >= cut).count();
            (kept, scale.inv_t)
        }
        Stage::TopP | Stage::MinP => (len, scale.inv_t),
    }
}

/// Scaled difference down to which top-p first looks for its cut.
///
/// Real language-model logits put most of the mass within a few nats of the
/// top token and a long tail of tiny weights below: at temperature 0.8 a
/// 49,152-token vocabulary has about 18,000 tokens of nonzero weight, but
/// top-p 0.95 keeps about 50, all above -6.
const TOP_P_HEAD: f32 = -10.0;

/// Most tokens collected above [`TOP_P_HEAD`] before giving up on the head.
const TOP_P_HEAD_LIMIT: usize = 16_384;

/// Where top-p cut the candidates: the survivors at the front of scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    /// How many survive.
    len: usize,
    /// Their exact total weight, which the draw then need not sum again.
    mass: u64,
}

impl Cut {
    /// The cut ending at `s[j]`, with `above` the weight of `s[..j]`.
    fn at(s: &[Candidate], j: usize, above: u64, scale: &Scale) -> Option<Cut> {
        let last = s.get(j)?;
        Some(Cut {
            len: j + 1,
            mass: above + scale.weight(last.logit),
        })
    }
}

/// Top-p over every candidate, done from the head of the distribution.
///
/// One vectorised pass bounds the total weight by `[lo, hi]` and collects
/// the tokens with `d >= TOP_P_HEAD`. The cut is the smallest rank prefix
/// reaching the target, and the target grows with the total; so when the
/// head holds the target of `hi`, and what ranks above the token reaching
/// it falls short of the target of `lo`, that token ends the prefix for
/// every total in between, the exact one included. Only otherwise is the
/// total computed exactly, in a second pass, and the cut found among the
/// tokens the first selection put in front. Either way the cut is the one
/// over all candidates, since the head is a rank prefix. Returns `None`
/// (nothing decided) when the head is too long or too light, or the top
/// logit is +inf.
#[inline(never)]
fn top_p_from_head(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    p: f32,
    scratch: &mut [Candidate],
) -> Option<Cut> {
    if scale.inf {
        return None;
    }
    let (lo, hi, n) =
        dense::bounded_mass_and_head(logits, ov, scale, TOP_P_HEAD, TOP_P_HEAD_LIMIT, scratch);
    let head = scratch.get_mut(..n?)?;
    let held = mass(head, scale);
    let (need_lo, need_hi) = (topp::target(p, lo), topp::target(p, hi));
    if held < need_lo {
        return None;
    }
    let mut within = head.len();
    if held >= need_hi {
        let (last, above) = weighted_select_above(head, need_hi - 1, scale)?;
        if above < need_lo {
            return Cut::at(head, last, above, scale);
        }
        // The exact target is at most need_hi: its cut is among these.
        within = last + 1;
    }
    #[cfg(test)]
    tests::EXACT_RETRIES.with(|c| c.set(c.get() + 1));
    let need = topp::target(p, dense::total_weight(logits, ov, scale));
    if held < need {
        return None;
    }
    let (j, above) = weighted_select_above(head.get_mut(..within)?, need - 1, scale)?;
    Cut::at(head, j, above, scale)
}

/// Top-p over every candidate when the head above [`TOP_P_HEAD`] was too
/// light or too long (hot temperatures, flat logits): one pass sums every
/// weight exactly into bins of an eighth of a nat ([`dense::BINS`]), which
/// names the bin where the cumulative weight reaches the target; the tokens
/// of that bin and the ones before it are collected (a rank prefix), all of
/// the earlier bins' tokens survive, and the cut is selected among the few
/// tokens of that bin alone. `None` only when the top logit is +inf.
// Kept out of line, like `top_p_from_head`: inlined, their frames (the
// bins, the selection's histogram) would add up in `run`'s instead of
// taking turns, past the crate's stack bound.
#[inline(never)]
fn top_p_from_total(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    p: f32,
    scratch: &mut [Candidate],
) -> Option<Cut> {
    if scale.inf {
        return None;
    }
    let mut hist = [0u64; dense::BINS];
    let total = dense::weight_histogram(logits, ov, scale, &mut hist);
    let need = topp::target(p, total);
    // The first bin whose cumulative weight reaches `need`, and the weight
    // of the bins before it, which falls short of it.
    let mut before = 0u64;
    let mut bin = 0usize;
    for (b, &w) in hist.iter().enumerate() {
        bin = b;
        if before + w >= need {
            break;
        }
        before += w;
    }
    let n = dense::at_least(logits, ov, scale, dense::bin_floor(bin), scratch);
    let held = scratch.get_mut(..n)?;
    let earlier = partition(held, |c| dense::bin_of(scale.d(c.logit)) < bin);
    // The cut is the token of `bin` where the cumulative weight, the
    // earlier bins' included, first exceeds need - 1.
    let last = held.get_mut(earlier..)?;
    // `need` is at least 1, and `before` falls short of it.
    let within = (need - 1).checked_sub(before)?;
    let (j, above) = weighted_select_above(last, within, scale)?;
    Cut::at(held, earlier + j, before + above, scale)
}

/// The head of an untruncated final distribution and its exact total weight.
///
/// `None` when the top logit is +inf or the head is too long.
fn final_head(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    scratch: &mut [Candidate],
) -> Option<(usize, u64)> {
    if scale.inf {
        return None;
    }
    let (total, n) = dense::mass_and_head(logits, ov, scale, TOP_P_HEAD, TOP_P_HEAD_LIMIT, scratch);
    Some((n?, total))
}

/// Runs one stage while every candidate survives; collects when it truncates.
///
/// Each branch collects a superset of what the stage keeps that is itself a
/// rank prefix (the top k; the top token; the tokens of nonzero weight; the
/// tokens passing min-p) and then runs the held version of the stage on it,
/// so the result is the same set the reference path finds.
fn all_stage(
    stage: Stage,
    config: &Config,
    ov: &Overrides,
    logits: &[f32],
    scratch: &mut [Candidate],
    inv_t: f32,
    summary: &mut Summary<'_>,
) -> Result<(Live, f32), Error> {
    match stage {
        Stage::Temperature if config.is_greedy() => {
            Ok((Live::Held(dense::top_k(logits, ov, 1, scratch)), inv_t))
        }
        Stage::Temperature => Ok((Live::All, 1.0 / config.temperature)),
        Stage::TopK => match topk::limit(config.top_k, logits.len()) {
            Some(k) => Ok((Live::Held(dense::top_k(logits, ov, k, scratch)), inv_t)),
            None => Ok((Live::All, inv_t)),
        },
        Stage::TopP if config.top_p < 1.0 => {
            let m = summary.top()?;
            let scale = Scale {
                inv_t,
                ..Scale::new(m)
            };
            let cut = match top_p_from_head(logits, ov, &scale, config.top_p, scratch) {
                Some(cut) => Some(cut),
                None => top_p_from_total(logits, ov, &scale, config.top_p, scratch),
            };
            if let Some(cut) = cut {
                summary.cut = Some((cut, inv_t));
                return Ok((Live::Held(cut.len), inv_t));
            }
            // The top logit is +inf: the tokens sharing it hold all the
            // mass, and they have nonzero weight.
            let n = dense::at_least(logits, ov, &scale, ZERO_WEIGHT_CUT, scratch);
            let s = scratch.get_mut(..n).unwrap_or(&mut []);
            Ok((Live::Held(topp::apply(s, config.top_p, &scale)), inv_t))
        }
        Stage::MinP if config.min_p > 0.0 => {
            let m = summary.top()?;
            let scale = Scale {
                inv_t,
                ..Scale::new(m)
            };
            let n = dense::at_least(logits, ov, &scale, minp::cut(config.min_p), scratch);
            Ok((Live::Held(n), inv_t))
        }
        Stage::TopP | Stage::MinP => Ok((Live::All, inv_t)),
    }
}

/// Index of a stage's field among the survivor counts; temperature has none.
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
    // Adding +0.0 turns a -0.0 (from a top logit of -0.0) into +0.0, so the
    // top token of a one-token distribution always reports exactly 0.
    (f64::from(d) - ln_total + 0.0) as f32
}

/// Draws from the held final survivors with uniform `u` and fills `report`.
///
/// Returns `None` only when [`Outcome::partial`] is set and the draw falls
/// past the held head; the caller then holds every token of nonzero weight
/// and calls again with the same `u`.
pub(crate) fn finish(
    s: &mut [Candidate],
    out: &mut Outcome,
    cache: &mut WeightCache,
    u: f64,
    report: Option<&mut Report<'_>>,
) -> Option<Choice> {
    let scale = out.scale;
    let (j, total) = match out.partial {
        // The head is a rank prefix, so a target inside its mass picks the
        // same token the scan over every token would.
        Some(total) => (weighted_select(s, draw::target(u, total), &scale)?, total),
        None if out.sorted => {
            let w = cache.get(s, scale);
            draw::pick_sorted(w, u)
        }
        None => match out.mass {
            Some(total) => draw::pick_with_total(s, u, total, &scale),
            None => draw::pick(s, u, &scale),
        },
    };
    let chosen = s.get(j).or(s.first()).copied().unwrap_or_default();
    // ln(total / 2^30): the top token's weight is 2^30, so this is the log
    // of the normaliser in units of the top token.
    // Dividing by 2^30 is exact, so a lone top token gives ln(1) = 0 exactly.
    let ln_total = libm::log(total as f64 / f64::from(WEIGHT_ONE));
    let choice = Choice {
        id: chosen.id,
        logprob: logprob(scale.d(chosen.logit), ln_total),
    };

    if let Some(report) = report {
        report.survivors = out.survivors;
        report.entropy = entropy(s, &scale, total, ln_total);
        let n = report
            .alternatives
            .len()
            .min(out.survivors.final_count)
            .min(s.len());
        if !out.sorted {
            keep_top(s, n);
            sort_by_rank(s.get_mut(..n).unwrap_or(&mut []));
        }
        let head = s.get(..n).unwrap_or(&[]);
        for (slot, c) in report.alternatives.iter_mut().zip(head.iter()) {
            *slot = Alternative {
                id: c.id,
                logprob: logprob(scale.d(c.logit), ln_total),
            };
        }
        report.n_alternatives = n;
    }
    Some(choice)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    extern crate std;
    use core::cell::Cell;
    use std::vec;
    use std::vec::Vec;

    std::thread_local! {
        /// Calls of `top_p_from_head` on this thread that needed the exact total.
        pub(crate) static EXACT_RETRIES: Cell<usize> = const { Cell::new(0) };
    }

    /// The length of a top-p cut, after checking the mass it reports
    /// against the weights of the survivors it left in `s`.
    fn survivors(cut: Cut, s: &[Candidate], scale: &Scale) -> usize {
        let mass: u64 = s[..cut.len].iter().map(|c| scale.weight(c.logit)).sum();
        assert_eq!(cut.mass, mass, "the mass of {} survivors", cut.len);
        cut.len
    }

    /// Uniform floats in `[0, 1)` from a fixed-seed linear congruential generator.
    fn units(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn top_p_from_the_head_keeps_the_cut_over_all_candidates_on_both_paths() {
        // One top token and some thousands of small weights inside the
        // head: the nucleus ends among tokens each about 5e-5 of the total,
        // close to the spread of the bounds, so some calls are decided by
        // the bounds and some need the exact total.
        let mut unit = units(11);
        let mut decided = 0;
        for case in 0..80usize {
            let v = 9_000 + case * 37;
            let mut logits: Vec<f32> = (0..v).map(|_| -8.0 - 1.5 * unit()).collect();
            if let Some(top) = logits.get_mut(case) {
                *top = 0.0;
            }
            let p = 0.3 + 0.65 * unit();
            let ov = Overrides::new();
            let scale = Scale::new(0.0);
            let mut scratch = vec![Candidate::default(); v];
            let retries = EXACT_RETRIES.with(|c| c.get());
            let got = top_p_from_head(&logits, &ov, &scale, p, &mut scratch).unwrap();
            let got = survivors(got, &scratch, &scale);
            if EXACT_RETRIES.with(|c| c.get()) == retries {
                decided += 1;
            }
            let mut kept: Vec<u32> = scratch[..got].iter().map(|c| c.id).collect();
            kept.sort_unstable();

            let mut all = vec![Candidate::default(); v];
            let n = collect_all(&logits, &ov, &mut all);
            let keep = topp::apply(&mut all[..n], p, &scale);
            let mut want: Vec<u32> = all[..keep].iter().map(|c| c.id).collect();
            want.sort_unstable();
            assert_eq!(kept, want, "case {case} p {p}");
        }
        let retried = EXACT_RETRIES.with(|c| c.get());
        assert!(
            decided > 40 && retried > 3,
            "{decided} decided, {retried} retried"
        );
    }

    /// The float `n` steps above `x`, for `x` in `(0, 1)`.
    fn up(x: f32, n: u32) -> f32 {
        f32::from_bits(x.to_bits() + n)
    }

    #[test]
    fn top_p_from_the_head_keeps_the_exact_cut_for_every_p_across_the_bounds() {
        // A head of about a thousand tokens above a tail of some 59,000
        // tiny weights, so the bounds on the total are tens of thousands
        // of units apart. For several nucleus positions, p walks one float at
        // a time across every value whose targets of the two bounds
        // straddle a prefix mass, so the targets of `lo`, of the exact
        // total and of `hi` each cross it in turn. Penalties touch the top
        // token, the head and the tail chunk; biases raise a head token
        // and a tail-chunk token and ban another head token; the
        // temperature is not 1.
        let v = 60_005;
        let t = 0.7f32;
        let mut unit = units(29);
        let mut logits: Vec<f32> = (0..v)
            .map(|i| {
                let d = if i % 200 == 7 {
                    -3.0 - 6.9 * unit()
                } else {
                    -10.0 - 11.0 * unit()
                };
                d * t
            })
            .collect();
        logits[777] = 0.0;
        let tail = (v - v % dense::CHUNK) as u32;
        let recent = [7u32, 207, 777, tail, tail + 1, (v - 1) as u32];
        let bias = [(407u32, 1.5f32), (tail, 9.0), (1007, f32::NEG_INFINITY)];
        let config = Config {
            repeat_penalty: 1.2,
            presence_penalty: 0.1,
            ..Config::default()
        };
        let mut ov = Overrides::new();
        ov.build(&logits, &recent, &bias, &config).unwrap();

        // The reference: every candidate in rank order and its prefix masses.
        let mut all = vec![Candidate::default(); v];
        let n = collect_all(&logits, &ov, &mut all);
        all.truncate(n);
        sort_by_rank(&mut all);
        let scale = Scale::new(all[0].logit).with_temperature(t);
        let mut rank = vec![usize::MAX; v];
        let mut cum = Vec::with_capacity(n);
        let mut sum = 0u64;
        for (r, c) in all.iter().enumerate() {
            rank[c.id as usize] = r;
            sum += scale.weight(c.logit);
            cum.push(sum);
        }
        let total = sum;
        let mut scratch = vec![Candidate { id: 3, logit: 1e30 }; v];
        let (lo, hi, head) = dense::bounded_mass_and_head(
            &logits,
            &ov,
            &scale,
            TOP_P_HEAD,
            TOP_P_HEAD_LIMIT,
            &mut scratch,
        );
        let head = head.unwrap();
        assert!(lo <= total && total <= hi);
        assert!(hi - lo > 20_000, "bounds {lo} {hi}: too tight to test");
        // Spot-check the prefix masses against the stage itself.
        let mut check = all.clone();
        assert_eq!(
            topp::apply(&mut check, 0.9, &scale),
            cum.partition_point(|&c| c < topp::target(0.9, total)) + 1
        );

        // Prefix masses around several nucleus positions, and around the
        // end of the head, where the cut moves past what was collected.
        let mut edges = Vec::new();
        for level in [0.35f64, 0.6, 0.8, 0.9] {
            let j = cum.partition_point(|&c| (c as f64) < level * total as f64);
            edges.extend_from_slice(&cum[j - 1..j + 2]);
        }
        edges.extend_from_slice(&cum[head - 2..head + 1]);

        // Unoptimised builds take every 16th float.
        let step = if cfg!(debug_assertions) { 16 } else { 1 };
        let (mut tried, mut decided_apart, mut retried) = (0, 0, 0);
        for edge in edges {
            // From well below the edge for `hi` to well above it for `lo`:
            // the width of the bounds on either side.
            let margin = (hi - lo) as f64;
            let from = (edge as f64 - margin) / hi as f64 + topp::TOP_P_TOLERANCE;
            let to = (edge as f64 + margin) / lo as f64 + topp::TOP_P_TOLERANCE;
            let mut p = from as f32;
            while f64::from(p) <= to {
                let need = topp::target(p, total);
                let want = cum.partition_point(|&c| c < need) + 1;
                let retries = EXACT_RETRIES.with(|c| c.get());
                let got = top_p_from_head(&logits, &ov, &scale, p, &mut scratch)
                    .map(|cut| survivors(cut, &scratch, &scale));
                // Past the head nothing is decided, and the caller selects
                // among every token of nonzero weight.
                let want = Some(want).filter(|&w| w <= head);
                assert_eq!(got, want, "p {p} ({:#x}) edge {edge}", p.to_bits());
                let want = want.unwrap_or(0);
                assert!(
                    scratch[..want].iter().all(|c| rank[c.id as usize] < want),
                    "p {p}: not the top {want}"
                );
                if EXACT_RETRIES.with(|c| c.get()) > retries {
                    retried += 1;
                } else if got.is_some() && topp::target(p, lo) < topp::target(p, hi) {
                    decided_apart += 1;
                }
                tried += 1;
                p = up(p, step);
            }
        }
        // Both ways of deciding ran many times, and the bounds alone
        // decided many cuts while their targets were apart.
        assert!(
            retried * step > 2_000 && decided_apart * step > 4_000,
            "{tried} tried: {retried} retried, {decided_apart} decided with bounds apart"
        );
    }

    #[test]
    fn binned_totals_keep_the_cut_over_all_candidates() {
        // One top token over a band of small weights: unless p is small,
        // the head above -10 holds the top token alone, too light for p,
        // and the cut comes from the binned total. Bands narrow and wide,
        // shallow and below -16, and longer than the head takes; then
        // logits on the bin edges exactly, and many equal logits across
        // the cut, where ties go by id.
        let mut unit = units(5);
        // Band top, band width, tokens in it, p, and whether the head
        // above -10 decides it.
        let bands = [
            (-10.5f32, 2.0f32, 15_000usize, 0.95f32, false),
            (-10.5, 2.0, 15_000, 0.5, true),
            (-13.5, 2.0, 30_000, 0.99, false),
            (-17.0, 3.0, 30_000, 0.999_9, false),
            (-10.2, 2.5, 40_000, 0.9, false),
            (-1.0, 6.0, 40_000, 0.7, false),
            (-0.1, 0.0, 5_000, 0.37, true),
        ];
        let ids = |s: &[Candidate]| {
            let mut ids: Vec<u32> = s.iter().map(|c| c.id).collect();
            ids.sort_unstable();
            ids
        };
        for (case, &(top, width, n, p, by_head)) in bands.iter().enumerate() {
            let t = 1.0 + 0.25 * case as f32;
            let mut logits: Vec<f32> = (0..n).map(|_| (top - width * unit()) * t).collect();
            logits.insert(n / 3, 0.0);
            let v = logits.len();
            let bias = [(7u32, -0.5f32), ((v - 1) as u32, 0.25)];
            let config = Config {
                presence_penalty: 0.5,
                ..Config::default()
            };
            let mut ov = Overrides::new();
            ov.build(&logits, &[3, 9, (n / 3) as u32], &bias, &config)
                .unwrap();
            let scale = Scale::new(0.0).with_temperature(t);

            let mut all = vec![Candidate::default(); v];
            let m = collect_all(&logits, &ov, &mut all);
            let keep = topp::apply(&mut all[..m], p, &scale);
            let want = ids(&all[..keep]);

            let mut scratch = vec![Candidate::default(); v];
            let head = top_p_from_head(&logits, &ov, &scale, p, &mut scratch)
                .map(|cut| survivors(cut, &scratch, &scale));
            assert_eq!(head.is_some(), by_head, "case {case}");
            if let Some(len) = head {
                assert_eq!(ids(&scratch[..len]), want, "case {case}");
            }
            let cut = top_p_from_total(&logits, &ov, &scale, p, &mut scratch).unwrap();
            let len = survivors(cut, &scratch, &scale);
            assert_eq!(ids(&scratch[..len]), want, "case {case}");
        }
        // Logits on the edges of the bins, an eighth of a nat apart, with
        // every p from 0 to 0.99 in small steps (the stage never runs with
        // p = 1).
        let logits: Vec<f32> = (0..4000).map(|i| -((i % 97) as f32) / 8.0).collect();
        let scale = Scale::new(0.0);
        let ov = Overrides::new();
        for step in 0..100 {
            let p = step as f32 / 100.0;
            let mut all = vec![Candidate::default(); logits.len()];
            let m = collect_all(&logits, &ov, &mut all);
            let keep = topp::apply(&mut all[..m], p, &scale);
            let mut scratch = vec![Candidate::default(); logits.len()];
            let cut = top_p_from_total(&logits, &ov, &scale, p, &mut scratch).unwrap();
            let len = survivors(cut, &scratch, &scale);
            assert_eq!(ids(&scratch[..len]), ids(&all[..keep]), "p {p}");
        }
        // With the top logit +inf nothing is decided here.
        let logits = [f32::INFINITY, 0.0, f32::INFINITY];
        let mut scratch = [Candidate::default(); 3];
        let scale = Scale::new(f32::INFINITY);
        assert_eq!(
            top_p_from_total(&logits, &Overrides::new(), &scale, 0.5, &mut scratch),
            None
        );
    }

    #[test]
    fn binned_totals_match_the_reference_on_random_logits() {
        let mut unit = units(77);
        for case in 0..300 {
            let v = 1 + (unit() * 3000.0) as usize;
            let spread = 1.0 + unit() * 40.0;
            let mut logits: Vec<f32> = (0..v).map(|_| (unit() - 1.0) * spread).collect();
            // Some exact duplicates and some tokens that are no candidates.
            for i in (0..v).step_by(7) {
                logits[i] = logits[i / 2];
            }
            if case % 5 == 0 {
                logits[v / 2] = f32::NAN;
                logits[v - 1] = f32::NEG_INFINITY;
            }
            let t = 0.2 + unit() * 3.0;
            let p = unit();
            let ov = Overrides::new();
            let mut all = vec![Candidate::default(); v];
            let m = collect_all(&logits, &ov, &mut all);
            if m == 0 {
                continue;
            }
            let top = all[..m]
                .iter()
                .fold(f32::NEG_INFINITY, |a, c| a.max(c.logit));
            let scale = Scale::new(top).with_temperature(t);
            let keep = topp::apply(&mut all[..m], p, &scale);
            let mut want: Vec<u32> = all[..keep].iter().map(|c| c.id).collect();
            want.sort_unstable();
            let mut scratch = vec![Candidate::default(); v];
            let cut = top_p_from_total(&logits, &ov, &scale, p, &mut scratch).unwrap();
            let len = survivors(cut, &scratch, &scale);
            let mut got: Vec<u32> = scratch[..len].iter().map(|c| c.id).collect();
            got.sort_unstable();
            assert_eq!(got, want, "case {case}: v {v} t {t} p {p}");
        }
    }

    /// Every order of the stages: each subset of top-k, top-p and min-p
    /// with temperature, in every arrangement (49 in all).
    fn every_order() -> Vec<crate::Order> {
        fn arrange(v: &mut Vec<Stage>, from: usize, out: &mut Vec<crate::Order>) {
            if from == v.len() {
                out.push(crate::Order::new(v).unwrap());
            }
            for i in from..v.len() {
                v.swap(from, i);
                arrange(v, from + 1, out);
                v.swap(from, i);
            }
        }
        let mut out = Vec::new();
        for subset in 0..8u32 {
            let mut stages = vec![Stage::Temperature];
            for (bit, stage) in [Stage::TopK, Stage::TopP, Stage::MinP]
                .into_iter()
                .enumerate()
            {
                if subset >> bit & 1 == 1 {
                    stages.push(stage);
                }
            }
            arrange(&mut stages, 0, &mut out);
        }
        out
    }

    /// What a run of the chain and its draw show, floats as bits: the
    /// survivors' ids after each stage the run observed, the choice, the
    /// report's alternatives, entropy and counts.
    type Seen = (
        Vec<(usize, Vec<u32>)>,
        (u32, u32),
        Vec<(u32, u32)>,
        u32,
        Option<crate::Survivors>,
    );

    /// Runs the chain on `path` and draws with `u`, as the sampler does;
    /// on the fast path, also checks any total the outcome carries
    /// against the weights of the held survivors and counts it in `reused`.
    fn run_and_draw(
        logits: &[f32],
        ov: &Overrides,
        config: &Config,
        path: Path,
        u: f64,
        report: Option<usize>,
        reused: &mut usize,
    ) -> Seen {
        let mut scratch = vec![Candidate { id: 3, logit: 1e30 }; logits.len() + 5];
        let mut stages = Vec::new();
        let mut observe = |view: StageView<'_>| {
            let mut ids: Vec<u32> = view.survivors.iter().map(|c| c.id).collect();
            ids.sort_unstable();
            stages.push((view.index, ids));
        };
        let mut cache = WeightCache::new();
        let mut out = run(
            logits,
            ov,
            config,
            Buffers {
                scratch: &mut scratch,
                weights: &mut cache,
            },
            path,
            report,
            Some(&mut observe),
        )
        .unwrap();
        if let Some(total) = out.mass {
            let held = &scratch[..out.held];
            assert_eq!(total, mass(held, &out.scale), "{config:?}");
            *reused += 1;
        }
        let mut alternatives = vec![crate::Alternative::default(); report.unwrap_or(0)];
        let mut written = crate::Report::new(&mut alternatives);
        let s = &mut scratch[..out.held];
        let choice = match finish(s, &mut out, &mut cache, u, report.map(|_| &mut written)) {
            Some(choice) => choice,
            None => {
                // Past a partial head: hold every token of nonzero weight.
                let scale = out.scale;
                out.held = dense::at_least(logits, ov, &scale, ZERO_WEIGHT_CUT, &mut scratch);
                (out.partial, out.mass, out.sorted) = (None, None, false);
                finish(&mut scratch[..out.held], &mut out, &mut cache, u, None).unwrap()
            }
        };
        let listed = written
            .written()
            .iter()
            .map(|a| (a.id, a.logprob.to_bits()))
            .collect();
        let counts = report.map(|_| written.survivors);
        let entropy = written.entropy.to_bits();
        (
            stages,
            (choice.id, choice.logprob.to_bits()),
            listed,
            entropy,
            counts,
        )
    }

    /// The final survivors (ids in order), their scale and the token a
    /// draw with `u` picks, from a run with neither report nor observer.
    fn final_only(
        logits: &[f32],
        ov: &Overrides,
        config: &Config,
        path: Path,
        u: f64,
    ) -> (Vec<u32>, (u32, u32), (u32, u32)) {
        let mut scratch = vec![Candidate { id: 3, logit: 1e30 }; logits.len() + 5];
        let mut cache = WeightCache::new();
        let buffers = Buffers {
            scratch: &mut scratch,
            weights: &mut cache,
        };
        let mut out = run(logits, ov, config, buffers, path, None, None).unwrap();
        let held = &mut scratch[..out.held];
        sort_by_rank(held);
        let ids = held.iter().map(|c| c.id).collect();
        let scale = (out.scale.m.to_bits(), out.scale.inv_t.to_bits());
        let choice = finish(held, &mut out, &mut cache, u, None).unwrap();
        (ids, scale, (choice.id, choice.logprob.to_bits()))
    }

    #[test]
    fn fused_top_k_and_min_p_keep_what_the_stages_keep_one_by_one() {
        // Top-k followed by min-p (top-p between them or not), done in one
        // step on the fast path, against the stages run one by one on
        // every candidate. The logits are drawn so that each way the fused
        // step can end comes up: settled by the tokens above min-p's cut
        // alone, settled with the bound on the rest of the best k, refused
        // because top-p cuts inside them, and given up because k or more
        // tokens reach the cut; with ties, overridden ids (the top one
        // among them), ids past the last whole chunk, and +inf.
        use crate::config::Order;
        let mut unit = units(77);
        let orders = [
            Order::LLAMA_CPP,
            Order::TALKBACK,
            Order::new(&[Stage::TopK, Stage::MinP, Stage::Temperature]).unwrap(),
            Order::new(&[Stage::TopK, Stage::MinP, Stage::TopP, Stage::Temperature]).unwrap(),
            Order::new(&[Stage::Temperature, Stage::TopK, Stage::TopP, Stage::MinP]).unwrap(),
        ];
        let before = dense::tests::FUSED.with(|c| c.get());
        for case in 0..2400 {
            // The last cases are all of the shape that leaves top-p in doubt,
            // some over more blocks than the best k has places, with the
            // blocks below the cut rising with the id, so that the first
            // met fall short and only the highest settle it.
            let doubt = case >= 1500;
            let v = if doubt {
                [4096, 9000, 20_000, 30_011][case % 4]
            } else {
                [300, 1000, 4096, 4111, 9000][case % 5]
            };
            let rising = doubt && case % 8 >= 4;
            let shape = if doubt { 6 } else { case / 5 % 7 };
            let spread = [1.0, 3.0, 8.0, 0.5][case / 30 % 4];
            let mut logits: Vec<f32> = (0..v)
                .map(|i| match shape {
                    // A few high logits over a wide bulk, as language models give.
                    0 => {
                        if i % 97 == 3 {
                            spread * unit()
                        } else {
                            -6.0 - 4.0 * unit()
                        }
                    }
                    // Steps of a quarter, so that ties are common.
                    1 => -(((unit() * 24.0) as i32) as f32) / 4.0 * spread,
                    // Flat: many tokens reach any cut.
                    2 => -0.1 * unit(),
                    // A clear top and a slope below it.
                    3 => -((i * 7919 % v) as f32) * 0.01 * spread,
                    4 => -spread * 10.0 * unit(),
                    5 => -spread * unit() * unit() * 6.0,
                    // One dominant token, a few just above min-p's cut at
                    // 0.05, more not far below it, and a bulk far down:
                    // the tokens above the cut leave top-p in doubt until
                    // the rest of the best k is counted.
                    _ => match (i % 401, i % 97) {
                        (0, _) if i == 401 => 0.0,
                        (5, _) if i < 4000 => -2.2 - 0.8 * unit() * spread,
                        (_, 7) if rising => -3.5 - 9.0 * unit() * unit(),
                        (_, 7) => -3.5 - 3.0 * unit(),
                        _ => -12.0 - 5.0 * unit(),
                    },
                })
                .collect();
            if case % 11 == 0 {
                logits[v - 1] = 2.0 + spread;
            }
            if case % 37 == 0 {
                logits[case % v] = f32::INFINITY;
            }
            if case % 13 == 0 {
                logits[(case * 31) % v] = f32::NAN;
            }
            let tail = (v - v % dense::CHUNK) as u32;
            let top = (0..v)
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            let recent = [top, 3, (v - 1) as u32, (case % v) as u32];
            let bias = [(tail.min(v as u32 - 1), 0.75f32), (100, f32::NEG_INFINITY)];
            let mut config = Config {
                temperature: [0.8, 1.0, 0.5, 1.7][case % 4],
                top_k: [40, 2, 3, 17, 64][case / 7 % 5],
                top_p: [0.95, 0.5, 1.0, 0.95, 0.99, 0.2][case / 3 % 6],
                min_p: [0.05, 0.001, 0.3, 0.05, 1.0, 1e-9][case / 2 % 6],
                repeat_penalty: [1.0, 1.3][case / 4 % 2],
                order: orders[case % orders.len()],
                ..Config::default()
            };
            if doubt {
                config.top_k = [40, 64][case % 2];
                config.top_p = [0.95, 0.9][case / 3 % 2];
                config.min_p = 0.05;
                config.order = orders[[0, 4][case / 2 % 2]];
            }
            let mut ov = Overrides::new();
            let recent = if case % 3 == 0 { &recent[..] } else { &[] };
            let bias = if case % 5 == 1 { &bias[..] } else { &[] };
            ov.build(&logits, recent, bias, &config).unwrap();
            let u = f64::from(unit());
            let fast = final_only(&logits, &ov, &config, Path::Fast, u);
            let slow = final_only(&logits, &ov, &config, Path::Reference, u);
            assert_eq!(
                fast, slow,
                "case {case}: v {v} shape {shape} {config:?} u {u}"
            );
        }
        let after = dense::tests::FUSED.with(|c| c.get());
        let ways: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        // The fifth way, the highest entries below the cut selected, is
        // rare on these logits; dense's own test of the bounds reaches it.
        assert!(
            ways.iter().take(4).all(|&n| n >= 20),
            "ways the fused step ended: {ways:?}"
        );
    }

    /// The float `n` places from `x` in the order of the floats (down when
    /// `n` is negative, no further than the infinities), with -0.0 and
    /// +0.0 as two places.
    fn float_step(x: f32, n: i64) -> f32 {
        let key = |x: f32| {
            let bits = x.to_bits();
            i64::from(if bits >> 31 == 1 {
                !bits
            } else {
                bits | 1 << 31
            })
        };
        let (lo, hi) = (key(f32::NEG_INFINITY), key(f32::INFINITY));
        let key = (key(x) + n).clamp(lo, hi) as u32;
        f32::from_bits(if key >> 31 == 1 {
            key & !(1 << 31)
        } else {
            !key
        })
    }

    /// The least float whose scaled difference to the top logit reaches `cut`.
    fn least_reaching(scale: Scale, cut: f32) -> f32 {
        // Bisect on the number of places above f32::MIN: reaching rises
        // with the logit.
        let (mut lo, mut hi) = (0i64, 0i64);
        while scale.d(float_step(f32::MIN, hi)) < cut {
            hi = hi * 2 + 1;
        }
        if hi == 0 {
            return f32::MIN;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if scale.d(float_step(f32::MIN, mid)) >= cut {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        float_step(f32::MIN, hi)
    }

    /// The least `p` whose top-p target over `total` exceeds `mass`.
    fn least_p_above(mass: u64, total: u64) -> f32 {
        let (mut lo, mut hi) = (0.0f32, 1.0f32);
        while float_step(lo, 1) < hi {
            let mid = (lo + hi) / 2.0;
            let mid = if mid > lo && mid < hi {
                mid
            } else {
                float_step(lo, 1)
            };
            if topp::target(mid, total) > mass {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    #[test]
    fn fused_top_k_and_min_p_agree_one_float_either_side_of_the_cut() {
        // Where the fused step is thinnest: tokens on the least float that
        // reaches min-p's cut and one or two floats either side of it, as
        // block maxima, inside blocks and among the last ids; top logits
        // of both zeros, huge and subnormal; temperatures from 1e-3 to
        // 1e6 before top-k; min-p at 1, just under 1 and at the least
        // subnormal; top-p at 0, 1e-7 and just under 1, and on either
        // side of the least p that keeps every token of the few, so that
        // the bounds on the rest of the best k decide. Overrides keep
        // each value but make the top's block and a tail id overridden,
        // or raise a tail id above the top and ban it, and ban a block
        // maximum.
        use crate::config::Order;
        let orders = [
            Order::LLAMA_CPP,
            Order::TALKBACK,
            Order::new(&[Stage::TopK, Stage::MinP, Stage::Temperature]).unwrap(),
            Order::new(&[Stage::Temperature, Stage::TopK, Stage::MinP, Stage::TopP]).unwrap(),
        ];
        let mut unit = units(5);
        let before = dense::tests::FUSED.with(|c| c.get());
        let mut case = 0usize;
        for m in [0.0f32, -0.0, 17.25, 1e30, -1e30, 1e-40] {
            for t in [1.0f32, 1e-3, 0.7, 1e3, 1e6] {
                for min_p in [1.0f32, 0.999_999, 0.05, 1e-45] {
                    for v in [17usize, 257, 4097, 20_011] {
                        // Shifted every 4 and 16 cases, so that each
                        // vocabulary meets each order.
                        let order = orders[(case + case / 4 + case / 16) % orders.len()];
                        let before_top_k = order.stages()[0] == Stage::Temperature;
                        let inv_t = if before_top_k { 1.0 / t } else { 1.0 };
                        let scale = Scale {
                            inv_t,
                            ..Scale::new(m)
                        };
                        let cut = minp::cut(min_p);
                        let l = least_reaching(scale, cut);
                        let edges = [l, float_step(l, -1), float_step(l, 1), float_step(l, -2)];
                        // The top among the last ids in a third of the
                        // cases; in another third, the last id is raised
                        // above the top and then banned.
                        let top = if case % 3 == 2 { v - 1 } else { v / 2 };
                        let last_bias = if case % 3 == 1 {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        };
                        // Few tokens reach the cut: the edges above it
                        // go to the first blocks and the last ids only.
                        // Below them, the block maxima rise with the id in
                        // half the cases, so that the entries met first in
                        // the pool are the lowest.
                        let rising = case / 3 % 2 == 1;
                        let edge = |i: usize, at: usize| match at {
                            0 | 1 => edges[i % 4],
                            _ if rising => {
                                let below = (v / 256 + 1).saturating_sub(at).max(1);
                                float_step(l, -1 - below as i64 * 600_000)
                            }
                            _ => edges[1 + i % 2 * 2],
                        };
                        let mut logits: Vec<f32> = (0..v)
                            .map(|i| match (i % 256, i % 61, i % 29) {
                                _ if i == top => m,
                                _ if i >= v - v % dense::CHUNK => edges[i % 4],
                                (b, _, _) if b == i / 256 * 37 % 256 => edge(i / 256, i / 256),
                                (_, 3, _) => edge(i / 61, 2),
                                (_, _, 11) => f32::NAN,
                                (_, _, 17) => f32::NEG_INFINITY,
                                // Just below the edges, or level with the
                                // lowest block maximum when they rise.
                                _ if rising => edge(0, 2),
                                _ => float_step(l, -1 - (unit() * 1.4e6) as i64),
                            })
                            .collect();
                        if last_bias < 0.0 {
                            logits[v - 1] = float_step(m, 3);
                        }
                        logits[top] = m;
                        let banned = (v / 256).saturating_sub(1) * 256;
                        let bias = [
                            (top as u32, 0.0f32),
                            ((v - 1) as u32, last_bias),
                            (banned as u32, f32::NEG_INFINITY),
                        ];
                        let mut ov = Overrides::new();
                        let config = Config {
                            temperature: t,
                            order,
                            ..Config::default()
                        };
                        ov.build(&logits, &[], &bias, &config).unwrap();

                        // The best k of the reference, for a top-p at the edge.
                        let mut all = vec![Candidate::default(); v];
                        let n = collect_all(&logits, &ov, &mut all);
                        all.truncate(n);
                        sort_by_rank(&mut all);
                        for (j, k) in [2u32, 3, 5, 17, 64].into_iter().enumerate() {
                            let best = &all[..all.len().min(k as usize)];
                            let w: Vec<u64> = best.iter().map(|c| scale.weight(c.logit)).collect();
                            let few = best.iter().take_while(|c| scale.d(c.logit) >= cut).count();
                            let above: u64 = w[..few.max(1) - 1].iter().sum();
                            let held: u64 = w[..few.max(1)].iter().sum();
                            let total: u64 = w.iter().sum();
                            let edge = least_p_above(above, total);
                            // Inside the window where the few alone fall short
                            // and the whole best k does not.
                            let inside = least_p_above(above + (total - held) / 2, total);
                            let top_ps = [
                                edge,
                                float_step(edge, -1),
                                inside,
                                0.0,
                                1e-7,
                                0.999_999_9,
                                inside,
                            ];
                            let config = Config {
                                temperature: t,
                                top_k: k,
                                top_p: top_ps[(case + j) % top_ps.len()],
                                min_p,
                                order,
                                ..Config::default()
                            };
                            let u = f64::from(unit());
                            let fast = final_only(&logits, &ov, &config, Path::Fast, u);
                            let slow = final_only(&logits, &ov, &config, Path::Reference, u);
                            assert_eq!(fast, slow, "case {case}: m {m} v {v} k {k} {config:?}");
                        }
                        case += 1;
                    }
                }
            }
        }
        let after = dense::tests::FUSED.with(|c| c.get());
        let ways: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert!(
            ways.iter().take(4).all(|&n| n >= 20),
            "ways the fused step ended: {ways:?}"
        );
    }

    #[test]
    fn fused_top_p_target_on_the_mass_above_the_last_of_the_few() {
        // Two tokens reach min-p's cut and the rest of the best k weighs
        // nothing, so every bound on the total is exact. Top-p's target is
        // then made exactly the top token's weight, the mass above the
        // last of the two, or one unit more: top-p then min-p keep the top
        // token alone in the first case and both in the second, and the
        // fused step must neither keep the second token on a tie nor drop
        // it past one.
        use crate::config::Order;
        let orders = [
            Order::LLAMA_CPP,
            Order::TALKBACK,
            Order::new(&[Stage::Temperature, Stage::TopK, Stage::TopP, Stage::MinP]).unwrap(),
        ];
        let v = 300;
        let mut hits = [0usize; 2];
        for step in 0..1500 {
            let x = -0.1 - step as f32 * 0.0018;
            let mut logits = vec![-40.0f32; v];
            logits[5] = 0.0;
            logits[200 + step % 100] = x;
            logits[17] = f32::NAN;
            let scale = Scale::new(0.0);
            let total = (1u64 << 30) + scale.weight(x);
            for (kept, want) in [(1usize, 1u64 << 30), (2, (1 << 30) + 1)] {
                let p = least_p_above(want - 1, total);
                if topp::target(p, total) != want {
                    continue;
                }
                hits[kept - 1] += 1;
                let config = Config {
                    temperature: 1.0,
                    top_k: [5, 40, 64][step % 3],
                    top_p: p,
                    min_p: 0.05,
                    order: orders[step % orders.len()],
                    ..Config::default()
                };
                let ov = Overrides::new();
                let fast = final_only(&logits, &ov, &config, Path::Fast, 0.5);
                let slow = final_only(&logits, &ov, &config, Path::Reference, 0.5);
                assert_eq!(slow.0.len(), kept, "x {x} p {p}");
                assert_eq!(fast, slow, "x {x} p {p} {config:?}");
            }
        }
        assert!(
            hits.iter().all(|&n| n >= 10),
            "targets hit exactly: {hits:?}"
        );
    }

    #[test]
    fn every_order_keeps_the_reference_survivors_after_each_stage() {
        // Top-p over every candidate in each of its ways (decided by the
        // head's bounds, a head too light or too long for the binned total,
        // a far tail whose sampled chunks weigh nothing while the others
        // weigh a little, ties on bin edges), in every order of the
        // stages, with settings under which a later stage cuts again or
        // not and rescales or not. The fast path must keep, stage by
        // stage, the survivors the reference keeps, and draw and report
        // the same; a total it carries to the draw must be the survivors'.
        let mut unit = units(31);
        let v = 20_011;
        let chunks = v / dense::CHUNK;
        let shapes: [&dyn Fn(usize, f32) -> f32; 5] = [
            &|i, u| {
                if i % 31 == 0 {
                    -3.0 - 6.0 * u
                } else {
                    -10.0 - 12.0 * u
                }
            },
            &|_, u| -10.5 - 2.0 * u,
            &|_, u| -9.9 * u,
            &|i, u| match (i / dense::CHUNK % (chunks / 64), i % 7) {
                (0, _) => -30.0,
                (_, 0) => -8.0 - 1.9 * u,
                _ => -22.0 + 4.0 * u,
            },
            &|i, _| -((i % 90) as f32) / 8.0,
        ];
        let below_one = 1.0 - f64::EPSILON / 2.0;
        let (mut reused, mut runs) = (0usize, 0usize);
        for (o, order) in every_order().into_iter().enumerate() {
            for (k, shape) in shapes.iter().enumerate() {
                let case = o * shapes.len() + k;
                let mut logits: Vec<f32> = (0..v).map(|i| shape(i, unit())).collect();
                logits[case % v] = 0.0;
                let tail = (v - v % dense::CHUNK) as u32;
                let recent = [(case % v) as u32, 77, tail];
                let bias = [(tail + 1, 1.5f32), (5, f32::NEG_INFINITY), (93, 0.25)];
                let r = unit();
                let config = Config {
                    temperature: [1.0, 0.7, 1.0, 1.6, 0.0][case % 5],
                    top_k: [0, 0, 40, v as u32][case / 5 % 4],
                    top_p: [0.95, 0.5, 0.999, r][case / 3 % 4],
                    min_p: [0.0, 0.05, 1e-9][case / 2 % 3],
                    repeat_penalty: 1.3,
                    presence_penalty: 0.25,
                    order,
                    ..Config::default()
                };
                let mut ov = Overrides::new();
                ov.build(&logits, &recent, &bias, &config).unwrap();
                let u = [0.0, below_one, 0.5, f64::from(unit())][case / 7 % 4];
                let report = [None, Some(0), Some(6)][case % 3];
                let fast = run_and_draw(&logits, &ov, &config, Path::Fast, u, report, &mut reused);
                let slow = run_and_draw(&logits, &ov, &config, Path::Reference, u, report, &mut 0);
                for (index, ids) in &fast.0 {
                    let want = slow.0.iter().find(|(i, _)| i == index).map(|(_, ids)| ids);
                    assert_eq!(Some(ids), want, "case {case}: stage {index} of {config:?}");
                }
                assert_eq!(
                    (fast.1, fast.2, fast.3, fast.4),
                    (slow.1, slow.2, slow.3, slow.4),
                    "case {case}: {config:?} u {u} report {report:?}"
                );
                runs += 1;
            }
        }
        assert!(
            runs == 245 && reused > 10,
            "{runs} runs, {reused} totals reused"
        );
    }
}
