//! The top-k stage.
//!
//! Input: the survivors so far (a rank prefix) and `k`. Output: exactly the
//! `min(k, survivors)` highest-ranked of them, moved to the front.
//! Invariants: `k = 0`, or `k` at least the vocabulary size, is off; ties at
//! the k-th logit go to the lower ids; selection is `O(n)`, never a sort.

use crate::select::keep_top;
use crate::Candidate;

/// The number of tokens top-k keeps, or `None` when it is off.
pub(crate) fn limit(k: u32, vocab: usize) -> Option<usize> {
    let k = usize::try_from(k).ok()?;
    (k != 0 && k < vocab).then_some(k)
}

/// Keeps the `k` highest-ranked elements of `s`; returns the survivor count.
pub(crate) fn apply(s: &mut [Candidate], k: usize) -> usize {
    keep_top(s, k);
    s.len().min(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_values() {
        assert_eq!(limit(0, 10), None);
        assert_eq!(limit(10, 10), None);
        assert_eq!(limit(11, 10), None);
        assert_eq!(limit(9, 10), Some(9));
    }

    #[test]
    fn ties_at_the_kth_value_go_to_lower_ids() {
        let mut s: [Candidate; 5] = core::array::from_fn(|i| Candidate {
            id: 4 - i as u32,
            logit: if i == 0 { 2.0 } else { 1.0 },
        });
        assert_eq!(apply(&mut s, 3), 3);
        let mut ids = [0u32; 3];
        for (slot, c) in ids.iter_mut().zip(s.iter()) {
            *slot = c.id;
        }
        ids.sort_unstable();
        assert_eq!(ids, [0, 1, 4]);
    }
}
