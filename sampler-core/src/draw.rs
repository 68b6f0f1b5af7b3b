//! The draw: one uniform number picks one token of the final distribution.
//!
//! Input: the final survivors, their scale and a uniform `u` in `[0, 1)`.
//! Output: the chosen survivor.
//! Invariants: with integer weights `w` and total `W`, the target is
//! `t = min(floor(u * W), W - 1)` (the product in f64), and the token chosen
//! is the first, scanning in rank order (descending probability, ties by
//! lower id), whose cumulative weight exceeds `t`. `u = 0` picks the top
//! token; `u` just below 1 picks the last token of nonzero weight. The result
//! depends on the set of survivors only, not on how they are stored.

use crate::select::{mass, weighted_select, Weigh};
use crate::Candidate;

/// The cumulative-weight target for uniform `u` and total weight `total > 0`.
pub(crate) fn target(u: f64, total: u64) -> u64 {
    // `as` truncates toward zero, which is floor for the non-negative product;
    // the product can round up to `total` when `total` exceeds 2^53.
    let t = (u * total as f64) as u64;
    t.min(total.saturating_sub(1))
}

/// Picks from `s` by `u`; returns the chosen position and the total weight.
pub(crate) fn pick(s: &mut [Candidate], u: f64, weight: &impl Weigh) -> (usize, u64) {
    let total = mass(s, weight);
    pick_with_total(s, u, total, weight)
}

/// [`pick`] when the total weight of `s` is already known to be `total`.
pub(crate) fn pick_with_total(
    s: &mut [Candidate],
    u: f64,
    total: u64,
    weight: &impl Weigh,
) -> (usize, u64) {
    // Survivors always hold the top token, whose weight is 2^30, so the
    // fallback to the top position is never taken.
    let j = weighted_select(s, target(u, total), weight).unwrap_or(0);
    (j, total)
}

/// Picks by `u` from rank-ordered weights `w`; returns the chosen position and the total.
pub(crate) fn pick_sorted(w: &[u64], u: f64) -> (usize, u64) {
    let total: u64 = w.iter().sum();
    let mut left = target(u, total);
    for (i, &x) in w.iter().enumerate() {
        if left < x {
            return (i, total);
        }
        left -= x;
    }
    (0, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ends() {
        assert_eq!(target(0.0, 10), 0);
        assert_eq!(target(1.0 - f64::EPSILON / 2.0, 10), 9);
        assert_eq!(target(0.5, 10), 5);
        // u = 1 never comes from the generator; it checks the clamp.
        assert_eq!(target(1.0, 10), 9);
        assert_eq!(target(0.3, 0), 0);
    }

    #[test]
    fn scan_order_and_ends() {
        let weight = |x: f32| x as u64;
        let make = || -> [Candidate; 3] {
            [
                Candidate { id: 2, logit: 1.0 },
                Candidate { id: 0, logit: 3.0 },
                Candidate { id: 1, logit: 0.0 },
            ]
        };
        let below_one = 1.0 - f64::EPSILON / 2.0;
        let id_at = |u: f64| {
            let mut s = make();
            let (j, total) = pick(&mut s, u, &weight);
            assert_eq!(total, 4);
            s.get(j).map(|c| c.id)
        };
        assert_eq!(id_at(0.0), Some(0));
        assert_eq!(id_at(0.74), Some(0));
        assert_eq!(id_at(0.75), Some(2));
        // Token 1 has weight 0 and is never drawn.
        assert_eq!(id_at(below_one), Some(2));
        assert_eq!(pick_sorted(&[3, 1, 0], 0.0), (0, 4));
        assert_eq!(pick_sorted(&[3, 1, 0], 0.75), (1, 4));
        assert_eq!(pick_sorted(&[3, 1, 0], below_one), (1, 4));
    }
}
