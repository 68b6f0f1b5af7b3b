//! The draw: one uniform number picks one token of the final distribution.
//!
//! Input: the final survivors, their scale and a uniform `u` in `[0, 1)`.
//! Output: the chosen survivor.
//! Invariants: with integer weights `w` and total `W`, the target is
//! `t = min(floor(u * W), W - 1)` with the product exact, and the token chosen
//! is the first, scanning in rank order (descending probability, ties by
//! lower id), whose cumulative weight exceeds `t`. `u = 0` picks the top
//! token; `u` just below 1 picks the last token of nonzero weight. The result
//! depends on the set of survivors only, not on how they are stored.

use crate::select::{mass, weighted_select, Weigh};
use crate::Candidate;

/// The cumulative-weight target for uniform `u` and total weight `total > 0`.
///
/// `floor(u * total)` in exact integer arithmetic: `u` is `m * 2^-s` with
/// an integer `m` below 2^53, so the product is `m * total` (below 2^117)
/// shifted right by `s`. A product in f64 would round to nearest first and
/// could land on the next integer: for `u = k * 2^-53` with
/// `3k = 2^54 - 1`, `u * 3` is `2 - 2^-53`, which rounds to 2.
pub(crate) fn target(u: f64, total: u64) -> u64 {
    let t = if u >= 1.0 {
        total
    } else if u > 0.0 {
        let bits = u.to_bits();
        let exponent = (bits >> 52) & 0x7ff;
        let fraction = bits & ((1u64 << 52) - 1);
        // u = mantissa * 2^-shift; subnormals have no implicit bit.
        let (mantissa, shift) = if exponent == 0 {
            (fraction, 1074)
        } else {
            (fraction | (1u64 << 52), 1075 - exponent)
        };
        let product = u128::from(mantissa) * u128::from(total);
        let shifted = product.checked_shr(shift as u32).unwrap_or(0);
        u64::try_from(shifted).unwrap_or(u64::MAX)
    } else {
        // Zero, negative or NaN: the top token, as for u = 0.
        0
    };
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
        assert_eq!(target(f64::NAN, 10), 0);
        assert_eq!(target(f64::MIN_POSITIVE / 4.0, u64::MAX), 0);
    }

    #[test]
    fn target_is_the_exact_floor() {
        // u * 3 = 2 - 2^-53 exactly, which an f64 product rounds up to 2.
        let u = 6_004_799_503_160_661.0 / 9_007_199_254_740_992.0;
        assert_eq!(target(u, 3), 1);
        // A total above 2^53: 16_943_133 tokens of weight 2^30.
        let total = 16_943_133u64 << 30;
        assert_eq!(
            target(0.927_768_199_659_413_6, total),
            16_878_469_854_003_199
        );
        // Exact halves and the largest u below 1.
        assert_eq!(target(0.5, u64::MAX), u64::MAX / 2);
        let below_one = 1.0 - f64::EPSILON / 2.0;
        assert_eq!(target(below_one, 1 << 53), (1 << 53) - 1);
        assert_eq!(target(below_one, u64::MAX), u64::MAX - (u64::MAX >> 53) - 1);
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
