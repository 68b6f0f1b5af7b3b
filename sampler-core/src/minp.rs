//! The min-p stage.
//!
//! Input: the survivors so far (a rank prefix), `min_p` and the current scale.
//! Output: the survivors whose probability is at least `min_p` times the top
//! one's, moved to the front.
//! Invariants: the test is `d >= ln(min_p)` on the scaled difference `d` to
//! the top logit, which rises with the logit, so survivors stay a rank
//! prefix and the top token always survives. A token short by at most
//! [`MIN_P_TOLERANCE`] (in log space) still survives, so that a ratio equal to
//! `min_p` in real arithmetic is not lost to float rounding. `0` is off.

use crate::select::partition;
use crate::softmax::Scale;
use crate::Candidate;

/// Shortfall of `ln(p / p_max)` below `ln(min_p)` that still survives.
pub const MIN_P_TOLERANCE: f32 = 1e-5;

/// The least scaled difference to the top logit that survives `min_p > 0`.
pub(crate) fn cut(min_p: f32) -> f32 {
    libm::logf(min_p) - MIN_P_TOLERANCE
}

/// Keeps the elements of `s` that pass min-p; returns the survivor count.
pub(crate) fn apply(s: &mut [Candidate], min_p: f32, scale: &Scale) -> usize {
    if min_p.is_nan() || min_p <= 0.0 || s.len() <= 1 {
        return s.len();
    }
    let cut = cut(min_p);
    partition(s, |c| scale.d(c.logit) >= cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ratio_at_least_min_p() {
        let ln = |x: f32| libm::logf(x);
        let probs = [0.4f32, 0.2, 0.1, 0.3];
        let mut s: [Candidate; 4] = core::array::from_fn(|i| Candidate {
            id: i as u32,
            logit: ln(probs[i]),
        });
        let scale = Scale::new(ln(0.4));
        // 0.2 / 0.4 is exactly 0.5 in real arithmetic and must survive.
        assert_eq!(apply(&mut s, 0.5, &scale), 3);
        assert_eq!(apply(&mut s, 1.0, &scale), 1);
        assert_eq!(s.first().map(|c| c.id), Some(0));
    }

    #[test]
    fn zero_is_off() {
        let mut s = [
            Candidate { id: 0, logit: 0.0 },
            Candidate {
                id: 1,
                logit: -100.0,
            },
        ];
        assert_eq!(apply(&mut s, 0.0, &Scale::new(0.0)), 2);
    }
}
