//! The sampler: validated settings, a seeded generator and a caller-owned scratch buffer.
//!
//! Input: one [`Input`] per step. Output: one [`Choice`] per step, and on
//! request a [`Report`] with alternatives, entropy and survivor counts.
//! Invariants: each successful [`Sampler::sample`] makes exactly one
//! generator draw (greedy included) and advances [`Sampler::step`] by one; a
//! call that fails draws nothing and changes nothing.

use core::fmt;

use crate::chain::{self, Path, WeightCache, ZERO_WEIGHT_CUT};
use crate::dense;
use crate::penalty::{Overrides, WindowCounts};
use crate::{Config, Error, Rng};

/// One element of the caller's scratch buffer: a token id and its logit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Candidate {
    /// Token id.
    pub id: u32,
    /// Effective logit (after penalties and bias).
    pub logit: f32,
}

/// The data of one sampling step.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// One logit per token id; the length is the vocabulary size.
    pub logits: &'a [f32],
    /// Penalty window; at most [`MAX_RECENT`](crate::MAX_RECENT) ids.
    ///
    /// Only how often each id occurs counts, so the order changes no
    /// result. Oldest first, as a window over the generated tokens is
    /// naturally kept, is the fast order: when penalties are on and a
    /// call's window is the last call's, or that one moved on or grown by
    /// one token (at most 64 ids), the sampler updates the counts it kept
    /// instead of counting again.
    pub recent: &'a [u32],
    /// Logit bias `(id, value)`, added after penalties and before temperature;
    /// at most [`MAX_BIAS`](crate::MAX_BIAS) entries.
    pub bias: &'a [(u32, f32)],
}

impl<'a> Input<'a> {
    /// Logits alone, with no penalty window and no bias.
    pub const fn new(logits: &'a [f32]) -> Self {
        Input {
            logits,
            recent: &[],
            bias: &[],
        }
    }
}

/// The token drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Token id.
    pub id: u32,
    /// Natural log of its probability under the final distribution.
    pub logprob: f32,
}

/// One of the most probable tokens of the final distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Alternative {
    /// Token id.
    pub id: u32,
    /// Natural log of its probability under the final distribution, from
    /// its unrounded weight (`d - ln(W / 2^30)`): a token whose weight
    /// rounds to 0, and which is never drawn, still shows how unlikely it
    /// is rather than -inf. It is -inf only where `d` is: below a +inf top
    /// logit, or where `(x - m) * (1/t)`, or `x - m` alone, goes beyond the
    /// f32 range.
    pub logprob: f32,
}

/// How many tokens were left after each stage.
///
/// A stage that is off removes nothing; a stage absent from the order counts
/// as having run last, so its field equals `final_count`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Survivors {
    /// Vocabulary size (length of the logits).
    pub vocab: usize,
    /// Count after top-k.
    pub after_top_k: usize,
    /// Count after top-p.
    pub after_top_p: usize,
    /// Count after min-p.
    pub after_min_p: usize,
    /// Count in the final distribution.
    pub final_count: usize,
}

/// Per-step diagnostics, filled by [`Sampler::sample`] when given.
///
/// Only a call that returns a token fills it: after a call that fails, it
/// may still hold an earlier step's figures, so read it only on success.
#[derive(Debug)]
pub struct Report<'b> {
    /// Caller's buffer for the most probable tokens; its length is the capacity.
    pub alternatives: &'b mut [Alternative],
    /// How many alternatives were written: `min(alternatives.len(), final_count)`.
    pub n_alternatives: usize,
    /// Entropy of the final distribution in nats.
    pub entropy: f32,
    /// Survivor counts per stage.
    pub survivors: Survivors,
}

impl<'b> Report<'b> {
    /// A report that can hold `alternatives.len()` alternatives.
    pub fn new(alternatives: &'b mut [Alternative]) -> Self {
        Report {
            alternatives,
            n_alternatives: 0,
            entropy: 0.0,
            survivors: Survivors::default(),
        }
    }

    /// The alternatives written by the last call, most probable first.
    pub fn written(&self) -> &[Alternative] {
        self.alternatives.get(..self.n_alternatives).unwrap_or(&[])
    }
}

/// A sampler: settings, generator state and a scratch buffer.
pub struct Sampler<'s> {
    config: Config,
    rng: Rng,
    step: u64,
    scratch: &'s mut [Candidate],
    /// The last penalty window's counts, which the next call usually reuses.
    counts: WindowCounts,
    /// This call's changed logits. Kept here rather than built on the
    /// stack each call: the list has room for every recent id and bias,
    /// and a fresh one would be cleared in full every time.
    overrides: Overrides,
    /// Weights of the final survivors, computed once per call.
    weights: WeightCache,
}

impl fmt::Debug for Sampler<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl<'s> Sampler<'s> {
    /// A sampler with `config`, seeded with `seed`, for vocabularies up to `scratch.len()`.
    ///
    /// # Errors
    ///
    /// - Any error of [`Config::validate`].
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::{Candidate, Config, Input, Sampler};
    /// let mut scratch = [Candidate::default(); 4];
    /// let mut sampler = Sampler::new(Config::greedy(), 1, &mut scratch).unwrap();
    /// let choice = sampler.sample(Input::new(&[0.1, 2.0, 0.3]), None).unwrap();
    /// assert_eq!(choice.id, 1);
    /// assert_eq!(sampler.step(), 1);
    /// ```
    pub fn new(config: Config, seed: u64, scratch: &'s mut [Candidate]) -> Result<Self, Error> {
        config.validate()?;
        Ok(Sampler {
            config,
            rng: Rng::new(seed),
            step: 0,
            scratch,
            counts: WindowCounts::new(),
            overrides: Overrides::new(),
            weights: WeightCache::new(),
        })
    }

    /// Starts afresh with `config` and `seed`, in place: the sampler then
    /// draws exactly as `Sampler::new(config, seed, ..)` with the same
    /// scratch buffer would.
    ///
    /// A sampler is about 11 KiB; this reuses one without passing a new
    /// one through the stack.
    ///
    /// # Errors
    ///
    /// - Any error of [`Config::validate`]; the sampler is then unchanged.
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::{Candidate, Config, Input, Sampler};
    /// let logits = [0.5f32, 1.5, 1.0];
    /// let mut scratch = [Candidate::default(); 3];
    /// let mut sampler = Sampler::new(Config::default(), 7, &mut scratch).unwrap();
    /// let first = sampler.sample(Input::new(&logits), None).unwrap();
    /// sampler.restart(Config::default(), 7).unwrap();
    /// assert_eq!(sampler.step(), 0);
    /// assert_eq!(sampler.sample(Input::new(&logits), None).unwrap(), first);
    /// ```
    pub fn restart(&mut self, config: Config, seed: u64) -> Result<(), Error> {
        config.validate()?;
        self.config = config;
        self.rng = Rng::new(seed);
        self.step = 0;
        Ok(())
    }

    /// Samples one token and, if `report` is given, fills it.
    ///
    /// # Errors
    ///
    /// - [`Error::EmptyLogits`] if `input.logits` is empty.
    /// - [`Error::VocabTooLarge`] if it is longer than the scratch buffer.
    /// - [`Error::PenaltyWindowTooLarge`] or [`Error::TooManyBiases`] if
    ///   `input.recent` or `input.bias` exceed their capacities.
    /// - [`Error::TokenOutOfRange`] if an id in them is not in the vocabulary.
    /// - [`Error::InvalidBias`] if a bias value is NaN.
    /// - [`Error::NoFiniteLogit`] if every effective logit is NaN or -inf.
    ///
    /// Of several faults, one is reported, checked in this order: empty
    /// logits; too many logits; too long a window; too many bias entries;
    /// the first window id out of range; then the bias entries in turn,
    /// each for its id, then its value; and last, no finite logit.
    ///
    /// # Panics
    ///
    /// Never.
    pub fn sample(
        &mut self,
        input: Input<'_>,
        report: Option<&mut Report<'_>>,
    ) -> Result<Choice, Error> {
        self.sample_inner(&input, None, report, Path::Fast)
    }

    /// Samples with a given uniform number instead of the generator's, for tests.
    #[cfg(test)]
    pub(crate) fn sample_with_unit(
        &mut self,
        input: Input<'_>,
        u: f64,
        report: Option<&mut Report<'_>>,
        path: Path,
    ) -> Result<Choice, Error> {
        self.sample_inner(&input, Some(u), report, path)
    }

    fn sample_inner(
        &mut self,
        input: &Input<'_>,
        forced: Option<f64>,
        report: Option<&mut Report<'_>>,
        path: Path,
    ) -> Result<Choice, Error> {
        chain::check_input(input, self.scratch.len())?;
        self.overrides.build_with(
            input.logits,
            input.recent,
            input.bias,
            &self.config,
            Some(&mut self.counts),
        )?;
        let ov = &self.overrides;

        if self.config.is_greedy() && report.is_none() && path == Path::Fast {
            // Every stage keeps the top token, so greedy without a report
            // needs only the top token.
            let n = dense::top_k(input.logits, ov, 1, self.scratch);
            let top = self
                .scratch
                .first()
                .filter(|_| n == 1)
                .ok_or(Error::NoFiniteLogit)?;
            let id = top.id;
            take_unit(&mut self.rng, &mut self.step, forced);
            return Ok(Choice { id, logprob: 0.0 });
        }

        let wanted = report.as_ref().map(|r| r.alternatives.len());
        let mut out = chain::run(
            input.logits,
            ov,
            &self.config,
            chain::Buffers {
                scratch: self.scratch,
                weights: &mut self.weights,
            },
            path,
            wanted,
            None,
        )?;
        let u = take_unit(&mut self.rng, &mut self.step, forced);
        let s = self.scratch.get_mut(..out.held).unwrap_or(&mut []);
        // Only a call without a report can hold a partial head, so the
        // report is never needed again below.
        if let Some(choice) = chain::finish(s, &mut out, &mut self.weights, u, report) {
            return Ok(choice);
        }
        // The draw fell past the held head of an untruncated distribution:
        // hold every token of nonzero weight and draw again with the same u.
        let scale = out.scale;
        out.held = dense::at_least(input.logits, ov, &scale, ZERO_WEIGHT_CUT, self.scratch);
        out.partial = None;
        out.mass = None;
        out.sorted = false;
        let s = self.scratch.get_mut(..out.held).unwrap_or(&mut []);
        chain::finish(s, &mut out, &mut self.weights, u, None).ok_or(Error::NoFiniteLogit)
    }

    /// The settings this sampler was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How many draws have been made so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Largest vocabulary this sampler accepts.
    pub fn capacity(&self) -> usize {
        chain::capacity(self.scratch.len())
    }
}

/// Takes a step's uniform number: exactly one generator draw.
fn take_unit(rng: &mut Rng, step: &mut u64, forced: Option<f64>) -> f64 {
    let u = rng.next_unit();
    *step += 1;
    forced.unwrap_or(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{shape, Order, ShapeReport, ShapeRow, Stage};

    extern crate std;
    use std::vec;
    use std::vec::Vec;

    const BELOW_ONE: f64 = 1.0 - f64::EPSILON / 2.0;

    fn plain(temperature: f32) -> Config {
        Config {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Config::default()
        }
    }

    /// Final survivor ids (sorted) and their probabilities, via a full report.
    fn final_dist(logits: &[f32], config: Config) -> Vec<(u32, f32)> {
        let mut scratch = vec![Candidate::default(); logits.len()];
        let mut alts = vec![Alternative::default(); logits.len()];
        let mut report = Report::new(&mut alts);
        let mut s = Sampler::new(config, 0, &mut scratch).unwrap();
        s.sample(Input::new(logits), Some(&mut report)).unwrap();
        report
            .written()
            .iter()
            .map(|a| (a.id, libm::expf(a.logprob)))
            .collect()
    }

    fn ids(dist: &[(u32, f32)]) -> Vec<u32> {
        let mut v: Vec<u32> = dist.iter().map(|d| d.0).collect();
        v.sort_unstable();
        v
    }

    fn pick(logits: &[f32], config: Config, u: f64) -> Result<Choice, Error> {
        let mut scratch = vec![Candidate::default(); logits.len()];
        let mut s = Sampler::new(config, 0, &mut scratch)?;
        s.sample_with_unit(Input::new(logits), u, None, Path::Fast)
    }

    #[test]
    fn worked_example_probabilities_and_entropy() {
        let logits = [3.4f32, 2.8, 2.1, 1.6, 1.0, 0.4, -0.2, -0.8, -1.3, -2.0];
        let mut scratch = [Candidate::default(); 10];
        let mut alts = [Alternative::default(); 10];
        let mut report = Report::new(&mut alts);
        let mut s = Sampler::new(plain(1.0), 3, &mut scratch).unwrap();
        s.sample(Input::new(&logits), Some(&mut report)).unwrap();
        let want = [45.8, 25.1, 12.5, 7.6, 4.2, 2.3, 1.3, 0.7, 0.4, 0.2];
        assert_eq!(report.n_alternatives, 10);
        for (i, (a, w)) in report.written().iter().zip(want).enumerate() {
            assert_eq!(a.id, i as u32);
            let pct = libm::expf(a.logprob) * 100.0;
            assert!((pct - w).abs() < 0.051, "token {i}: {pct} vs {w}");
        }
        assert!((report.entropy - 1.50).abs() < 0.005, "{}", report.entropy);
        assert_eq!(report.survivors.final_count, 10);
    }

    #[test]
    fn worked_example_top_k_and_top_p() {
        let logits = [2.5f32, 1.8, 1.2, 0.9, 0.3, -0.2, -1.1];
        let k3 = Config {
            top_k: 3,
            ..plain(1.0)
        };
        assert_eq!(ids(&final_dist(&logits, k3)), [0, 1, 2]);
        // The top two carry only 0.688, so top-p 0.7 needs a third.
        let p7 = Config {
            top_p: 0.7,
            ..plain(1.0)
        };
        let d = final_dist(&logits, p7);
        assert_eq!(ids(&d), [0, 1, 2]);
        let ln = |x: f32| libm::logf(x);
        let probs = [ln(0.3), ln(0.1), ln(0.1), ln(0.5)];
        let p8 = Config {
            top_p: 0.8,
            ..plain(1.0)
        };
        assert_eq!(ids(&final_dist(&probs, p8)), [0, 3]);
    }

    #[test]
    fn greedy_picks_top_lowest_id_and_still_draws_once() {
        let logits = [1.0f32, 5.0, 2.0, 5.0];
        let mut scratch = [Candidate::default(); 4];
        let mut s = Sampler::new(Config::greedy(), 9, &mut scratch).unwrap();
        let c = s.sample(Input::new(&logits), None).unwrap();
        assert_eq!(
            c,
            Choice {
                id: 1,
                logprob: 0.0
            }
        );
        assert_eq!(s.step(), 1);
        // The generator advanced exactly once: the next unit equals a fresh
        // generator's second.
        let mut fresh = Rng::new(9);
        fresh.next_unit();
        assert_eq!(s.rng.next_unit(), fresh.next_unit());
    }

    #[test]
    fn untruncated_draws_past_the_head_match_reference() {
        // Temperature only: the fast path holds the head (d >= -10) and must
        // fall back to every weighted token when the draw lands in the tail.
        let logits: Vec<f32> = (0..3000).map(|i| -((i % 1500) as f32) * 0.01).collect();
        let order = Order::new(&[Stage::Temperature]).unwrap();
        let config = Config {
            order,
            ..plain(1.0)
        };
        for u in [0.0, 0.3, 0.999, 0.999_999, BELOW_ONE] {
            let pick = |path| {
                let mut scratch = vec![Candidate::default(); logits.len()];
                let mut s = Sampler::new(config, 0, &mut scratch).unwrap();
                let c = s
                    .sample_with_unit(Input::new(&logits), u, None, path)
                    .unwrap();
                (c.id, c.logprob.to_bits())
            };
            assert_eq!(pick(Path::Fast), pick(Path::Reference), "u {u}");
        }
        // The last draw lands on the lowest-ranked token of nonzero weight.
        let mut scratch = vec![Candidate::default(); logits.len()];
        let mut s = Sampler::new(config, 0, &mut scratch).unwrap();
        let c = s
            .sample_with_unit(Input::new(&logits), BELOW_ONE, None, Path::Fast)
            .unwrap();
        assert_eq!(c.id, 2999);
    }

    #[test]
    fn infinite_bias_forces_only_a_finite_logit() {
        // +inf forces token 1 over a larger logit; on the -inf logit of
        // token 0 it makes NaN, which is never drawn.
        let logits = [f32::NEG_INFINITY, 0.0, 5.0];
        let bias = [(0, f32::INFINITY), (1, f32::INFINITY)];
        let input = Input {
            logits: &logits,
            recent: &[],
            bias: &bias,
        };
        for u in [0.0, 0.5, BELOW_ONE] {
            let (r, alts, _, sv) = outcome(input, plain(1.0), u, 5, Path::Fast);
            assert_eq!(r.map(|c| c.id), Ok(1), "u {u}");
            assert_eq!(sv.final_count, 2);
            assert_eq!(alts.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2]);
        }
        let only = [(0, f32::INFINITY)];
        let input = Input {
            logits: &logits[..1],
            recent: &[],
            bias: &only,
        };
        let (r, ..) = outcome(input, plain(1.0), 0.5, 5, Path::Fast);
        assert_eq!(r, Err(Error::NoFiniteLogit));
    }

    #[test]
    fn lone_top_token_reports_positive_zero() {
        // The top logit is -0.0 and ties with +0.0; either way the logprob
        // of a one-token distribution is +0.0, with or without a report.
        let logits = [-0.0f32, 0.0, -1.0];
        let mut alts = [Alternative::default(); 2];
        for config in [
            Config::greedy(),
            Config {
                top_k: 1,
                ..plain(1.0)
            },
        ] {
            let mut scratch = [Candidate::default(); 3];
            let mut s = Sampler::new(config, 0, &mut scratch).unwrap();
            let mut report = Report::new(&mut alts);
            let with = s.sample(Input::new(&logits), Some(&mut report)).unwrap();
            let without = s.sample(Input::new(&logits), None).unwrap();
            assert_eq!((with.id, with.logprob.to_bits()), (0, 0));
            assert_eq!((without.id, without.logprob.to_bits()), (0, 0));
            assert_eq!(report.entropy.to_bits(), 0);
        }
    }

    #[test]
    fn one_draw_per_call_keeps_steps_aligned() {
        let logits = [0.5f32, 0.4, 0.3, 0.2];
        let mut a_scratch = [Candidate::default(); 4];
        let mut b_scratch = [Candidate::default(); 4];
        let mut a = Sampler::new(plain(1.0), 5, &mut a_scratch).unwrap();
        let mut b = Sampler::new(plain(1.0), 5, &mut b_scratch).unwrap();
        let mut g = Config::greedy();
        g.order = Order::LLAMA_CPP;
        let mut greedy_scratch = [Candidate::default(); 4];
        let mut greedy = Sampler::new(g, 5, &mut greedy_scratch).unwrap();
        for _ in 0..3 {
            greedy.sample(Input::new(&logits), None).unwrap();
            a.sample(Input::new(&logits), None).unwrap();
        }
        assert_eq!(greedy.rng, a.rng);
        for _ in 0..3 {
            b.sample(Input::new(&logits), None).unwrap();
        }
        assert_eq!(a.rng, b.rng);
        assert_eq!(
            a.sample(Input::new(&logits), None),
            b.sample(Input::new(&logits), None)
        );
    }

    #[test]
    fn failed_call_draws_nothing() {
        let mut scratch = [Candidate::default(); 2];
        let mut s = Sampler::new(plain(1.0), 1, &mut scratch).unwrap();
        let r = s.sample(Input::new(&[f32::NAN, f32::NEG_INFINITY]), None);
        assert_eq!(r, Err(Error::NoFiniteLogit));
        assert_eq!(s.step(), 0);
        assert_eq!(s.rng, Rng::new(1));
    }

    #[test]
    fn unit_at_zero_and_just_below_one() {
        let logits = [0.0f32, 1.0, -1.0, 0.5];
        assert_eq!(pick(&logits, plain(1.0), 0.0).unwrap().id, 1);
        assert_eq!(pick(&logits, plain(1.0), BELOW_ONE).unwrap().id, 2);
        let k2 = Config {
            top_k: 2,
            ..plain(1.0)
        };
        assert_eq!(pick(&logits, k2, BELOW_ONE).unwrap().id, 3);
        // Ties: equal logits, equal mass, the lower id comes first in the scan.
        let tied = [2.0f32, 2.0, 2.0];
        assert_eq!(pick(&tied, plain(1.0), 0.0).unwrap().id, 0);
        assert_eq!(pick(&tied, plain(1.0), 0.34).unwrap().id, 1);
        assert_eq!(pick(&tied, plain(1.0), BELOW_ONE).unwrap().id, 2);
    }

    #[test]
    fn nan_is_never_drawn_and_infinities_share_mass() {
        let logits = [f32::NAN, 0.0, f32::NAN];
        for u in [0.0, 0.5, BELOW_ONE] {
            assert_eq!(pick(&logits, plain(1.0), u).unwrap().id, 1);
        }
        let logits = [1.0f32, f32::INFINITY, f32::NAN, f32::INFINITY, 1e30];
        let d = final_dist(&logits, plain(0.7));
        assert_eq!(d.first(), Some(&(1, 0.5)));
        assert_eq!(d.get(1), Some(&(3, 0.5)));
        assert!(d.iter().skip(2).all(|&(_, p)| p == 0.0));
        assert_eq!(pick(&logits, plain(1.0), 0.49).unwrap().id, 1);
        assert_eq!(pick(&logits, plain(1.0), 0.5).unwrap().id, 3);
        assert_eq!(pick(&logits, plain(1.0), BELOW_ONE).unwrap().id, 3);
        let c = pick(&logits, plain(1.0), 0.7).unwrap();
        assert!((c.logprob - libm::logf(0.5)).abs() < 1e-6);
    }

    #[test]
    fn all_masked_is_an_error() {
        let cases: [&[f32]; 3] = [
            &[f32::NAN],
            &[f32::NEG_INFINITY, f32::NAN],
            &[f32::NEG_INFINITY; 3],
        ];
        for logits in cases {
            assert_eq!(pick(logits, plain(1.0), 0.0), Err(Error::NoFiniteLogit));
            assert_eq!(
                pick(logits, Config::greedy(), 0.0),
                Err(Error::NoFiniteLogit)
            );
        }
    }

    #[test]
    fn large_logits_and_tiny_temperature_stay_finite() {
        let logits = [1000.0f32, 999.0];
        let c = pick(&logits, plain(1.0), BELOW_ONE).unwrap();
        assert_eq!(c.id, 1);
        assert!((c.logprob - (-1.313_261_7)).abs() < 1e-5, "{}", c.logprob);
        let d = final_dist(&logits, plain(0.01));
        assert_eq!(d.first().map(|x| x.0), Some(0));
        assert!(d.iter().all(|x| x.1.is_finite()));
        let c = pick(&logits, plain(0.01), BELOW_ONE).unwrap();
        assert_eq!(
            c,
            Choice {
                id: 0,
                logprob: 0.0
            }
        );
        let extreme = [f32::MAX, -f32::MAX, 0.0];
        let c = pick(&extreme, plain(1e-30), BELOW_ONE).unwrap();
        assert_eq!(c.id, 0);
        assert!(c.logprob.is_finite());
    }

    #[test]
    fn top_k_exactly_k_with_ties_by_id() {
        let logits = [1.0f32, 3.0, 3.0, 2.0, 3.0, 3.0];
        let k3 = Config {
            top_k: 3,
            ..plain(1.0)
        };
        assert_eq!(ids(&final_dist(&logits, k3)), [1, 2, 4]);
        let off = Config {
            top_k: 6,
            ..plain(1.0)
        };
        assert_eq!(final_dist(&logits, off).len(), 6);
    }

    #[test]
    fn top_p_edges() {
        let logits = [0.1f32, 0.3, 0.2, 0.3];
        let p0 = Config {
            top_p: 0.0,
            ..plain(1.0)
        };
        assert_eq!(ids(&final_dist(&logits, p0)), [1]);
        let p1 = Config {
            top_p: 1.0,
            ..plain(1.0)
        };
        assert_eq!(final_dist(&logits, p1).len(), 4);
    }

    #[test]
    fn min_p_keeps_ratio() {
        let ln = |x: f32| libm::logf(x);
        let logits = [ln(0.4), ln(0.2), ln(0.1), ln(0.3)];
        let m = Config {
            min_p: 0.5,
            ..plain(1.0)
        };
        assert_eq!(ids(&final_dist(&logits, m)), [0, 1, 3]);
    }

    #[test]
    fn orders_differ_where_temperature_matters() {
        // At temperature 1 the top two hold exactly 0.8; at 0.25 the top one
        // alone holds 0.866.
        let ln = |x: f32| libm::logf(x);
        let logits = [ln(0.5), ln(0.3), ln(0.2)];
        let base = Config {
            temperature: 0.25,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
            ..plain(1.0)
        };
        let talkback = final_dist(&logits, base);
        let llama = final_dist(
            &logits,
            Config {
                order: Order::LLAMA_CPP,
                ..base
            },
        );
        assert_eq!(ids(&talkback), [0]);
        assert_eq!(ids(&llama), [0, 1]);
        // Final probabilities use the temperature in both orders.
        let p0 = llama.first().map(|x| x.1).unwrap();
        let want = 0.5f32.powi(4) / (0.5f32.powi(4) + 0.3f32.powi(4));
        assert!((p0 - want).abs() < 1e-5, "{p0} vs {want}");
        // Min-p 0.5: 0.3 / 0.5 passes at temperature 1, (0.3 / 0.5)^4 does not.
        let m = Config {
            top_p: 1.0,
            min_p: 0.5,
            ..base
        };
        assert_eq!(ids(&final_dist(&logits, m)), [0]);
        assert_eq!(
            ids(&final_dist(
                &logits,
                Config {
                    order: Order::LLAMA_CPP,
                    ..m
                }
            )),
            [0, 1]
        );
    }

    #[test]
    fn penalties_and_bias_change_the_choice() {
        let logits = [2.0f32, 1.9, -1.0];
        let mut scratch = [Candidate::default(); 3];
        let c = Config {
            repeat_penalty: 1.5,
            ..Config::greedy()
        };
        let mut s = Sampler::new(c, 0, &mut scratch).unwrap();
        let input = Input {
            logits: &logits,
            recent: &[0],
            bias: &[],
        };
        assert_eq!(s.sample(input, None).unwrap().id, 1);
        let input = Input {
            logits: &logits,
            recent: &[],
            bias: &[(2, 10.0)],
        };
        assert_eq!(s.sample(input, None).unwrap().id, 2);
        let input = Input {
            logits: &logits,
            recent: &[],
            bias: &[(0, f32::NEG_INFINITY)],
        };
        assert_eq!(s.sample(input, None).unwrap().id, 1);
        let input = Input {
            logits: &logits,
            recent: &[],
            bias: &[(1, f32::INFINITY)],
        };
        assert_eq!(s.sample(input, None).unwrap().id, 1);
    }

    #[test]
    fn input_errors() {
        let mut scratch = [Candidate::default(); 3];
        let mut s = Sampler::new(Config::default(), 0, &mut scratch).unwrap();
        assert_eq!(s.sample(Input::new(&[]), None), Err(Error::EmptyLogits));
        assert_eq!(
            s.sample(Input::new(&[0.0; 4]), None),
            Err(Error::VocabTooLarge {
                len: 4,
                capacity: 3
            })
        );
        let input = Input {
            logits: &[0.0; 3],
            recent: &[3],
            bias: &[],
        };
        assert_eq!(
            s.sample(input, None),
            Err(Error::TokenOutOfRange { id: 3, vocab: 3 })
        );
        // Several faults: the order the docs give.
        let faults = |logits: &'static [f32], recent: &'static [u32], bias| Input {
            logits,
            recent,
            bias,
        };
        let cases: [(Input<'_>, Error); 4] = [
            (
                faults(&[0.0; 4], &[9], &[(0, f32::NAN)]),
                Error::VocabTooLarge {
                    len: 4,
                    capacity: 3,
                },
            ),
            (
                faults(&[0.0; 3], &[1, 7, 5], &[(0, f32::NAN)]),
                Error::TokenOutOfRange { id: 7, vocab: 3 },
            ),
            (
                faults(&[0.0; 3], &[1], &[(2, f32::NAN), (8, 1.0)]),
                Error::InvalidBias { id: 2 },
            ),
            (
                faults(&[0.0; 3], &[1], &[(8, f32::NAN), (2, f32::NAN)]),
                Error::TokenOutOfRange { id: 8, vocab: 3 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(s.sample(input, None), Err(want));
        }
        let bad = Config {
            temperature: f32::NAN,
            ..Config::default()
        };
        let mut scratch = [Candidate::default(); 3];
        assert_eq!(
            Sampler::new(bad, 0, &mut scratch).err(),
            Some(Error::NonFiniteTemperature)
        );
        assert_eq!(s.step(), 0);
    }

    #[test]
    fn survivors_follow_each_stage() {
        let logits: Vec<f32> = (0..100).map(|i| -(i as f32) * 0.05).collect();
        let mut scratch = vec![Candidate::default(); 100];
        let mut alts = [Alternative::default(); 5];
        let mut report = Report::new(&mut alts);
        let c = Config {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.5,
            min_p: 0.5,
            ..plain(1.0)
        };
        let mut s = Sampler::new(c, 0, &mut scratch).unwrap();
        s.sample(Input::new(&logits), Some(&mut report)).unwrap();
        let sv = report.survivors;
        assert_eq!(sv.vocab, 100);
        assert_eq!(sv.after_top_k, 50);
        assert!(sv.after_top_p < 50 && sv.after_top_p > 1, "{sv:?}");
        // ln 0.5 / 0.05 = 13.86, so ids 0..=13 pass min-p.
        assert_eq!(sv.after_min_p, 14.min(sv.after_top_p));
        assert_eq!(sv.final_count, sv.after_min_p);
        assert_eq!(report.n_alternatives, 5);
        let ids: Vec<u32> = report.written().iter().map(|a| a.id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn absent_stage_reports_final_count() {
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let order = Order::new(&[Stage::TopK, Stage::Temperature]).unwrap();
        let c = Config {
            top_k: 2,
            top_p: 0.1,
            min_p: 0.9,
            order,
            ..plain(1.0)
        };
        let mut scratch = [Candidate::default(); 4];
        let mut alts = [Alternative::default(); 4];
        let mut report = Report::new(&mut alts);
        let mut s = Sampler::new(c, 0, &mut scratch).unwrap();
        s.sample(Input::new(&logits), Some(&mut report)).unwrap();
        let sv = report.survivors;
        assert_eq!(
            (
                sv.after_top_k,
                sv.after_top_p,
                sv.after_min_p,
                sv.final_count
            ),
            (2, 2, 2, 2)
        );
    }

    #[test]
    fn shape_table_matches_the_report() {
        let logits = [2.5f32, 1.8, 1.2, 0.9, 0.3, -0.2, -1.1];
        let c = Config {
            temperature: 1.0,
            top_k: 5,
            top_p: 0.75,
            min_p: 0.0,
            ..plain(1.0)
        };
        let mut scratch = [Candidate::default(); 7];
        let mut rows = [ShapeRow::default(); 7];
        let mut table = ShapeReport::new(&mut rows);
        shape(Input::new(&logits), &c, &mut scratch, &mut table).unwrap();
        assert_eq!(table.n_rows, 7);
        let sv = table.survivors;
        assert_eq!((sv.after_top_k, sv.after_top_p, sv.after_min_p), (5, 3, 3));
        let r = table.written();
        let z: f64 = logits.iter().map(|&x| libm::exp(f64::from(x))).sum();
        for row in r {
            let want = libm::exp(f64::from(row.logit)) / z;
            assert!((f64::from(row.prob) - want).abs() < 1e-6, "{row:?}");
        }
        // The top two carry 0.688 of the whole vocabulary.
        assert!((r[0].prob + r[1].prob - 0.688).abs() < 0.001);
        assert_eq!(r[0].after[0], Some(r[0].prob));
        assert!(r[4].after[1].is_some() && r[5].after[1].is_none());
        assert!(r[2].after[2].is_some() && r[3].after[2].is_none());
        let kept: f32 = r.iter().filter_map(|row| row.after[3]).sum();
        assert!((kept - 1.0).abs() < 1e-5);
        let d = final_dist(&logits, c);
        for (row, (id, p)) in r.iter().zip(d) {
            assert_eq!(row.id, id);
            assert!((row.after[3].unwrap() - p).abs() < 1e-6);
        }
    }

    /// A small deterministic generator for building test cases.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 11
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 29) as f32 / (1u64 << 24) as f32
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    fn logits_for(g: &mut Gen, v: usize) -> Vec<f32> {
        let shape = g.below(6);
        let mut out: Vec<f32> = (0..v)
            .map(|_| match shape {
                0 => g.unit() * 2.0 - 1.0,
                1 => (g.unit() * 40.0 - 20.0).round() / 2.0,
                2 => {
                    // Peaked: a wide bulk far below a few high logits.
                    let x = g.unit() * 6.0 - 3.0;
                    if g.below(200) == 0 {
                        15.0 + g.unit() * 5.0
                    } else {
                        x
                    }
                }
                3 => (g.unit() * 3.0).floor(),
                4 => g.unit() * 200.0 - 100.0,
                _ => 1000.0 - g.unit(),
            })
            .collect();
        let specials = g.below(4);
        for _ in 0..specials * (1 + v / 50) {
            let i = g.below(v);
            out[i] = g.pick(&[
                f32::NAN,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                f32::INFINITY,
            ]);
        }
        out
    }

    fn config_for(g: &mut Gen, v: usize) -> Config {
        use Stage::*;
        let orders = [
            Order::TALKBACK,
            Order::LLAMA_CPP,
            Order::new(&[Temperature]).unwrap(),
            Order::new(&[MinP, TopP, Temperature, TopK]).unwrap(),
            Order::new(&[TopP, TopK, Temperature]).unwrap(),
        ];
        Config {
            temperature: g.pick(&[0.0, 0.01, 0.5, 0.8, 1.0, 2.5]),
            top_k: g.pick(&[0, 1, 2, 3, 40, v as u32 - 1, v as u32, 100_000]),
            top_p: g.pick(&[0.0, 0.3, 0.9, 0.95, 0.999, 1.0]),
            min_p: g.pick(&[0.0, 0.0, 0.05, 0.5, 1.0, 1e-12]),
            repeat_penalty: g.pick(&[1.0, 1.0, 1.3]),
            presence_penalty: g.pick(&[0.0, 0.0, 0.5]),
            frequency_penalty: g.pick(&[0.0, 0.0, -0.25]),
            order: g.pick(&orders),
        }
    }

    /// The choice, the alternatives, the entropy and the survivor counts.
    type Observed = (Result<Choice, Error>, Vec<Alternative>, f32, Survivors);

    /// [`Observed`] with every float as its bits.
    type ObservedBits = (Result<(u32, u32), Error>, Vec<(u32, u32)>, u32, Survivors);

    fn outcome(input: Input<'_>, config: Config, u: f64, alts: usize, path: Path) -> Observed {
        outcome_in(input, config, u, alts, input.logits.len() + 3, path)
    }

    /// [`outcome`] with a scratch buffer of `len` elements.
    fn outcome_in(
        input: Input<'_>,
        config: Config,
        u: f64,
        alts: usize,
        len: usize,
        path: Path,
    ) -> Observed {
        // Leftovers of an earlier call must never leak into a result.
        let stale = Candidate { id: 1, logit: 1e30 };
        let mut scratch = vec![stale; len];
        let mut buf = vec![Alternative::default(); if alts == usize::MAX { 0 } else { alts }];
        let mut report = Report::new(&mut buf);
        let mut s = Sampler::new(config, 0, &mut scratch).unwrap();
        let with = if alts == usize::MAX {
            None
        } else {
            Some(&mut report)
        };
        let r = s.sample_with_unit(input, u, with, path);
        let (n, e, sv) = (report.n_alternatives, report.entropy, report.survivors);
        (r, buf[..n].to_vec(), e, sv)
    }

    /// The result of [`outcome`] as bits, so that equality is bit for bit.
    fn bits(o: &Observed) -> ObservedBits {
        let choice = o.0.map(|c| (c.id, c.logprob.to_bits()));
        let alts = o.1.iter().map(|a| (a.id, a.logprob.to_bits())).collect();
        (choice, alts, o.2.to_bits(), o.3)
    }

    #[test]
    fn fast_path_matches_reference_bit_for_bit() {
        let mut g = Gen(2024);
        for case in 0..3000 {
            let v = g.pick(&[1, 2, 5, 15, 16, 17, 64, 100, 1000, 4097]);
            let logits = logits_for(&mut g, v);
            let config = config_for(&mut g, v);
            let recent: Vec<u32> = (0..g.below(8)).map(|_| g.below(v) as u32).collect();
            let bias: Vec<(u32, f32)> = (0..g.below(3))
                .map(|_| {
                    (
                        g.below(v) as u32,
                        g.pick(&[-1.0, 2.0, f32::NEG_INFINITY, 30.0]),
                    )
                })
                .collect();
            let input = Input {
                logits: &logits,
                recent: &recent,
                bias: &bias,
            };
            let r = f64::from(g.unit());
            let u = g.pick(&[0.0, BELOW_ONE, 0.5, r]);
            let alts = g.pick(&[0, 1, 5, 64, usize::MAX]);
            let fast = outcome(input, config, u, alts, Path::Fast);
            let slow = outcome(input, config, u, alts, Path::Reference);
            assert_eq!(
                bits(&fast),
                bits(&slow),
                "case {case}: v {v} {config:?} u {u}"
            );
            // Asking for a report must not change the token or its logprob.
            let bare = outcome(input, config, u, usize::MAX, Path::Fast);
            assert_eq!(
                bits(&bare).0,
                bits(&fast).0,
                "case {case}: the report changed the choice"
            );
        }
    }

    /// Turns a good input into one that [`Sampler::sample`] must refuse,
    /// or that leaves no candidate.
    type Fault = fn(&mut Vec<f32>, &mut Vec<u32>, &mut Vec<(u32, f32)>);

    const FAULTS: [Fault; 7] = [
        |logits, _, bias| bias.push((logits.len() as u32, 1.0)),
        |logits, recent, _| recent.insert(0, logits.len() as u32),
        |_, _, bias| bias.push((0, f32::NAN)),
        |_, recent, _| recent.resize(crate::MAX_RECENT + 1, 0),
        |_, _, bias| bias.resize(crate::MAX_BIAS + 1, (0, 1.0)),
        |logits, _, _| logits.fill(f32::NAN),
        |logits, _, _| logits.clear(),
    ];

    #[test]
    fn a_kept_sampler_matches_fresh_ones_across_windows_and_refused_calls() {
        // One sampler keeps its list of changed logits and its window
        // counts from call to call, while the window slides over the tokens
        // it drew, the vocabulary shrinks and grows, and some calls are
        // refused part way through building the list. Each call must give
        // what a fresh sampler gives on the reference path with the same
        // unit, a refused call must draw nothing, and shape() must refuse
        // the same calls and show the same survivors.
        let mut g = Gen(4242);
        for run in 0..60 {
            let cap = g.pick(&[17, 300, 4097]);
            let config = Config {
                repeat_penalty: g.pick(&[1.0, 1.3, 1.3]),
                presence_penalty: g.pick(&[0.0, 0.5]),
                frequency_penalty: g.pick(&[0.0, 0.25]),
                ..config_for(&mut g, cap)
            };
            let seed = g.next();
            let stale = Candidate { id: 1, logit: 1e30 };
            let mut scratch = vec![stale; cap];
            let mut sampler = Sampler::new(config, seed, &mut scratch).unwrap();
            let mut rng = Rng::new(seed);
            // A history long enough for every window width from the start,
            // in ids that most vocabularies below hold.
            let mut drawn: Vec<u32> = (0..g.pick(&[0, 70, 500]))
                .map(|_| g.below(cap / 2) as u32)
                .collect();
            let width = g.pick(&[3, 64, 65, 400]);
            let mut steps = 0;
            for call in 0..25 {
                let any = cap / 2 + g.below(cap / 2);
                let v = g.pick(&[cap, cap, cap, cap - 1, any]);
                let mut logits = logits_for(&mut g, v);
                let mut recent = drawn[drawn.len().saturating_sub(width)..].to_vec();
                let mut bias: Vec<(u32, f32)> = (0..g.below(4))
                    .map(|_| (g.below(v) as u32, g.pick(&[-1.0, 2.0, f32::NEG_INFINITY])))
                    .collect();
                if g.below(3) == 0 {
                    g.pick(&FAULTS)(&mut logits, &mut recent, &mut bias);
                }
                let input = Input {
                    logits: &logits,
                    recent: &recent,
                    bias: &bias,
                };
                let alts = g.pick(&[0, 3, usize::MAX]);
                let u = rng.clone().next_unit();
                let want = outcome_in(input, config, u, alts, cap, Path::Reference);

                let mut buf =
                    vec![Alternative::default(); if alts == usize::MAX { 0 } else { alts }];
                let mut report = Report::new(&mut buf);
                let with = if alts == usize::MAX {
                    None
                } else {
                    Some(&mut report)
                };
                let r = sampler.sample(input, with);
                let got = (
                    r,
                    report.written().to_vec(),
                    report.entropy,
                    report.survivors,
                );
                let at = std::format!("run {run} call {call}: v {v} {config:?}");
                assert_eq!(bits(&got), bits(&want), "{at}");
                if let Ok(c) = r {
                    rng.next_unit();
                    drawn.push(c.id);
                    steps += 1;
                }
                assert_eq!(sampler.rng, rng, "{at}");

                let mut rows = vec![ShapeRow::default(); 8];
                let mut table = ShapeReport::new(&mut rows);
                let mut shape_scratch = vec![stale; cap];
                let shaped = shape(input, &config, &mut shape_scratch, &mut table);
                assert_eq!(shaped.err(), r.err(), "{at}");
                if shaped.is_ok() && alts != usize::MAX {
                    assert_eq!(table.survivors, got.3, "{at}");
                    let ids: Vec<u32> = table.written().iter().map(|row| row.id).collect();
                    let alt_ids: Vec<u32> = got.1.iter().map(|a| a.id).collect();
                    assert_eq!(ids[..alt_ids.len()], alt_ids[..], "{at}");
                }
            }
            assert_eq!(sampler.step(), steps, "run {run}");
        }
    }

    /// Logits for top-p over every candidate: a top token at `base` and the
    /// rest in one of several shapes of scaled difference, times `t`, with
    /// NaN, infinities, zeros of both signs, subnormals and extremes strewn
    /// over some of them.
    fn top_p_logits(g: &mut Gen, v: usize, t: f32) -> Vec<f32> {
        let shape = g.below(10);
        let base = g.pick(&[0.0f32, 0.0, 17.5, -30.0, 1000.0, -1.0e6, 3.0e38]);
        let mut out: Vec<f32> = (0..v)
            .map(|_| {
                let u = g.unit();
                let d = match shape {
                    // A light head over a heavy tail of tiny weights.
                    0 | 1 if g.below(50) == 0 => -5.0 - 5.0 * u,
                    0 | 1 => -10.0 - 12.0 * u,
                    // Flat: everything within the head.
                    2 => -10.0 * u,
                    3 => -30.0 * u * u,
                    // On either side of the small-weight cut, and of the head's.
                    4 => -4.86 + (g.below(5) as f32 - 2.0) * 1e-6,
                    5 => -10.0 + (g.below(5) as f32 - 2.0) * 1e-6,
                    // Ties in whole nats.
                    6 => (u * -12.0).round(),
                    // Around the cut below which weights round to 0.
                    7 => -22.0 + u,
                    // Many small weights inside the head.
                    8 => -8.0 - 1.5 * u,
                    _ => -100.0 * u,
                };
                base + d * t
            })
            .collect();
        let top = g.below(v);
        out[top] = base;
        if g.below(3) == 0 {
            for _ in 0..1 + v / 40 {
                let i = g.below(v);
                out[i] = g.pick(&[
                    f32::NAN,
                    f32::NEG_INFINITY,
                    f32::INFINITY,
                    -0.0,
                    0.0,
                    1e-45,
                    -1e-45,
                    1e-39,
                    f32::MAX,
                    -f32::MAX,
                ]);
            }
        }
        out
    }

    #[test]
    fn fast_path_matches_reference_for_top_p_over_every_candidate() {
        // Top-p sees every candidate (top-k off or at least the vocabulary,
        // or absent), so it goes through the bounded pass over the dense
        // logits; scratch buffers run from the vocabulary's length to far
        // past it, and penalties and biases name ids in head chunks and in
        // the tail chunk.
        use Stage::*;
        let orders = [
            Order::TALKBACK,
            Order::LLAMA_CPP,
            Order::new(&[TopP, Temperature]).unwrap(),
            Order::new(&[Temperature, TopP, MinP]).unwrap(),
        ];
        let retries = chain::tests::EXACT_RETRIES.with(|c| c.get());
        let mut g = Gen(77);
        for case in 0..2500 {
            let v = g.pick(&[
                1, 2, 15, 16, 17, 31, 33, 255, 256, 1000, 1007, 4096, 4097, 16_383, 16_385, 20_000,
                49_152, 65_543,
            ]);
            let v = if case % 500 == 499 { 300_007 } else { v };
            let t = g.pick(&[
                1.0f32,
                1.0,
                0.8,
                1.5,
                0.01,
                1e-30,
                f32::MIN_POSITIVE,
                100.0,
                1e30,
                f32::MAX,
            ]);
            // Extreme temperatures take the logits as they are.
            let logits = top_p_logits(&mut g, v, if (1e-6..1e6).contains(&t) { t } else { 1.0 });
            let r = g.unit();
            let config = Config {
                temperature: t,
                top_k: g.pick(&[0, 0, 0, v as u32, v as u32 + 5]),
                top_p: g.pick(&[
                    0.0,
                    1e-45,
                    1e-7,
                    1e-5,
                    0.1,
                    0.5,
                    0.9,
                    0.95,
                    0.99,
                    0.999,
                    0.99999,
                    0.999_999_94,
                    1.0,
                    r,
                    r,
                    r,
                ]),
                min_p: g.pick(&[0.0, 0.0, 0.05, 1e-12]),
                repeat_penalty: g.pick(&[1.0, 1.0, 1.3]),
                presence_penalty: g.pick(&[0.0, 0.5]),
                frequency_penalty: 0.0,
                order: g.pick(&orders),
            };
            // Ids in the first chunk, the tail chunk and anywhere.
            let tail = (v - v % 16).min(v - 1) as u32;
            let mut ids = vec![0u32, (v - 1) as u32, tail];
            ids.extend((0..5).map(|_| g.below(v) as u32));
            let recent: Vec<u32> = (0..g.below(6)).map(|_| g.pick(&ids)).collect();
            let bias: Vec<(u32, f32)> = (0..g.below(4))
                .map(|_| {
                    let value = g.pick(&[-1.0, 2.0, 30.0, -0.0, 1e-40, f32::NEG_INFINITY]);
                    (g.pick(&ids), value)
                })
                .collect();
            let input = Input {
                logits: &logits,
                recent: &recent,
                bias: &bias,
            };
            let r = f64::from(g.unit());
            let u = g.pick(&[0.0, BELOW_ONE, 0.5, r]);
            let alts = g.pick(&[0, 3, 64, usize::MAX]);
            let len = v + g.pick(&[0, 1, 3, 16, 17, v, 20 * v]);
            let fast = outcome_in(input, config, u, alts, len, Path::Fast);
            let slow = outcome_in(input, config, u, alts, len, Path::Reference);
            assert_eq!(
                bits(&fast),
                bits(&slow),
                "case {case}: v {v} len {len} {config:?} u {u} alts {alts} recent {recent:?} \
                 bias {bias:?}"
            );
        }
        // Some cuts were left open by the bounds and settled exactly.
        let retried = chain::tests::EXACT_RETRIES.with(|c| c.get()) - retries;
        assert!(retried > 0, "no exact retry");

        // Heads of one token under, at and over the most collected.
        for head in [16_383, 16_384, 16_385] {
            let v = head + 40;
            let logits: Vec<f32> = (0..v)
                .map(|i| if i < head { -9.9 * g.unit() } else { -15.0 })
                .collect();
            for top_p in [0.5, 0.999] {
                let config = Config {
                    top_k: 0,
                    top_p,
                    min_p: 0.0,
                    ..Config::default()
                };
                let input = Input::new(&logits);
                let fast = outcome_in(input, config, 0.7, 5, v, Path::Fast);
                let slow = outcome_in(input, config, 0.7, 5, v, Path::Reference);
                assert_eq!(bits(&fast), bits(&slow), "head {head} p {top_p}");
            }
        }
    }
}
