//! Interleaved timing: every contender runs on the same step before the next step.
//!
//! Within one step the contenders take turns in an order shuffled afresh for
//! every step (by a fixed-seed generator), so that no contender always runs
//! first or always right after one that flushes the caches, and a burst of
//! machine noise lands on all of them alike. Every timed call starts with
//! the step's logits just read, as a decode step leaves them: it writes
//! them last. Without that, where a call found the logits would depend on
//! the contender before it (llama.cpp's candidate array, 12 bytes a token,
//! can push them out of a core's L2 cache) and on whether it came first.

use std::hint::black_box;
use std::time::Instant;

/// What one timed call returns.
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    /// The token chosen (or any value the compiler cannot skip computing).
    pub id: u32,
    /// Nanoseconds of the call spent building llama.cpp's candidate array, if any.
    pub build_ns: Option<f64>,
}

impl Pick {
    /// A pick with no separate build time.
    pub fn id(id: u32) -> Self {
        Pick { id, build_ns: None }
    }
}

/// One timed call on the logits of a step.
type Call<'a> = Box<dyn FnMut(&[f32]) -> Pick + 'a>;

/// One thing being timed.
pub struct Contender<'a> {
    /// Its label in the table.
    pub label: String,
    /// One call on the logits of a step.
    pub call: Call<'a>,
    /// Nanoseconds per call.
    pub times: Vec<f64>,
    /// Nanoseconds per call spent building the candidate array.
    pub builds: Vec<f64>,
    /// The token chosen at each step in the last round.
    pub picks: Vec<u32>,
}

impl<'a> Contender<'a> {
    /// A contender called as `call(logits)`.
    pub fn new(label: impl Into<String>, call: impl FnMut(&[f32]) -> Pick + 'a) -> Self {
        Contender {
            label: label.into(),
            call: Box::new(call),
            times: Vec::new(),
            builds: Vec::new(),
            picks: Vec::new(),
        }
    }

    /// Median nanoseconds per call.
    pub fn median(&self) -> f64 {
        median(&self.times)
    }
}

/// How a group of contenders is timed.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Timed rounds over every step, after one untimed round.
    pub rounds: usize,
    /// Whether each timed call starts with cold caches (see [`Chill`]).
    pub cold: bool,
}

/// Bytes streamed before a cold call: twice this machine kind's 32 MiB L3.
const CHILL_BYTES: usize = 64 << 20;

/// What a decode step does to the caches before the sampler runs, roughly:
/// it streams the model's weights through them (98 MB for SmolLM2 Q4_1),
/// which evicts the sampler's code and data, and writes the logits last.
struct Chill(Vec<u8>);

impl Chill {
    fn new() -> Self {
        // Ones, not zeros, so that every page is really mapped.
        Chill(vec![1; CHILL_BYTES])
    }

    /// Reads a byte of every cache line of the buffer, then every logit.
    fn apply(&self, logits: &[f32]) {
        let mut acc = 0u8;
        for line in self.0.chunks(64) {
            acc = acc.wrapping_add(line.first().copied().unwrap_or(0));
        }
        black_box(acc);
        touch(logits);
    }
}

/// Reads every logit, bringing them into the caches as the decode step
/// that wrote them would have left them.
fn touch(logits: &[f32]) {
    black_box(logits.iter().fold(0u32, |a, &x| a ^ x.to_bits()));
}

/// Runs one untimed round, then `timing.rounds` timed rounds over every step.
pub fn run(steps: &[Vec<f32>], timing: &Timing, contenders: &mut [Contender<'_>]) {
    let rounds = timing.rounds;
    let chill = timing.cold.then(Chill::new);
    let n = contenders.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..=rounds {
        let timed = round > 0;
        for (s, logits) in steps.iter().enumerate() {
            shuffle(&mut order, &mut state);
            for &i in &order {
                let Some(c) = contenders.get_mut(i) else {
                    continue;
                };
                match (timed, chill.as_ref()) {
                    (true, Some(chill)) => chill.apply(logits),
                    _ => touch(logits),
                }
                let t0 = Instant::now();
                let pick = (c.call)(black_box(logits));
                let ns = t0.elapsed().as_nanos() as f64;
                black_box(pick.id);
                if timed {
                    c.times.push(ns);
                    if let Some(b) = pick.build_ns {
                        c.builds.push(b);
                    }
                }
                if round == rounds {
                    if c.picks.len() <= s {
                        c.picks.resize(s + 1, 0);
                    }
                    if let Some(slot) = c.picks.get_mut(s) {
                        *slot = pick.id;
                    }
                }
            }
        }
    }
}

/// Fisher-Yates shuffle driven by a 64-bit LCG.
fn shuffle(order: &mut [usize], state: &mut u64) {
    for i in (1..order.len()).rev() {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((*state >> 33) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// The median of `xs` (mean of the middle two for an even count); NaN if empty.
pub fn median(xs: &[f64]) -> f64 {
    quantile(xs, 0.5)
}

/// The `q` quantile of `xs` by linear interpolation; NaN if empty.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let Some(last) = v.len().checked_sub(1) else {
        return f64::NAN;
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (Some(&a), Some(&b)) = (v.get(lo), v.get(hi)) else {
        return f64::NAN;
    };
    a + (b - a) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(quantile(&[0.0, 10.0], 0.9), 9.0);
    }

    #[test]
    fn every_contender_runs_every_step_every_round() {
        let steps = vec![vec![1.0f32], vec![2.0], vec![3.0]];
        let mut order = Vec::new();
        {
            let order = std::cell::RefCell::new(&mut order);
            let mut cs = vec![
                Contender::new("a", |l: &[f32]| {
                    order.borrow_mut().push(('a', l[0]));
                    Pick::id(l[0] as u32)
                }),
                Contender::new("b", |l: &[f32]| {
                    order.borrow_mut().push(('b', l[0]));
                    Pick {
                        id: 10 + l[0] as u32,
                        build_ns: Some(1.0),
                    }
                }),
            ];
            run(
                &steps,
                &Timing {
                    rounds: 2,
                    cold: false,
                },
                &mut cs,
            );
            assert_eq!(cs[0].times.len(), 6);
            assert_eq!(cs[1].builds.len(), 6);
            assert!(cs[0].builds.is_empty());
            assert_eq!(cs[0].picks, [1, 2, 3]);
            assert_eq!(cs[1].picks, [11, 12, 13]);
        }
        // The untimed round plus two timed ones, two calls per step, each
        // step on its own logits.
        assert_eq!(order.len(), 18);
        for pair in order.chunks(2) {
            assert_ne!(pair[0].0, pair[1].0);
            assert_eq!(pair[0].1, pair[1].1);
        }
        assert!(order.chunks(2).any(|p| p[0].0 == 'a'));
        assert!(order.chunks(2).any(|p| p[0].0 == 'b'));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut state = 7;
        let mut seen_first = [false; 5];
        for _ in 0..50 {
            let mut v: Vec<usize> = (0..5).collect();
            shuffle(&mut v, &mut state);
            seen_first[v[0]] = true;
            v.sort_unstable();
            assert_eq!(v, [0, 1, 2, 3, 4]);
        }
        assert!(seen_first.iter().all(|&s| s));
    }
}
