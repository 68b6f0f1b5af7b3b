//! The top-p (nucleus) stage.
//!
//! Input: the survivors so far (a rank prefix), `p` and the current scale.
//! Output: the smallest rank prefix of them whose mass reaches `p` of their
//! total, moved to the front.
//! Invariants: at least one token survives; `p = 1` keeps all and `p = 0`
//! keeps the top token. Mass is summed as integer weights, so "reaches" is
//! decided exactly on them; a prefix short of `p` by at most
//! [`TOP_P_TOLERANCE`] of the total still counts, so that the exponential's
//! float rounding does not lose a mass reaching `p`. The rounding of each
//! weight to a whole unit is not covered: it can add up over many tied
//! tokens (see the crate's definition of top-p). Found by weighted
//! selection, never a sort.

use crate::select::{mass, weighted_select, Weigh};
use crate::Candidate;

/// Shortfall, as a fraction of the total mass, by which a prefix still reaches `p`.
///
/// It covers the exponential's float rounding, not the rounding of weights
/// to whole units, which many tokens tied at a small weight can add up
/// past it.
pub const TOP_P_TOLERANCE: f64 = 1e-5;

/// The least prefix mass that counts as reaching `p` of `total`; in `[1, total]`.
pub(crate) fn target(p: f32, total: u64) -> u64 {
    let want = libm::ceil((f64::from(p) - TOP_P_TOLERANCE) * total as f64);
    if want.is_nan() || want < 1.0 {
        1
    } else if want >= total as f64 {
        total
    } else {
        want as u64
    }
}

/// Keeps the smallest rank prefix of `s` reaching `p`; returns the survivor count.
pub(crate) fn apply(s: &mut [Candidate], p: f32, weight: &impl Weigh) -> usize {
    if p >= 1.0 || s.len() <= 1 {
        return s.len();
    }
    let total = mass(s, weight);
    let need = target(p, total);
    // The prefix ends at the token whose cumulative mass first exceeds need - 1.
    match weighted_select(s, need.saturating_sub(1), weight) {
        Some(j) => j + 1,
        None => s.len(),
    }
}

/// Length of the smallest prefix of rank-ordered weights `w` reaching `p`.
pub(crate) fn prefix(w: &[u64], p: f32) -> usize {
    let total: u64 = w.iter().sum();
    let need = target(p, total);
    let mut cum = 0u64;
    for (i, &x) in w.iter().enumerate() {
        cum += x;
        if cum >= need {
            return i + 1;
        }
    }
    w.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_bounds() {
        assert_eq!(target(0.0, 1000), 1);
        assert_eq!(target(1.0, 1000), 1000);
        assert_eq!(target(0.5, 1000), 500);
        // 0.5 - 1e-5 of 10^6 is 499990.
        assert_eq!(target(0.5, 1_000_000), 499_990);
        assert_eq!(target(f32::NAN, 10), 1);
    }

    #[test]
    fn keeps_smallest_reaching_prefix() {
        let weight = |x: f32| x as u64;
        let mut s: [Candidate; 4] = core::array::from_fn(|i| Candidate {
            id: i as u32,
            logit: [30.0, 10.0, 10.0, 50.0][i],
        });
        // 50 + 30 = 80 of 100 reaches 0.8 exactly.
        assert_eq!(apply(&mut s, 0.8, &weight), 2);
        assert_eq!(apply(&mut s, 0.81, &weight), 3);
        assert_eq!(apply(&mut s, 0.0, &weight), 1);
        assert_eq!(s.first().map(|c| c.id), Some(3));
        assert_eq!(prefix(&[50, 30, 10, 10], 0.8), 2);
        assert_eq!(prefix(&[50, 30, 10, 10], 0.81), 3);
        assert_eq!(prefix(&[50, 30, 10, 10], 0.0), 1);
        assert_eq!(prefix(&[50, 30, 10, 10], 1.0), 4);
    }
}
