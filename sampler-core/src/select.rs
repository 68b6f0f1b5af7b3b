//! Rank order, selection and weighted selection over candidate slices.
//!
//! Input: a slice of [`Candidate`]s that is a set of tokens in any order.
//! Output: the same slice permuted so that a requested number of the
//! highest-ranked tokens come first, or the position of the token at a given
//! cumulative weight in rank order.
//! Invariants: rank order is a strict total order (higher logit first, equal
//! logits by lower id), so every result depends only on the set, never on
//! the slice's incoming order or on the selection algorithm. Nothing here
//! sorts more than a small run of elements; selection is `O(n)` expected.

use core::cmp::Ordering;

use crate::Candidate;

/// Rank order: `Less` means `a` ranks before `b` (higher logit, or equal logit and lower id).
///
/// Compares integer keys, which is both faster than a float comparison and
/// total; candidates never hold NaN, and -0.0 ranks as +0.0.
#[inline]
pub(crate) fn rank_cmp(a: &Candidate, b: &Candidate) -> Ordering {
    rank_key(b).cmp(&rank_key(a))
}

/// A key that grows with rank: the logit's bits mapped to an order-preserving
/// unsigned integer, then the complemented id so that lower ids rank higher.
#[inline(always)]
pub(crate) fn rank_key(c: &Candidate) -> u64 {
    // Adding +0.0 turns -0.0 into +0.0 so that the two tie.
    let bits = (c.logit + 0.0).to_bits();
    let ordered = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(ordered) << 32) | u64::from(!c.id)
}

/// Permutes `s` so that its `k` highest-ranked elements come first, in any order.
pub(crate) fn keep_top(s: &mut [Candidate], k: usize) {
    if k > 0 && k < s.len() {
        s.select_nth_unstable_by(k - 1, rank_cmp);
    }
}

/// Sorts `s` by rank; meant for short runs only.
pub(crate) fn sort_by_rank(s: &mut [Candidate]) {
    s.sort_unstable_by(rank_cmp);
}

/// Moves the elements that satisfy `keep` to the front; returns how many there are.
pub(crate) fn partition(s: &mut [Candidate], keep: impl Fn(&Candidate) -> bool) -> usize {
    let mut kept = 0usize;
    for i in 0..s.len() {
        if s.get(i).is_some_and(&keep) {
            s.swap(kept, i);
            kept += 1;
        }
    }
    kept
}

/// Sum of the weights of `s`.
pub(crate) fn mass(s: &[Candidate], weight: impl Fn(f32) -> u64) -> u64 {
    s.iter().map(|c| weight(c.logit)).sum()
}

/// Runs at most this long are sorted instead of split further.
const SMALL: usize = 24;

/// Finds the element at cumulative weight `target` in rank order.
///
/// Returns the position `j` of the first element in rank order whose
/// cumulative weight (its own included) exceeds `target`, after permuting
/// `s` so that `s[..=j]` are exactly its `j + 1` highest-ranked elements.
/// Returns `None` when `target` is not below the total weight.
///
/// Each round splits the live range at its median rank with `O(n)` selection
/// and sums the weights of the upper half only, so the expected cost is a few
/// passes over `s` and about one weight evaluation per element.
pub(crate) fn weighted_select(
    s: &mut [Candidate],
    target: u64,
    weight: impl Fn(f32) -> u64,
) -> Option<usize> {
    let mut lo = 0usize;
    let mut hi = s.len();
    let mut left = target;
    while hi - lo > SMALL {
        let range = s.get_mut(lo..hi)?;
        let mid = range.len() / 2;
        let (upper, pivot, _) = range.select_nth_unstable_by(mid, rank_cmp);
        let upper_mass = mass(upper, &weight);
        if left < upper_mass {
            hi = lo + mid;
            continue;
        }
        left -= upper_mass;
        let w = weight(pivot.logit);
        if left < w {
            return Some(lo + mid);
        }
        left -= w;
        lo += mid + 1;
    }
    let range = s.get_mut(lo..hi)?;
    sort_by_rank(range);
    for (i, c) in range.iter().enumerate() {
        let w = weight(c.logit);
        if left < w {
            return Some(lo + i);
        }
        left -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn cands(logits: &[f32]) -> Vec<Candidate> {
        logits
            .iter()
            .enumerate()
            .map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
            })
            .collect()
    }

    #[test]
    fn rank_breaks_ties_by_lower_id() {
        let a = Candidate { id: 3, logit: 1.0 };
        let b = Candidate { id: 5, logit: 1.0 };
        let c = Candidate { id: 0, logit: 0.5 };
        assert_eq!(rank_cmp(&a, &b), Ordering::Less);
        assert_eq!(rank_cmp(&b, &a), Ordering::Greater);
        assert_eq!(rank_cmp(&c, &a), Ordering::Greater);
        assert_eq!(rank_cmp(&a, &a), Ordering::Equal);
    }

    #[test]
    fn rank_key_orders_floats() {
        let xs = [
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -1e-40,
            -0.0,
            0.0,
            1e-40,
            1.0,
            1e30,
            f32::INFINITY,
        ];
        for pair in xs.windows(2) {
            let a = Candidate {
                id: 0,
                logit: pair[0],
            };
            let b = Candidate {
                id: 0,
                logit: pair[1],
            };
            let want = if pair[0] == pair[1] {
                Ordering::Equal
            } else {
                Ordering::Greater
            };
            assert_eq!(rank_cmp(&a, &b), want, "{pair:?}");
        }
    }

    #[test]
    fn keep_top_moves_best_first() {
        let mut s = cands(&[0.0, 3.0, 1.0, 3.0, 2.0]);
        keep_top(&mut s, 3);
        let mut ids: Vec<u32> = s.iter().take(3).map(|c| c.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 3, 4]);
    }

    #[test]
    fn weighted_select_matches_a_sorted_scan() {
        // Weights taken straight from the logit to check the bookkeeping.
        let weight = |x: f32| x as u64;
        let logits: Vec<f32> = (0..200).map(|i| ((i * 37) % 101) as f32).collect();
        let mut sorted = cands(&logits);
        sort_by_rank(&mut sorted);
        let total = mass(&sorted, weight);
        for target in (0..total).step_by(97).chain([0, total - 1]) {
            let mut cum = 0;
            let want = sorted
                .iter()
                .position(|c| {
                    cum += weight(c.logit);
                    cum > target
                })
                .map(|p| sorted.get(p).map(|c| c.id));
            let mut s = cands(&logits);
            let got = weighted_select(&mut s, target, weight);
            let j = got.unwrap_or(usize::MAX);
            assert_eq!(Some(s.get(j).map(|c| c.id)), want, "target {target}");
            let mut head: Vec<u32> = s.iter().take(j + 1).map(|c| c.id).collect();
            let mut top: Vec<u32> = sorted.iter().take(j + 1).map(|c| c.id).collect();
            head.sort_unstable();
            top.sort_unstable();
            assert_eq!(head, top);
        }
        let mut s = cands(&logits);
        assert_eq!(weighted_select(&mut s, total, weight), None);
    }

    #[test]
    fn partition_keeps_matching_first() {
        let mut s = cands(&[5.0, -1.0, 4.0, -2.0, 3.0]);
        let n = partition(&mut s, |c| c.logit > 0.0);
        assert_eq!(n, 3);
        assert!(s.iter().take(3).all(|c| c.logit > 0.0));
    }
}
