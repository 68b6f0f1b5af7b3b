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

use crate::softmax::{weight_f64, Scale};
use crate::Candidate;

/// Gives the integer weight of a logit, one at a time or in batches.
pub(crate) trait Weigh {
    /// The weight of logit `x`.
    fn weight(&self, x: f32) -> u64;

    /// The weights of eight logits, each an exact integer below 2^31 in an f64.
    #[inline(always)]
    fn weigh8(&self, x: &[f32; 8]) -> [f64; 8] {
        let mut w = [0.0; 8];
        for (w, &x) in w.iter_mut().zip(x) {
            *w = self.weight(x) as f64;
        }
        w
    }
}

impl<F: Fn(f32) -> u64> Weigh for F {
    fn weight(&self, x: f32) -> u64 {
        self(x)
    }
}

impl Weigh for Scale {
    #[inline(always)]
    fn weight(&self, x: f32) -> u64 {
        Scale::weight(self, x)
    }

    #[inline(always)]
    fn weigh8(&self, x: &[f32; 8]) -> [f64; 8] {
        let mut w = [0.0; 8];
        if self.inf {
            for (w, &x) in w.iter_mut().zip(x) {
                *w = Scale::weight(self, x) as f64;
            }
            return w;
        }
        // Straight-line arithmetic over eight lanes, so it vectorises.
        let (m, inv_t) = (self.m, self.inv_t);
        for (w, &x) in w.iter_mut().zip(x) {
            *w = weight_f64((x - m) * inv_t);
        }
        w
    }
}

/// Groups of eight per block of [`mass`]: each f64 lane then sums at most
/// 2^20 weights of at most 2^30, below 2^53 where f64 holds every integer.
const GROUPS_PER_BLOCK: usize = 1 << 20;

/// Calls `f` with the logits of `s` eight at a time and the matching candidates.
///
/// The last batch is padded with -inf, whose weight is 0.
#[inline(always)]
fn in_eights(s: &[Candidate], mut f: impl FnMut(&[f32; 8], &[Candidate])) {
    for group in s.chunks(8) {
        let mut x = [f32::NEG_INFINITY; 8];
        for (xi, c) in x.iter_mut().zip(group) {
            *xi = c.logit;
        }
        f(&x, group);
    }
}

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

/// `a` if `c`, else `b`, computed with bit masks instead of a branch.
///
/// For choices that follow no pattern from one call to the next, where a
/// branch would be mispredicted about half the time. The compiler turns a
/// plain `if` between floats, and even these masks, back into a branch
/// when one side is costly; the mask passes through `black_box` so that it
/// cannot.
#[inline(always)]
pub(crate) fn pick(c: bool, a: f32, b: f32) -> f32 {
    let mask = core::hint::black_box(u32::from(c).wrapping_neg());
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
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

/// Ranges of [`nth_desc`] at or below this length are finished by insertion.
const SHORT: usize = 16;

/// Reorders `v` so that `v[n]` holds the key a descending sort would put
/// there, with larger keys before it and smaller ones after, each side in
/// no order; does nothing when `n` is out of range.
///
/// Meant for short buffers (a few hundred keys at most): quickselect with
/// a median-of-three pivot, finished by insertion sort. Its worst case is
/// quadratic in the buffer's length, which the callers bound. It is a
/// fraction of the code of `select_nth_unstable`, and that counts more
/// than its speed on warm caches: a call after a decode step finds the
/// sampler's code evicted and fetches every line of it from memory.
pub(crate) fn nth_desc<T: Copy + Ord>(v: &mut [T], n: usize) {
    let mut lo = 0usize;
    let mut hi = v.len();
    if n >= hi {
        return;
    }
    while hi - lo > SHORT {
        let last = hi - 1;
        let mid = lo + (hi - lo) / 2;
        let (Some(&a), Some(&b), Some(&c)) = (v.get(lo), v.get(mid), v.get(last)) else {
            return;
        };
        // The median of the three is the pivot, moved to the end.
        let (pivot, p) = match median3(&a, &b, &c) {
            0 => (lo, a),
            1 => (mid, b),
            _ => (last, c),
        };
        v.swap(pivot, last);
        let store = lo + split_above(v.get_mut(lo..last).unwrap_or(&mut []), p);
        v.swap(store, last);
        match n.cmp(&store) {
            Ordering::Less => hi = store,
            Ordering::Greater => lo = store + 1,
            Ordering::Equal => return,
        }
    }
    sort_desc(v.get_mut(lo..hi).unwrap_or(&mut []));
}

/// Which of `a`, `b` and `c` is their median: 0, 1 or 2; with ties, one that equals it.
#[inline(always)]
fn median3<T: Ord>(a: &T, b: &T, c: &T) -> usize {
    if (a >= b) == (b >= c) {
        1
    } else if (b > a) == (a > c) {
        // Here `b` is below both others or above both, so the median is
        // the nearer of `a` and `c`. The tests are strict so that an `a`
        // equal to `b` counts as the nearer: with `>=`, keys 1, 1, 2 would
        // make the 2 the pivot.
        0
    } else {
        2
    }
}

/// Moves the keys of `w` above `p` to its front, in no order; returns how many there are.
///
/// Every key between the front part and the one looked at is not above
/// `p`, so the swap is made whatever the test says and only the count
/// depends on it: no branch to mispredict.
#[inline(always)]
fn split_above<T: Copy + Ord>(w: &mut [T], p: T) -> usize {
    let mut store = 0usize;
    for i in 0..w.len() {
        let (Some(&x), Some(&y)) = (w.get(i), w.get(store)) else {
            break;
        };
        if let Some(slot) = w.get_mut(i) {
            *slot = y;
        }
        if let Some(slot) = w.get_mut(store) {
            *slot = x;
        }
        store += usize::from(x > p);
    }
    store
}

/// Sorts `v` in descending order by insertion; for short slices, as [`nth_desc`] explains.
pub(crate) fn sort_desc<T: Copy + Ord>(v: &mut [T]) {
    for i in 1..v.len() {
        let Some(&x) = v.get(i) else {
            return;
        };
        let mut j = i;
        while let Some(&y) = j.checked_sub(1).and_then(|before| v.get(before)) {
            if y >= x {
                break;
            }
            if let Some(slot) = v.get_mut(j) {
                *slot = y;
            }
            j -= 1;
        }
        if let Some(slot) = v.get_mut(j) {
            *slot = x;
        }
    }
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

/// Orders `s` as keys below `b`, equal to `b`, then the rest.
///
/// Returns how many keys are below `b` and how many equal it. Two
/// partitions without a branch on the key (every element is swapped, and
/// only the count moves on the test): keys are in no order, so a branch on
/// each would be mispredicted about as often as not.
fn split3(s: &mut [Candidate], key: impl Fn(&Candidate) -> usize, b: usize) -> (usize, usize) {
    let at_most = sift(s, |c| key(c) <= b);
    let below = sift(s.get_mut(..at_most).unwrap_or(&mut []), |c| key(c) < b);
    (below, at_most - below)
}

/// Moves the elements that satisfy `keep` to the front; returns how many there are.
///
/// Like [`partition`], without a branch on `keep`.
fn sift(s: &mut [Candidate], keep: impl Fn(&Candidate) -> bool) -> usize {
    let mut kept = 0usize;
    for i in 0..s.len() {
        let k = s.get(i).is_some_and(&keep);
        // Everything in kept..i fails `keep`, so the swap keeps that true.
        s.swap(kept, i);
        kept += usize::from(k);
    }
    kept
}

/// Sum of the weights of `s`, exact.
pub(crate) fn mass(s: &[Candidate], weight: &impl Weigh) -> u64 {
    let mut total = 0u64;
    for block in s.chunks(8 * GROUPS_PER_BLOCK) {
        let mut acc = [0.0f64; 8];
        in_eights(block, |x, _| {
            for (a, w) in acc.iter_mut().zip(weight.weigh8(x)) {
                *a += w;
            }
        });
        // Each lane is an exact non-negative integer below 2^53.
        total += acc.iter().map(|&a| a as u64).sum::<u64>();
    }
    total
}

/// Runs at most this long are sorted instead of split further.
const SMALL: usize = 24;

/// Ranges longer than this are first narrowed by a logit histogram.
const LARGE: usize = 2048;

/// Histogram buckets per narrowing step.
const BUCKETS: usize = 128;

/// The bucket of logit `x` in [`narrow`]: `(top - x) * per` rounded to an
/// integer and capped at the last bucket.
///
/// Monotone in the logit, which is all the buckets need: a higher logit
/// never gets a later bucket. Rounding by adding 2^23 (to nearest, ties to
/// even) is plain arithmetic, so batches of these vectorise; `x` from
/// `low` to `top` gives at most `BUCKETS` plus a rounding error before the
/// cap, and -inf lands in the last bucket.
#[inline(always)]
fn bucket_of(top: f32, per: f32, x: f32) -> usize {
    let f = (top - x) * per;
    let r = (f + TWO_23).to_bits().wrapping_sub(TWO_23.to_bits());
    (r as usize).min(BUCKETS - 1)
}

/// `2^23`: adding it to a non-negative float below 2^23 rounds the float to
/// an integer, which the low mantissa bits then hold.
const TWO_23: f32 = 8_388_608.0;

/// One narrowing step of [`weighted_select`] for long ranges.
///
/// Splits the logit range of `s` into [`BUCKETS`] equal buckets, highest
/// logits first, sums the weight per bucket in one pass, finds the
/// bucket where the cumulative weight passes `target`, and moves the
/// buckets above it to the front and it right after. Since the bucket of a
/// logit never rises as the logit grows, everything in earlier buckets ranks
/// above everything in that bucket. Returns the bucket's start, length, and
/// the target left inside it; `Some(None)` when `target` is not below the
/// total; `None` when the logits span no finite, nonzero range.
fn narrow(
    s: &mut [Candidate],
    target: u64,
    weight: &impl Weigh,
) -> Option<Option<(usize, usize, u64)>> {
    let (top, low) = s
        .iter()
        .fold((f32::NEG_INFINITY, f32::INFINITY), |(top, low), c| {
            let x = c.logit;
            (if x > top { x } else { top }, if x < low { x } else { low })
        });
    let per = BUCKETS as f32 / (top - low);
    if !(per.is_finite() && per > 0.0) {
        return None;
    }
    let bucket = |x: f32| bucket_of(top, per, x);
    let mut weights = [0u64; BUCKETS];
    in_eights(s, |x, group| {
        let mut at = [0usize; 8];
        for (b, &x) in at.iter_mut().zip(x) {
            *b = bucket(x);
        }
        // The padding after a short last group takes no part.
        for (&w, &b) in weight.weigh8(x).iter().zip(&at).take(group.len()) {
            if let Some(sum) = weights.get_mut(b) {
                // Exact: a non-negative integer below 2^31.
                *sum += w as u64;
            }
        }
    });
    let mut left = target;
    for (b, &w) in weights.iter().enumerate() {
        if left < w {
            let (above, len) = split3(s, |c| bucket(c.logit), b);
            return Some(Some((above, len, left)));
        }
        left -= w;
    }
    Some(None)
}

/// Finds the element at cumulative weight `target` in rank order.
///
/// Returns the position `j` of the first element in rank order whose
/// cumulative weight (its own included) exceeds `target`, after permuting
/// `s` so that `s[..=j]` are exactly its `j + 1` highest-ranked elements.
/// Returns `None` when `target` is not below the total weight.
///
/// Long ranges are first narrowed to one bucket of a logit histogram
/// ([`narrow`]). Then each round splits the live range at its median rank
/// with `O(n)` selection and sums the weights of the upper half only, so
/// the expected cost is a few passes over `s` and about one weight
/// evaluation per element.
pub(crate) fn weighted_select(
    s: &mut [Candidate],
    target: u64,
    weight: &impl Weigh,
) -> Option<usize> {
    weighted_select_above(s, target, weight).map(|(j, _)| j)
}

/// [`weighted_select`], also returning the weight of the elements ranked
/// above the one found: at most `target`.
pub(crate) fn weighted_select_above(
    s: &mut [Candidate],
    target: u64,
    weight: &impl Weigh,
) -> Option<(usize, u64)> {
    let mut lo = 0usize;
    let mut hi = s.len();
    let mut left = target;
    while hi - lo > SMALL {
        if hi - lo > LARGE {
            let range = s.get_mut(lo..hi)?;
            if let Some(narrowed) = narrow(range, left, weight) {
                let (start, len, rest) = narrowed?;
                lo += start;
                hi = lo + len;
                left = rest;
                continue;
            }
        }
        let range = s.get_mut(lo..hi)?;
        let mid = range.len() / 2;
        let (upper, pivot, _) = range.select_nth_unstable_by(mid, rank_cmp);
        let upper_mass = mass(upper, weight);
        if left < upper_mass {
            hi = lo + mid;
            continue;
        }
        left -= upper_mass;
        let w = weight.weight(pivot.logit);
        if left < w {
            return Some((lo + mid, target - left));
        }
        left -= w;
        lo += mid + 1;
    }
    let range = s.get_mut(lo..hi)?;
    sort_by_rank(range);
    for (i, c) in range.iter().enumerate() {
        let w = weight.weight(c.logit);
        if left < w {
            return Some((lo + i, target - left));
        }
        left -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::cell::RefCell;
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

    /// Keys of several shapes: random, sorted both ways, few distinct, all equal.
    fn key_sets() -> Vec<Vec<u64>> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut sets = Vec::new();
        for len in (0..40).chain([63, 64, 65, 127, 128, 129, 200, 300]) {
            let random: Vec<u64> = (0..len).map(|_| next()).collect();
            let mut up = random.clone();
            up.sort_unstable();
            let down: Vec<u64> = up.iter().rev().copied().collect();
            let few: Vec<u64> = (0..len).map(|_| next() % 3).collect();
            let organ: Vec<u64> = (0..len)
                .map(|i| (i as u64).min(len as u64 - i as u64))
                .collect();
            sets.extend([random, up, down, few, organ, std::vec![7; len]]);
        }
        sets
    }

    #[test]
    fn nth_desc_puts_the_nth_largest_in_place_with_the_right_keys_on_each_side() {
        for keys in key_sets() {
            let mut want = keys.clone();
            want.sort_unstable_by(|a, b| b.cmp(a));
            for n in 0..keys.len() {
                let mut v = keys.clone();
                nth_desc(&mut v, n);
                assert_eq!(v[n], want[n], "n {n} of {keys:?}");
                assert!(v[..n].iter().all(|&x| x >= v[n]), "n {n} of {keys:?}");
                assert!(v[n + 1..].iter().all(|&x| x <= v[n]), "n {n} of {keys:?}");
                let mut same = v.clone();
                same.sort_unstable_by(|a, b| b.cmp(a));
                assert_eq!(same, want, "keys lost or duplicated");
            }
            // Out of range: left alone.
            let mut v = keys.clone();
            nth_desc(&mut v, keys.len());
            assert_eq!(v, keys);
        }
    }

    /// Key values decided only as keys are compared, to push a selection
    /// towards its worst case (after McIlroy's adversary for quicksort).
    ///
    /// Every key starts undecided ("gas"), ranking above every decided key
    /// (or below, with a negative `step`). When two undecided keys meet,
    /// one is decided: the one compared most recently, likely the pivot,
    /// which so lands at the far end of its range. The comparisons are
    /// counted, and the count may not pass `budget`, so that a loop that
    /// stopped shrinking its range fails instead of hanging.
    struct Adversary {
        value: Vec<i64>,
        gas: i64,
        next: i64,
        step: i64,
        recent: usize,
        compares: usize,
        budget: usize,
    }

    impl Adversary {
        fn new(len: usize, step: i64, budget: usize) -> Self {
            let gas = if step > 0 { i64::MAX } else { i64::MIN };
            Adversary {
                value: std::vec![gas; len],
                gas,
                next: 0,
                step,
                recent: 0,
                compares: 0,
                budget,
            }
        }

        fn compare(&mut self, x: usize, y: usize) -> Ordering {
            self.compares += 1;
            assert!(
                self.compares <= self.budget,
                "over {} comparisons",
                self.budget
            );
            let gas = self.gas;
            if self.value[x] == gas && self.value[y] == gas {
                let decided = if x == self.recent { x } else { y };
                self.value[decided] = self.next;
                self.next += self.step;
            }
            if self.value[x] == gas {
                self.recent = x;
            } else if self.value[y] == gas {
                self.recent = y;
            }
            self.value[x].cmp(&self.value[y])
        }
    }

    /// A key that [`Adversary`] orders: its index there.
    #[derive(Clone, Copy)]
    struct Probe<'a> {
        id: usize,
        by: &'a RefCell<Adversary>,
    }

    impl PartialEq for Probe<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == Ordering::Equal
        }
    }

    impl Eq for Probe<'_> {}

    impl PartialOrd for Probe<'_> {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    impl Ord for Probe<'_> {
        fn cmp(&self, other: &Self) -> Ordering {
            self.by.borrow_mut().compare(self.id, other.id)
        }
    }

    /// Runs [`nth_desc`] on `len` keys ordered by `by`, checks the result,
    /// and returns the comparisons made.
    fn nth_desc_against(by: Adversary, n: usize) -> usize {
        let len = by.value.len();
        let by = RefCell::new(by);
        let mut v: Vec<Probe> = (0..len).map(|id| Probe { id, by: &by }).collect();
        nth_desc(&mut v, n);
        let by = by.borrow();
        let value: Vec<i64> = v.iter().map(|p| by.value[p.id]).collect();
        assert!(value[..n].iter().all(|&x| x >= value[n]), "n {n}");
        assert!(value[n + 1..].iter().all(|&x| x <= value[n]), "n {n}");
        let mut ids: Vec<usize> = v.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        assert!(ids.iter().copied().eq(0..len), "keys lost or duplicated");
        by.compares
    }

    #[test]
    fn nth_desc_makes_a_bounded_number_of_comparisons_on_its_worst_inputs() {
        // As many keys as the callers' buffers hold. Each round costs a
        // comparison per key of its range and at most four for the pivot.
        // With distinct keys the median of three is never the least or the
        // greatest of its range, so each round sets aside at least two keys;
        // with equal keys it may set aside only its pivot. The last range,
        // at most SHORT keys, is sorted by insertion.
        let len = 128;
        let insertion = SHORT * SHORT / 2;
        let distinct = len * len / 4 + 2 * len + insertion;
        let equal = len * len / 2 + 4 * len + insertion;
        for n in 0..len {
            for step in [1, -1] {
                nth_desc_against(Adversary::new(len, step, distinct), n);
            }
            let mut same = Adversary::new(len, 1, equal);
            same.value.fill(0);
            nth_desc_against(same, n);
        }
    }

    #[test]
    fn median3_picks_the_median_of_every_triple_ties_included() {
        for a in 0..3u64 {
            for b in 0..3u64 {
                for c in 0..3u64 {
                    let mut sorted = [a, b, c];
                    sorted.sort_unstable();
                    let got = [a, b, c][median3(&a, &b, &c)];
                    assert_eq!(got, sorted[1], "{a} {b} {c}");
                }
            }
        }
    }

    #[test]
    fn sort_desc_matches_the_standard_sort() {
        for keys in key_sets() {
            let mut want = keys.clone();
            want.sort_unstable_by(|a, b| b.cmp(a));
            let mut v = keys;
            sort_desc(&mut v);
            assert_eq!(v, want);
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
        let total = mass(&sorted, &weight);
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
            let got = weighted_select_above(&mut s, target, &weight);
            let j = got.map_or(usize::MAX, |(j, _)| j);
            assert_eq!(Some(s.get(j).map(|c| c.id)), want, "target {target}");
            if let Some((j, above)) = got {
                let above_sorted: u64 = sorted.iter().take(j).map(|c| weight(c.logit)).sum();
                assert_eq!(above, above_sorted, "target {target}");
            }
            let mut head: Vec<u32> = s.iter().take(j + 1).map(|c| c.id).collect();
            let mut top: Vec<u32> = sorted.iter().take(j + 1).map(|c| c.id).collect();
            head.sort_unstable();
            top.sort_unstable();
            assert_eq!(head, top);
        }
        let mut s = cands(&logits);
        assert_eq!(weighted_select(&mut s, total, &weight), None);
    }

    #[test]
    fn weighted_select_narrows_long_ranges_exactly() {
        // Long enough to take the histogram path, with ties, a wide spread
        // and weights of zero at the bottom.
        let weight = |x: f32| if x < 0.0 { 0 } else { (x * x) as u64 + 1 };
        for shape in 0..3 {
            let logits: Vec<f32> = (0..9000)
                .map(|i| match shape {
                    0 => ((i * 7919) % 5003) as f32 / 10.0,
                    1 => ((i * 31) % 7) as f32,
                    _ => ((i * 7919) % 9001) as f32 - 50.0,
                })
                .collect();
            let mut sorted = cands(&logits);
            sort_by_rank(&mut sorted);
            let total = mass(&sorted, &weight);
            for target in (0..total)
                .step_by((total / 37) as usize + 1)
                .chain([0, total - 1])
            {
                let mut cum = 0;
                let want = sorted.iter().position(|c| {
                    cum += weight(c.logit);
                    cum > target
                });
                let mut s = cands(&logits);
                let got = weighted_select_above(&mut s, target, &weight);
                assert_eq!(got.map(|(j, _)| j), want, "shape {shape} target {target}");
                let (j, above) = got.unwrap();
                let above_sorted: u64 = sorted.iter().take(j).map(|c| weight(c.logit)).sum();
                assert_eq!(above, above_sorted, "shape {shape} target {target}");
                let mut head: Vec<u32> = s.iter().take(j + 1).map(|c| c.id).collect();
                let mut top: Vec<u32> = sorted.iter().take(j + 1).map(|c| c.id).collect();
                head.sort_unstable();
                top.sort_unstable();
                assert_eq!(head, top, "shape {shape} target {target}");
            }
            let mut s = cands(&logits);
            assert_eq!(weighted_select(&mut s, total, &weight), None);
        }
    }

    #[test]
    fn partition_keeps_matching_first() {
        let mut s = cands(&[5.0, -1.0, 4.0, -2.0, 3.0]);
        let n = partition(&mut s, |c| c.logit > 0.0);
        assert_eq!(n, 3);
        assert!(s.iter().take(3).all(|c| c.logit > 0.0));
    }

    #[test]
    fn split3_groups_keys_below_at_and_above_without_losing_any() {
        for len in [0usize, 1, 2, 7, 100, 1001] {
            let logits: Vec<f32> = (0..len).map(|i| ((i * 7919) % 13) as f32).collect();
            for b in [0usize, 5, 12, 13] {
                let mut s = cands(&logits);
                let key = |c: &Candidate| c.logit as usize;
                let (below, at) = split3(&mut s, key, b);
                let count =
                    |f: &dyn Fn(usize) -> bool| logits.iter().filter(|&&x| f(x as usize)).count();
                assert_eq!(below, count(&|k| k < b), "len {len} b {b}");
                assert_eq!(at, count(&|k| k == b), "len {len} b {b}");
                assert!(s[..below].iter().all(|c| key(c) < b));
                assert!(s[below..below + at].iter().all(|c| key(c) == b));
                assert!(s[below + at..].iter().all(|c| key(c) > b));
                let mut ids: Vec<u32> = s.iter().map(|c| c.id).collect();
                ids.sort_unstable();
                assert_eq!(ids, (0..len as u32).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn buckets_never_rise_with_the_logit_and_span_every_bucket() {
        for (low, top) in [
            (-30.0f32, 0.0f32),
            (1.0e-3, 2.0e-3),
            (-1.0e6, 1.0e6),
            (7.0, 7.5),
        ] {
            let per = BUCKETS as f32 / (top - low);
            let steps = 100_000;
            let mut last = usize::MAX;
            let mut seen = [false; BUCKETS];
            for i in 0..=steps {
                let x = low + (top - low) * (i as f32 / steps as f32);
                let x = x.min(top);
                let b = bucket_of(top, per, x);
                assert!(
                    b < BUCKETS && b <= last,
                    "{low} {top}: {x} -> {b} after {last}"
                );
                seen[b] = true;
                last = b;
            }
            assert_eq!(bucket_of(top, per, top), 0);
            assert_eq!(bucket_of(top, per, low), BUCKETS - 1);
            assert_eq!(bucket_of(top, per, f32::NEG_INFINITY), BUCKETS - 1);
            assert!(
                seen.iter().all(|&s| s),
                "{low} {top}: a bucket is never used"
            );
        }
    }
}
