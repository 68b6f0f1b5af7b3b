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
///
/// The test uses this `f32`'s exact value (about `9.99999974737875e-6`),
/// widened to `f64`, not the decimal `1e-5`.
pub const MIN_P_TOLERANCE: f32 = 1e-5;

/// The least scaled difference to the top logit that survives `min_p > 0`.
///
/// `ln(min_p) - MIN_P_TOLERANCE` in f64, rounded up to an f32, so that for
/// every f32 `d` the test `d >= cut` is the test against the real value.
/// In f32, the logarithm's rounding and the subtraction's could each move
/// the cut by half a step of the floats near it, and let through a `d` a
/// step below it. The f64 value is within about `1e-15` of the real one,
/// far closer than any two f32 values near the cut (`min_p` is an f32, so
/// the cut lies between about -104 and -1e-5).
pub(crate) fn cut(min_p: f32) -> f32 {
    let exact = libm::log(f64::from(min_p)) - f64::from(MIN_P_TOLERANCE);
    let near = exact as f32;
    if f64::from(near) < exact {
        next_up(near)
    } else {
        near
    }
}

/// The least f32 above `x`, for a finite negative `x`; `x` itself otherwise.
fn next_up(x: f32) -> f32 {
    if x.is_finite() && x < 0.0 {
        // For a negative float, one less in the bits is one step up.
        f32::from_bits(x.to_bits() - 1)
    } else {
        x
    }
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
    fn cut_is_the_least_f32_at_or_above_the_real_one() {
        let mut p = 1.0f32;
        let mut checked = 0;
        while p > 1e-40 {
            let exact = libm::log(f64::from(p)) - f64::from(MIN_P_TOLERANCE);
            let c = cut(p);
            let below = f32::from_bits(c.to_bits() + 1);
            assert!(f64::from(c) >= exact, "min_p {p}: cut {c} below {exact}");
            assert!(
                f64::from(below) < exact,
                "min_p {p}: {below} also reaches {exact}"
            );
            p *= 0.937;
            checked += 1;
        }
        assert!(checked > 1000);
        // A cut computed in f32 lets this one through at 0.05.
        let d = f32::from_bits(0xC03F_BA3E);
        assert!(d < cut(0.05));
        assert_eq!(cut(1.0), -MIN_P_TOLERANCE);
    }

    #[test]
    fn a_difference_just_short_of_the_cut_is_dropped() {
        let mut s = [
            Candidate { id: 0, logit: 0.0 },
            Candidate {
                id: 1,
                logit: f32::from_bits(0xC03F_BA3E),
            },
        ];
        assert_eq!(apply(&mut s, 0.05, &Scale::new(0.0)), 1);
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
