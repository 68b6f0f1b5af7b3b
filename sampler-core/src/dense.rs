//! Passes over the whole vocabulary, sixteen logits at a time.
//!
//! Input: the dense logits and the sparse [`Overrides`]. Output: a summary
//! (top logit and candidate count), or candidates copied into scratch in id
//! order: the top `k` by rank, or every candidate whose scaled difference
//! to the top logit reaches a cut.
//! Invariants: the dense logits are only read; a chunk that holds an
//! overridden id is copied to the stack and patched, so every pass sees
//! effective logits. The tail is padded with NaN, which no pass counts or
//! copies. Inner loops are plain element-wise code over runs of whole
//! chunks so that the compiler vectorises them on baseline targets; the
//! results do not depend on how they are vectorised, since maxima and
//! counts are exact.

use crate::chain::ZERO_WEIGHT_CUT;
use crate::penalty::{Override, Overrides};
use crate::select::{keep_top, nth_desc, rank_cmp, rank_key, sort_desc};
use crate::softmax::{
    small_weight_approx, small_weight_approx3, small_weight_bits, weight_f64, weight_of, Scale,
    APPROX3_ERROR, APPROX_ERROR, CHEAP_CUT, LOW_CUT, LOW_WEIGHT_MAX, SMALL_CUT, TWO_23_BITS,
};
use crate::Candidate;

/// Logits per chunk.
pub(crate) const CHUNK: usize = 16;

/// Calls `f(first_id, run)` over the effective logits in id order.
///
/// Each run is a whole number of chunks: either a stretch of the caller's
/// logits with no override in it, or one patched copy of a chunk.
#[inline(always)]
fn for_each_run(logits: &[f32], ov: &Overrides, mut f: impl FnMut(u32, &[f32])) {
    let full = logits.len() - logits.len() % CHUNK;
    let body = logits.get(..full).unwrap_or(&[]);
    let tail = logits.get(full..).unwrap_or(&[]);
    let mut pending = ov.as_slice();
    let mut start = 0usize;
    while let Some(o) = pending.first() {
        let at = o.id() as usize - o.id() as usize % CHUNK;
        let Some(chunk) = body.get(at..at + CHUNK) else {
            break;
        };
        if at > start {
            f(start as u32, body.get(start..at).unwrap_or(&[]));
        }
        let mut patched = [0.0f32; CHUNK];
        patched.copy_from_slice(chunk);
        pending = patch(&mut patched, at as u32, pending);
        f(at as u32, &patched);
        start = at + CHUNK;
    }
    if full > start {
        f(start as u32, body.get(start..).unwrap_or(&[]));
    }
    if !tail.is_empty() {
        let mut padded = [f32::NAN; CHUNK];
        for (slot, &x) in padded.iter_mut().zip(tail) {
            *slot = x;
        }
        patch(&mut padded, full as u32, pending);
        f(full as u32, &padded);
    }
}

/// Writes the overrides that fall in the chunk at `base`; returns the rest.
fn patch<'o>(chunk: &mut [f32; CHUNK], base: u32, mut pending: &'o [Override]) -> &'o [Override] {
    while let Some((o, rest)) = pending.split_first() {
        let Some(slot) = o
            .id()
            .checked_sub(base)
            .and_then(|i| chunk.get_mut(i as usize))
        else {
            break;
        };
        *slot = o.value();
        pending = rest;
    }
    pending
}

/// The top effective logit; -inf when there is no candidate.
pub(crate) fn top(logits: &[f32], ov: &Overrides) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for_each_run(logits, ov, |_, run| {
        // NaN never wins.
        let t = block_max(run);
        m = if t > m { t } else { m };
    });
    m
}

/// Logits per block of [`argmax`] and of [`top_k_keys`].
const SCAN_BLOCK: usize = 16 * CHUNK;

/// The maximum of `block`, whose length is a multiple of [`CHUNK`]; -inf if empty.
///
/// Sixteen lanes (four registers on baseline x86-64), so that no maximum
/// waits on the one before it; NaN never wins a comparison. Two chunks per
/// step: x86's `maxps` leaves `x > a ? x : a` in the register `x` was
/// loaded into, so a loop of one chunk per step spends a register move per
/// lane group to bring the lanes back, and with two the registers simply
/// swap roles.
#[inline(always)]
fn block_max(block: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; CHUNK];
    let pairs = block.chunks_exact(2 * CHUNK);
    let rest = pairs.remainder();
    for pair in pairs {
        let (first, second) = pair.split_at(CHUNK);
        for (a, &x) in acc.iter_mut().zip(first) {
            *a = if x > *a { x } else { *a };
        }
        for (a, &x) in acc.iter_mut().zip(second) {
            *a = if x > *a { x } else { *a };
        }
    }
    for chunk in rest.chunks_exact(CHUNK) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    // Halving folds, so the lanes combine in a short tree, not a chain.
    let mut width = CHUNK / 2;
    while width > 0 {
        let (lo, hi) = acc.split_at_mut(width);
        for (a, &b) in lo.iter_mut().zip(hi.iter()) {
            *a = if b > *a { b } else { *a };
        }
        width /= 2;
    }
    let [top, ..] = acc;
    top
}

/// The maximum of one chunk; -inf if every value is NaN.
///
/// [`block_max`] on a single chunk, in fewer instructions: four lanes, each
/// first compared with -inf so that NaN never wins, then a fold of the
/// four. The passes that take a maximum per chunk of scaled differences
/// spent a fifth of their instructions in the general shape.
#[inline(always)]
fn chunk_max(chunk: &[f32; CHUNK]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 4];
    for quarter in chunk.chunks_exact(4) {
        for (a, &x) in acc.iter_mut().zip(quarter) {
            *a = if x > *a { x } else { *a };
        }
    }
    let [a, b, c, d] = acc;
    let (lo, hi) = (if c > a { c } else { a }, if d > b { d } else { b });
    if hi > lo {
        hi
    } else {
        lo
    }
}

/// The top-ranked candidate: the highest effective logit, the lowest id among equals.
///
/// One pass of block maxima. A block replaces the best only when its
/// maximum is strictly higher, so the earliest block holding the maximum
/// keeps it; that block alone is then searched for the first id equal to
/// the maximum. `None` when there is no candidate.
pub(crate) fn argmax(logits: &[f32], ov: &Overrides) -> Option<Candidate> {
    let mut best = f32::NEG_INFINITY;
    let mut home = 0usize;
    for_each_run(logits, ov, |first, run| {
        for (block, start) in run
            .chunks(SCAN_BLOCK)
            .zip((first as usize..).step_by(SCAN_BLOCK))
        {
            let m = block_max(block);
            if m > best {
                best = m;
                home = start;
            }
        }
    });
    // NaN never wins, so -inf means no candidate at all.
    if best == f32::NEG_INFINITY {
        return None;
    }
    // The block again, with its effective logits.
    let end = logits.len().min(home + SCAN_BLOCK);
    let raw = logits.get(home..end)?;
    let changed = ov.as_slice();
    let from = changed.partition_point(|o| (o.id() as usize) < home);
    let mut pending = changed.get(from..).unwrap_or(&[]).iter().peekable();
    for (id, &x) in (home as u32..).zip(raw) {
        let x = match pending.next_if(|o| o.id() == id) {
            Some(o) => o.value(),
            None => x,
        };
        // -0.0 equals +0.0 here, as rank order treats them.
        if x == best {
            return Some(Candidate { id, logit: x });
        }
    }
    None
}

/// The number of candidates: effective logits neither NaN nor -inf.
pub(crate) fn count(logits: &[f32], ov: &Overrides) -> usize {
    let mut n = 0usize;
    for_each_run(logits, ov, |_, run| {
        // One flat loop: lanes written per chunk were vectorised across
        // chunks with gathers on some targets. A run holds fewer than
        // 2^32 logits (ids are u32), so the u32 count cannot overflow.
        let c: u32 = run.iter().map(|&x| u32::from(x > f32::NEG_INFINITY)).sum();
        n += c as usize;
    });
    n
}

/// Whether [`top_k`] writes its `n` survivors in rank order: it does when they are few.
pub(crate) fn top_k_sorts(n: usize) -> bool {
    n <= KEYS_K_MAX
}

/// Copies the `min(k, candidates)` highest-ranked candidates into `scratch`; returns the count.
///
/// `k = 1` is [`argmax`]; up to [`KEYS_K_MAX`] it is [`top_k_keys`], and
/// beyond that [`top_k_scan`]. The survivors come out in rank order when
/// they are few ([`top_k_sorts`]).
pub(crate) fn top_k(logits: &[f32], ov: &Overrides, k: usize, scratch: &mut [Candidate]) -> usize {
    if k == 0 {
        return 0;
    }
    if k == 1 {
        return match (argmax(logits, ov), scratch.first_mut()) {
            (Some(top), Some(slot)) => {
                *slot = top;
                1
            }
            _ => 0,
        };
    }
    if k <= KEYS_K_MAX {
        return top_k_keys(logits, ov, k, scratch);
    }
    let n = top_k_scan(logits, ov, k, scratch);
    if top_k_sorts(n) {
        // Few candidates for a large k: order them as the keyed path does.
        crate::select::sort_by_rank(scratch.get_mut(..n).unwrap_or(&mut []));
    }
    n
}

/// [`top_k`] for large `k`, in no particular order.
///
/// A threshold scan over the caller's logits: a chunk is looked at element
/// by element only when some logit in it beats the current threshold; when
/// the buffer fills, it is cut back to the best `k` by selection and the
/// threshold rises to the k-th best logit. Since chunks come in id order, a
/// later logit equal to that threshold always loses the tie, so the strict
/// comparison is exact. The scan starts from [`seed`]'s lower bound instead
/// of -inf, so that the buffer does not fill with the first few hundred
/// logits.
///
/// Overridden ids are left out of the scan (their raw logits do not count)
/// and join afterwards with their changed logits; the best `k` of the scan
/// and the overrides together are the best `k` overall. This keeps the scan
/// one unbroken pass however many ids the penalty window names.
pub(crate) fn top_k_scan(
    logits: &[f32],
    ov: &Overrides,
    k: usize,
    scratch: &mut [Candidate],
) -> usize {
    let changed = ov.as_slice();
    // Room for at least one chunk beyond k before the buffer is cut back.
    let room = scratch.len().min(k.saturating_mul(4).max(k + 256));
    let mut t = below(seed(logits, ov, k, scratch));

    // The overrides enter first, with their changed logits: penalised
    // tokens are often the likeliest, and their k-th best raises the
    // threshold before the scan starts. Since they are not in id order, a
    // later logit equal to the threshold may still win a tie on its id, so
    // from here on the test admits equality (`below` gives the float just
    // under the threshold).
    let mut n = 0usize;
    for o in changed {
        // NaN fails the comparison, so it never becomes a candidate.
        if o.value() > f32::NEG_INFINITY {
            if let Some(slot) = scratch.get_mut(n) {
                *slot = Candidate {
                    id: o.id(),
                    logit: o.value(),
                };
                n += 1;
            }
        }
    }
    let inclusive = n > 0;
    if n >= k {
        let live = scratch.get_mut(..n).unwrap_or(&mut []);
        keep_top(live, k);
        n = k;
        if let Some(kth) = live
            .get(..k)
            .unwrap_or(&[])
            .iter()
            .max_by(|a, b| rank_cmp(a, b))
        {
            let bound = below(kth.logit);
            t = if bound > t { bound } else { t };
        }
    }
    let full = logits.len() - logits.len() % CHUNK;
    let body = logits.get(..full).unwrap_or(&[]);
    let mut padded = [f32::NAN; CHUNK];
    for (slot, &x) in padded.iter_mut().zip(logits.get(full..).unwrap_or(&[])) {
        *slot = x;
    }
    // Overrides before this index lie behind the scan.
    let mut next = 0usize;
    let mut at = 0usize;
    loop {
        let rest = body.get(at..).unwrap_or(&[]);
        let chunk: &[f32; CHUNK] = match next_hit(rest, t) {
            Some(skip) => {
                at += skip * CHUNK;
                let slice = body.get(at..at + CHUNK).unwrap_or(&[]);
                match <&[f32; CHUNK]>::try_from(slice) {
                    Ok(chunk) => chunk,
                    Err(_) => break,
                }
            }
            None if at <= full => {
                // The tail, padded with NaN; taken once.
                at = full;
                &padded
            }
            None => break,
        };
        if n + CHUNK > room && n > k {
            let live = scratch.get_mut(..n).unwrap_or(&mut []);
            keep_top(live, k);
            n = k;
            let kth = live
                .get(..k)
                .unwrap_or(&[])
                .iter()
                .max_by(|a, b| rank_cmp(a, b));
            t = match kth {
                Some(c) if inclusive => below(c.logit),
                Some(c) => c.logit,
                None => t,
            };
        }
        while changed.get(next).is_some_and(|o| (o.id() as usize) < at) {
            next += 1;
        }
        let first = at as u32;
        let ahead = changed.get(next..).unwrap_or(&[]);
        n = if ahead
            .first()
            .is_some_and(|o| (o.id() as usize) < at + CHUNK)
        {
            append_unchanged(scratch, n, first, chunk, t, ahead)
        } else {
            append_above(scratch, n, first, chunk, t)
        };
        at += CHUNK;
        if at > full {
            break;
        }
    }

    if n > k {
        keep_top(scratch.get_mut(..n).unwrap_or(&mut []), k);
        n = k;
    }
    n
}

/// Candidates held as packed rank keys on the stack by [`top_k_keys`].
const KEYS: usize = 128;

/// Largest `k` that [`top_k_keys`] takes: the key buffer and the block pool
/// need room well beyond `k`, or they would be cut back too often.
const KEYS_K_MAX: usize = 64;

/// The candidate a rank key was made from, but with -0.0 read back as +0.0.
#[inline(always)]
fn unkey(key: u64) -> Candidate {
    Candidate {
        id: !(key as u32),
        logit: unordered((key >> 32) as u32),
    }
}

/// The float whose [`ordered`] integer is `key`.
#[inline(always)]
fn unordered(key: u32) -> f32 {
    // The top bit set stands for a float that is not negative: only the
    // sign is flipped back; otherwise every bit is.
    let negative = !(((key as i32) >> 31) as u32);
    f32::from_bits(key ^ (negative | 0x8000_0000))
}

/// A float's bits mapped to an unsigned integer of the same order; -0.0 below +0.0.
#[inline(always)]
fn ordered(x: f32) -> u32 {
    let bits = x.to_bits();
    // Every bit flipped for a negative float, only the sign for the others;
    // the sign spread over the word picks which, without a branch.
    let negative = ((bits as i32) >> 31) as u32;
    bits ^ (negative | 0x8000_0000)
}

/// Rank keys of the best candidates seen, with a threshold that rises as they are cut back.
struct Keys {
    keys: [u64; KEYS],
    n: usize,
    k: usize,
    /// Candidates not above this logit cannot enter the best `k`.
    t: f32,
}

impl Keys {
    /// An empty buffer for the best `k` of the logits above `t`.
    fn new(k: usize, t: f32) -> Self {
        Keys {
            keys: [0; KEYS],
            n: 0,
            k,
            t,
        }
    }

    /// Keeps the best `k` keys, unordered, and raises the threshold below the k-th.
    fn cut(&mut self) {
        let k = self.k;
        let Some(live) = self.keys.get_mut(..self.n) else {
            return;
        };
        if live.len() <= k {
            return;
        }
        nth_desc(live, k - 1);
        self.n = k;
        if let Some(&kth) = live.get(k - 1) {
            // Not above the k-th: a later logit equal to it may still win
            // the tie on a lower id.
            let bound = below(unkey(kth).logit);
            self.t = if bound > self.t { bound } else { self.t };
        }
    }

    /// Adds one candidate, cutting back first when the buffer is full.
    fn push(&mut self, id: u32, x: f32) {
        if self.n == KEYS {
            self.cut();
        }
        if let Some(slot) = self.keys.get_mut(self.n) {
            *slot = rank_key(&Candidate { id, logit: x });
            self.n += 1;
        }
    }

    /// Adds the logits of `chunk` above the threshold that `keep` accepts,
    /// `first` being the id of its first.
    ///
    /// `skip` has a bit set for each lane whose raw logit must not count.
    /// A chunk holds few logits above the threshold, so only those are
    /// visited, through a bit mask built without branches.
    #[inline(always)]
    fn append(&mut self, first: u32, chunk: &[f32; CHUNK], skip: u32, keep: impl Fn(f32) -> bool) {
        let t = self.t;
        let mut mask = 0u32;
        for (i, &x) in chunk.iter().enumerate() {
            mask |= u32::from(x > t && keep(x)) << i;
        }
        mask &= !skip;
        while mask != 0 {
            let lane = mask.trailing_zeros();
            mask &= mask - 1;
            if let Some(&x) = chunk.get(lane as usize) {
                self.push(first + lane, x);
            }
        }
    }
}

/// Entries of the block pool of [`top_k_keys`].
const POOL: usize = 128;

/// What a pool entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A block with no override: its maximum is an effective logit.
    Block,
    /// A block holding overrides, with the maximum of its other ids.
    Mixed,
    /// One overridden id and its effective logit.
    Changed,
}

/// Tag bit of a pool entry that stands for an override; the rest of the
/// tag is the override's place in the list.
const TAG_CHANGED: u32 = 1 << 31;

/// Tag bit of a pool entry for a block that holds overrides; the tag's low
/// bits are the block's index, below 2^24 since ids are `u32`.
const TAG_MIXED: u32 = 1 << 30;

/// Tag bits that hold a block's index or an override's place.
const TAG_INDEX: u32 = TAG_MIXED - 1;

/// A pool entry: the [`ordered`] bits of its maximum in the high half, its
/// tag in the low half.
///
/// One integer per entry, so that the pass stores one word per block, and
/// cutting the pool back moves one word per entry and selects on the
/// entries themselves. Entries are distinct (each block and each override
/// has its own tag), and they order as their maxima do.
#[inline(always)]
fn entry(max: f32, tag: u32) -> u64 {
    u64::from(ordered(max)) << 32 | u64::from(tag)
}

/// The maximum an entry holds.
#[inline(always)]
fn entry_max(e: u64) -> f32 {
    unordered((e >> 32) as u32)
}

/// What an entry stands for, and its block's first id or its override's place.
#[inline(always)]
fn entry_source(e: u64) -> (Source, u32) {
    let tag = e as u32;
    if tag & TAG_CHANGED != 0 {
        (Source::Changed, tag & TAG_INDEX)
    } else if tag & TAG_MIXED != 0 {
        (Source::Mixed, (tag & TAG_INDEX) * SCAN_BLOCK as u32)
    } else {
        (Source::Block, (tag & TAG_INDEX) * SCAN_BLOCK as u32)
    }
}

/// The least entry above every entry whose maximum is `t` or less.
///
/// An entry's maximum is above `t` exactly when the entry is above this,
/// for every threshold but -0.0: that one compares equal to +0.0 as a
/// float, yet +0.0 has the higher [`ordered`] bits. Thresholds are -inf or
/// come from [`below`], which never returns -0.0 (it may return +0.0).
#[inline(always)]
fn entry_floor(t: f32) -> u64 {
    u64::from(ordered(t)) << 32 | u64::from(u32::MAX)
}

/// The maximum of `block` (ids from `first`) over the ids not in `changed`.
///
/// `changed` is sorted by id and starts at or after `first`; -inf when
/// every id is overridden. The raw logits of overridden ids are left out,
/// so the result is an effective logit of some other id.
fn unchanged_max(block: &[f32], first: u32, mut changed: &[Override]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; CHUNK];
    for (chunk, at) in block.chunks_exact(CHUNK).zip((first..).step_by(CHUNK)) {
        let mut lanes = [f32::NEG_INFINITY; CHUNK];
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = x;
        }
        while let Some((o, rest)) = changed.split_first() {
            match o
                .id()
                .checked_sub(at)
                .and_then(|i| lanes.get_mut(i as usize))
            {
                Some(l) => *l = f32::NEG_INFINITY,
                None => break,
            }
            changed = rest;
        }
        // Lane by lane, so the maxima vectorise; NaN never wins.
        for (a, &x) in acc.iter_mut().zip(&lanes) {
            *a = if x > *a { x } else { *a };
        }
    }
    block_max(&acc)
}

/// A pool's count, threshold and batch start (see [`Pool::offer_with`]).
#[derive(Clone, Copy)]
struct Fill {
    n: usize,
    t: f32,
    batch: usize,
    /// The count at which the rare upkeep is due: a batch of `k` counted
    /// entries, or a full pool, whichever comes first.
    due: usize,
}

/// Blocks (and changed logits) that may hold one of the best `k`, with a
/// threshold no higher than the k-th best effective logit.
struct Pool {
    /// The counted entries first (see [`entry`]): in the order they came,
    /// until a cut selects among them in place.
    entries: [u64; POOL],
    n: usize,
    k: usize,
    /// Everything not above it is out.
    t: f32,
    /// Where the entries since the threshold last rose by a batch start.
    batch: usize,
    /// Set when the pool filled with entries it could not drop (many
    /// blocks tied at the threshold); the result is then found another way.
    overflow: bool,
}

impl Pool {
    /// An empty pool for the best `k`, with no threshold yet.
    fn new(k: usize) -> Self {
        Pool {
            entries: [0; POOL],
            n: 0,
            k,
            t: f32::NEG_INFINITY,
            batch: 0,
            overflow: false,
        }
    }

    /// The counted entries.
    fn live(&self) -> &[u64] {
        self.entries.get(..self.n).unwrap_or(&[])
    }

    /// The maxima of the counted entries, in pool order, written to `out`.
    fn maxima<'o>(&self, out: &'o mut [f32; POOL]) -> &'o [f32] {
        for (m, &e) in out.iter_mut().zip(self.live()) {
            *m = entry_max(e);
        }
        out.get(..self.n).unwrap_or(&[])
    }

    /// The count, threshold and batch start, for a pass to carry.
    fn fill(&self) -> Fill {
        Fill {
            n: self.n,
            t: self.t,
            batch: self.batch,
            due: (self.batch + self.k).min(POOL),
        }
    }

    /// Takes back what a pass carried.
    fn set_fill(&mut self, fill: Fill) {
        self.n = fill.n;
        self.t = fill.t;
        self.batch = fill.batch;
    }

    /// [`Pool::offer_with`] on the pool's own count, threshold and batch start.
    #[cfg(test)]
    fn offer(&mut self, max: f32, start: u32, mixed: bool) {
        let fill = self.offer_with(self.fill(), max, start, mixed);
        self.set_fill(fill);
    }

    /// Adds a block if its maximum beats the threshold in `fill`, without a branch on that test.
    ///
    /// `start`, the block's first id, is a multiple of [`SCAN_BLOCK`].
    /// `fill` stands in for the pool's count, threshold and batch start,
    /// which are stale until [`Pool::set_fill`] sets them back; the
    /// updated `fill` is returned.
    ///
    /// Blocks enter in no predictable pattern, so the entry is written
    /// every time and only the count moves on the test; the rare upkeep
    /// (a full pool, a batch of `k` counted entries) is a branch apart.
    /// Carried apart from the pool, the three stay in registers through
    /// the pass: kept in the pool, they went through memory every block,
    /// since the upkeep call may change them.
    #[inline(always)]
    fn offer_with(&mut self, mut fill: Fill, max: f32, start: u32, mixed: bool) -> Fill {
        let enter = max > fill.t;
        let tag = (start / SCAN_BLOCK as u32) | (u32::from(mixed) * TAG_MIXED);
        if let Some(slot) = self.entries.get_mut(fill.n.min(POOL - 1)) {
            *slot = entry(max, tag);
        }
        fill.n += usize::from(enter);
        if fill.n == fill.due {
            self.set_fill(fill);
            self.settle();
            fill = self.fill();
        }
        fill
    }

    /// Raises the threshold below the least of the last batch of `k` entries, and makes room.
    ///
    /// The batch holds `k` distinct tokens at their maxima, so the k-th
    /// best effective logit is at least the least of them.
    #[cold]
    fn settle(&mut self) {
        if self.n - self.batch == self.k {
            let least = self
                .entries
                .get(self.batch..self.n)
                .unwrap_or(&[])
                .iter()
                .fold(u64::MAX, |a, &e| a.min(e));
            let bound = below(entry_max(least));
            self.t = if bound > self.t { bound } else { self.t };
            self.batch = self.n;
        }
        if self.n == POOL {
            // Entries came in above the threshold of their time, and few
            // fall under a later one: the pool is cut back at once.
            self.cut();
            if self.n == POOL {
                self.overflow = true;
                // Later entries overwrite the last slot; the caller looks
                // at `overflow` before using the pool.
                self.n = POOL - 1;
            }
            self.batch = self.n;
        }
    }

    /// Adds the changed logit of the override at `place` in the list.
    fn push_changed(&mut self, x: f32, place: u32) {
        // NaN fails the comparison, so it never becomes a candidate. As in
        // `offer_with`, the entry is written every time and only the count
        // moves on the test: which changed logits enter follows no pattern.
        let enter = x > self.t;
        if let Some(slot) = self.entries.get_mut(self.n.min(POOL - 1)) {
            *slot = entry(x, TAG_CHANGED | place);
        }
        self.n += usize::from(enter);
        if self.n - self.batch == self.k || self.n == POOL {
            self.settle();
        }
    }

    /// Raises the threshold to the k-th highest maximum and drops what falls under it.
    ///
    /// Each entry holds a distinct token at its maximum (blocks do not
    /// overlap, and changed ids are left out of the maxima of blocks), so
    /// at least `k` tokens reach the k-th highest of them.
    fn cut(&mut self) {
        let k = self.k;
        let counted = self.entries.get_mut(..self.n).unwrap_or(&mut []);
        if counted.len() >= k {
            nth_desc(counted, k - 1);
            if let Some(&kth) = counted.get(k - 1) {
                let bound = below(entry_max(kth));
                self.t = if bound > self.t { bound } else { self.t };
            }
        }
        self.drop_below();
    }

    /// Drops the entries whose maximum is not above the threshold.
    fn drop_below(&mut self) {
        let floor = entry_floor(self.t);
        let mut kept = 0usize;
        for i in 0..self.n {
            let Some(&e) = self.entries.get(i) else {
                break;
            };
            // Written every time, kept only above the threshold: which
            // entries stay follows no pattern.
            if let Some(slot) = self.entries.get_mut(kept) {
                *slot = e;
            }
            kept += usize::from(e > floor);
        }
        self.n = kept;
    }
}

/// Bit `i` set for each chunk `i` of `block` holding a logit above `t`.
///
/// `block` holds at most [`SCAN_BLOCK`] logits; any beyond are not looked at.
///
/// Two shapes of the same test; which one is fastest depends on the target
/// features the crate is compiled with, not on the data, and both give the
/// same mask.
#[inline(always)]
fn chunks_above(block: &[f32], t: f32) -> u32 {
    if cfg!(target_feature = "avx512f") {
        chunks_above_flat(block, t)
    } else {
        chunks_above_by_chunk(block, t)
    }
}

/// [`chunks_above`] chunk by chunk: vectorised within each chunk on
/// baseline x86-64, where this shape is the faster.
#[inline(always)]
fn chunks_above_by_chunk(block: &[f32], t: f32) -> u32 {
    let mut hits = 0u32;
    for (i, chunk) in block
        .chunks_exact(CHUNK)
        .take(SCAN_BLOCK / CHUNK)
        .enumerate()
    {
        let mut hit = false;
        for &x in chunk {
            hit |= x > t;
        }
        hits |= u32::from(hit) << i;
    }
    hits
}

/// [`chunks_above`] as a flag byte per logit, then each chunk's sixteen
/// flags read as one integer. With AVX-512 the chunk-by-chunk shape is
/// vectorised across chunks with gathers and runs several times slower.
#[inline(always)]
fn chunks_above_flat(block: &[f32], t: f32) -> u32 {
    let mut flags = [0u8; SCAN_BLOCK];
    for (f, &x) in flags.iter_mut().zip(block) {
        *f = u8::from(x > t);
    }
    let mut hits = 0u32;
    for (i, f) in flags.chunks_exact(CHUNK).enumerate() {
        let word = <[u8; CHUNK]>::try_from(f).map_or(0, u128::from_ne_bytes);
        hits |= u32::from(word != 0) << i;
    }
    hits
}

/// [`top_k`] for `2 <= k <= KEYS_K_MAX`, in rank order.
///
/// Two phases. First, [`block_pool`] takes the maximum of each block of
/// [`SCAN_BLOCK`] logits in one pass and keeps the blocks that may hold
/// one of the best `k`. Second, only the blocks left in the pool are read
/// again, and their logits above the pool's threshold become packed rank
/// keys, which compare as plain integers; the best `k` of them are
/// written to `scratch` in rank order. Returns the count.
fn top_k_keys(logits: &[f32], ov: &Overrides, k: usize, scratch: &mut [Candidate]) -> usize {
    let mut pool = block_pool(logits, ov, k);
    if pool.overflow {
        return top_k_overflow(logits, ov, k, scratch);
    }
    let mut held = Keys::new(k, f32::NEG_INFINITY);
    best_of_pool(logits, ov, &mut pool, &mut held, scratch)
}

/// The second phase of [`top_k_keys`] in full: cuts the pool back, reads
/// its entries into `held` (emptied first) and writes the best `k` to
/// `scratch` in rank order; returns the count.
#[inline(always)]
fn best_of_pool(
    logits: &[f32],
    ov: &Overrides,
    pool: &mut Pool,
    held: &mut Keys,
    scratch: &mut [Candidate],
) -> usize {
    pool.cut();
    held.n = 0;
    held.t = pool.t;
    pool_keys(logits, ov, pool, |_| true, |_| true, held);
    write_keys(logits, ov, held, pool.k, scratch)
}

/// The pool's fallback: [`top_k_scan`], sorted.
#[cold]
fn top_k_overflow(logits: &[f32], ov: &Overrides, k: usize, scratch: &mut [Candidate]) -> usize {
    let n = top_k_scan(logits, ov, k, scratch);
    crate::select::sort_by_rank(scratch.get_mut(..n).unwrap_or(&mut []));
    n
}

/// The first phase of [`top_k_keys`]: the pool of blocks that may hold one of the best `k`.
///
/// One pass takes the maximum of each block of [`SCAN_BLOCK`] logits and
/// keeps, in the pool, the blocks whose maximum beats a threshold; the
/// threshold rises to the k-th highest maximum kept, since k blocks
/// reaching it hold k tokens reaching it. A block holding an overridden id
/// enters with the maximum of its other ids, computed only when its raw
/// maximum beats the threshold; the overrides enter with their changed
/// logits. On return (unless the pool overflowed) every candidate not in
/// one of its entries, nor among the last ids (fewer than a chunk, in no
/// block), lies at or below its threshold; each entry's maximum is the
/// effective logit of a distinct token above it; and unless the threshold
/// is still -inf, at least `k` tokens lie above it. [`Pool::cut`] then
/// raises the threshold to just below the k-th highest maximum, for a
/// second look that reads as few blocks as the best `k` need.
#[inline(always)]
fn block_pool(logits: &[f32], ov: &Overrides, k: usize) -> Pool {
    let changed = ov.as_slice();
    let mut pool = Pool::new(k);
    let mut fill = pool.fill();
    let full = logits.len() - logits.len() % CHUNK;
    let body = logits.get(..full).unwrap_or(&[]);
    let mut next = 0usize;
    for (block, start) in body.chunks(SCAN_BLOCK).zip((0usize..).step_by(SCAN_BLOCK)) {
        let m = block_max(block);
        while changed.get(next).is_some_and(|o| (o.id() as usize) < start) {
            next += 1;
        }
        let mixed = changed
            .get(next)
            .is_some_and(|o| (o.id() as usize) < start + block.len());
        if mixed && m > fill.t {
            // The raw maximum may be an overridden logit; what counts is
            // the maximum of the other ids, which is an effective logit.
            // When no overridden id holds the raw maximum, another id does
            // and it stands; only otherwise is the block read again.
            let ahead = changed.get(next..).unwrap_or(&[]);
            let end = start + block.len();
            let raw = |o: &Override| block.get((o.id() as usize).wrapping_sub(start)).copied();
            let held = ahead
                .iter()
                .take_while(|o| (o.id() as usize) < end)
                .any(|o| raw(o) == Some(m));
            let max = if held {
                unchanged_max(block, start as u32, ahead)
            } else {
                m
            };
            fill = pool.offer_with(fill, max, start as u32, true);
        } else {
            fill = pool.offer_with(fill, m, start as u32, mixed);
        }
    }
    pool.set_fill(fill);
    // After the blocks, when the threshold has risen: most changed logits
    // are penalised ones, and few of them are still above it.
    for (o, place) in changed.iter().zip(0u32..) {
        pool.push_changed(o.value(), place);
    }
    pool
}

/// The second phase of [`top_k_keys`]: adds to `held` the rank keys of
/// the logits above its threshold that `keep` accepts, from the pool's
/// entries whose maximum `accept` accepts and from the last ids.
///
/// `accept` must accept the maximum of every entry that holds a logit
/// `keep` accepts. The keys are not cut back: with more than `k` of them,
/// the buffer holds the best `k` and possibly more.
#[inline(always)]
fn pool_keys(
    logits: &[f32],
    ov: &Overrides,
    pool: &Pool,
    accept: impl Fn(f32) -> bool,
    keep: impl Fn(f32) -> bool + Copy,
    held: &mut Keys,
) {
    let changed = ov.as_slice();
    let full = logits.len() - logits.len() % CHUNK;
    let body = logits.get(..full).unwrap_or(&[]);
    for &e in pool.live() {
        let max = entry_max(e);
        if !accept(max) {
            continue;
        }
        let (source, start) = entry_source(e);
        if source == Source::Changed {
            if let (Some(o), true) = (changed.get(start as usize), keep(max)) {
                held.push(o.id(), max);
            }
            continue;
        }
        let from = start as usize;
        let block = body.get(from..full.min(from + SCAN_BLOCK)).unwrap_or(&[]);
        let mut pending = if source == Source::Mixed {
            let at = changed.partition_point(|o| (o.id() as usize) < from);
            changed.get(at..).unwrap_or(&[])
        } else {
            &[]
        };
        // Which chunks hold a logit above the threshold, found without a
        // branch per chunk; few do.
        let mut hits = chunks_above(block, held.t);
        while hits != 0 {
            let i = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            let first = start + (i * CHUNK) as u32;
            let mut skip = 0u32;
            while let Some((o, rest)) = pending.split_first() {
                if o.id() < first {
                    pending = rest;
                    continue;
                }
                match o.id().checked_sub(first).filter(|&l| (l as usize) < CHUNK) {
                    Some(lane) => skip |= 1 << lane,
                    None => break,
                }
                pending = rest;
            }
            let chunk = block.get(i * CHUNK..i * CHUNK + CHUNK).unwrap_or(&[]);
            if let Ok(chunk) = <&[f32; CHUNK]>::try_from(chunk) {
                held.append(first, chunk, skip, keep);
            }
        }
    }
    // The last ids, fewer than a chunk, take part in no block.
    let (padded, skip) = tail(logits, ov);
    held.append(full as u32, &padded, skip, keep);
}

/// The last ids (fewer than a chunk, in no block), padded with NaN, and a
/// bit set for each of them that is overridden.
fn tail(logits: &[f32], ov: &Overrides) -> ([f32; CHUNK], u32) {
    let changed = ov.as_slice();
    let full = logits.len() - logits.len() % CHUNK;
    let rest = logits.get(full..).unwrap_or(&[]);
    let from = changed.partition_point(|o| (o.id() as usize) < full);
    let mut skip = 0u32;
    for o in changed.get(from..).unwrap_or(&[]) {
        skip |= 1u32
            .checked_shl(o.id().wrapping_sub(full as u32))
            .unwrap_or(0);
    }
    let mut padded = [f32::NAN; CHUNK];
    for (slot, &x) in padded.iter_mut().zip(rest) {
        *slot = x;
    }
    (padded, skip)
}

/// Writes the best `k` of `held` to `scratch` in rank order; returns the count.
fn write_keys(
    logits: &[f32],
    ov: &Overrides,
    held: &mut Keys,
    k: usize,
    scratch: &mut [Candidate],
) -> usize {
    held.cut();
    let n = held.n.min(k);
    let best = held.keys.get_mut(..n).unwrap_or(&mut []);
    sort_desc(best);
    for (slot, &key) in scratch.iter_mut().zip(best.iter()) {
        let mut c = unkey(key);
        if c.logit == 0.0 {
            // The key lost the sign of a zero; the logit itself still has it.
            c.logit = effective(logits, ov, c.id);
        }
        *slot = c;
    }
    n.min(scratch.len())
}

/// What [`top_k_min_p`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TopKHead {
    /// The `n` candidates whose scaled difference reaches the cut, fewer
    /// than `k` and all of them among the best `k`, in rank order, and
    /// accepted by the caller.
    Cut(usize),
    /// The best `k` in rank order, as [`top_k`] writes them (`n` of them).
    TopK(usize),
}

/// What [`top_k_min_p`] shows its caller before settling on a cut.
pub(crate) struct Head<'a> {
    /// The candidates whose scaled difference reaches the cut, in rank order.
    pub few: &'a [Candidate],
    /// The scale of the best `k`: their top logit and `inv_t`.
    pub scale: Scale,
    /// A lower bound on the total weight of the best `k` outside `few`,
    /// or, when `bound` is false, the most any such bound can be: an
    /// answer to that is only a hint, and a refusal ends the asking.
    pub rest: u64,
    /// Whether `rest` is a lower bound. The answer is the same either way;
    /// the tests read it to check each bound against the exact weight.
    #[cfg_attr(not(test), allow(dead_code))]
    pub bound: bool,
}

/// Top-k followed by a cut on the scaled difference (min-p), reading
/// again only the blocks that can hold a token above the cut.
///
/// After [`block_pool`]'s pass the top logit `m` is known. With half of
/// `k` or more entries reaching the cut `(x - m) * inv_t >= cut`, the
/// result is the best `k` at once. Otherwise the candidates above the
/// pool's threshold that reach the cut are collected from the entries
/// whose maximum reaches it. When they are `k` or more, the best `k` all
/// reach the cut and are the best `k` of them. Otherwise they are every
/// candidate reaching the cut (another would lie at or below the
/// threshold, under at least `k` tokens that would then reach the cut
/// too), and all of them are among the best `k`. They are shown to
/// `accept`, in rank order, first alone; then with the most any bound
/// could add (if it refuses that, no bound would do); then with lower
/// bounds on the weight the rest of the best `k` adds to them: the
/// weights of the entries below the cut first met in the pool, then of the
/// highest ones, each a distinct token, as many as the best `k` has
/// places left, less a margin for the exponential's error, which could
/// otherwise make a lower logit weigh a unit more. When `accept` agrees
/// to a bound, the result is [`TopKHead::Cut`]; otherwise the best `k` as
/// [`top_k`] gives them, found by adding what lies below the cut to the
/// keys already held.
pub(crate) fn top_k_min_p(
    logits: &[f32],
    ov: &Overrides,
    k: usize,
    inv_t: f32,
    cut: f32,
    scratch: &mut [Candidate],
    mut accept: impl FnMut(Head<'_>) -> bool,
) -> TopKHead {
    if !(2..=KEYS_K_MAX).contains(&k) {
        return TopKHead::TopK(top_k(logits, ov, k, scratch));
    }
    let mut pool = block_pool(logits, ov, k);
    if pool.overflow {
        return TopKHead::TopK(top_k_overflow(logits, ov, k, scratch));
    }
    let (padded, skip) = tail(logits, ov);
    let mut decoded = [0.0f32; POOL];
    let entries = pool.maxima(&mut decoded);
    let mut m = f32::NEG_INFINITY;
    for &x in entries {
        m = if x > m { x } else { m };
    }
    for (i, &x) in padded.iter().enumerate() {
        let x = if skip & (1 << i) == 0 { x } else { f32::NAN };
        m = if x > m { x } else { m };
    }
    let mut held = Keys::new(k, pool.t);
    if !m.is_finite() {
        return TopKHead::TopK(best_of_pool(logits, ov, &mut pool, &mut held, scratch));
    }
    let scale = Scale {
        inv_t,
        ..Scale::new(m)
    };
    let reach = move |x: f32| scale.d(x) >= cut;
    // How many entries reach the cut, and the highest of the others.
    let (mut reaching, mut high) = (0usize, f32::NEG_INFINITY);
    for &x in entries {
        let r = reach(x);
        reaching += usize::from(r);
        // Reaching entries become NaN or -inf, which never win.
        let x = f32::from_bits(x.to_bits() | (u32::from(r).wrapping_neg() & 0xff80_0000));
        high = if x > high { x } else { high };
    }
    if reaching * 2 >= k {
        // Each of these entries holds a token reaching the cut: with k or
        // more of them the best k all reach it, and with half as many the
        // few would rarely settle top-p, so the best k are found at once.
        #[cfg(test)]
        tests::count_fused(3);
        return TopKHead::TopK(best_of_pool(logits, ov, &mut pool, &mut held, scratch));
    }
    held.t = held.t.max(raw_floor(m, inv_t, cut));
    pool_keys(logits, ov, &pool, reach, reach, &mut held);
    if held.n >= k {
        // The best k all reach the cut, so they are the best k of these.
        #[cfg(test)]
        tests::count_fused(3);
        return TopKHead::TopK(write_keys(logits, ov, &mut held, k, scratch));
    }
    let n = write_keys(logits, ov, &mut held, k, scratch);
    let few = scratch.get(..n).unwrap_or(&[]);
    let mut settles = |rest: u64, bound: bool| {
        accept(Head {
            few,
            scale,
            rest,
            bound,
        })
    };
    // Most often the few settle it alone; the bound costs an exponential
    // per entry.
    if settles(0, true) {
        #[cfg(test)]
        tests::count_fused(0);
        return TopKHead::Cut(n);
    }
    // Any `k - n` entries below the cut bound the rest of the best k from
    // below. Those met first in the pool usually suffice, so their
    // weights are added in pool order, asking again after 1, 2, 4, ...;
    // only if they fall short are the highest `k - n` selected.
    let places = k - n;
    // No bound can exceed `places` times the highest entry's weight: if
    // that is not enough, none is.
    let most = (places as u64).saturating_mul(scale.weight(high));
    if !settles(most, false) {
        return refused(logits, ov, &mut pool, &mut held, reach, k, scratch);
    }
    let (mut rest, mut taken, mut next_ask) = (0u64, 0usize, 1usize);
    let mut below = 0usize;
    for &x in entries {
        if reach(x) {
            continue;
        }
        below += 1;
        if taken == places {
            continue;
        }
        rest += lower_weight(&scale, x);
        taken += 1;
        if taken == next_ask || taken == places {
            if settles(rest, true) {
                #[cfg(test)]
                tests::count_fused(1);
                return TopKHead::Cut(n);
            }
            next_ask *= 2;
        }
    }
    if below > places && settles(rest_weight(entries, places, &scale, cut), true) {
        #[cfg(test)]
        tests::count_fused(4);
        return TopKHead::Cut(n);
    }
    refused(logits, ov, &mut pool, &mut held, reach, k, scratch)
}

/// The end of [`top_k_min_p`] when its caller refused the few: the best
/// `k`, found by adding to the keys of the few (all of them above the
/// threshold of the cut-back pool) what lies below the cut.
fn refused(
    logits: &[f32],
    ov: &Overrides,
    pool: &mut Pool,
    held: &mut Keys,
    reach: impl Fn(f32) -> bool,
    k: usize,
    scratch: &mut [Candidate],
) -> TopKHead {
    #[cfg(test)]
    tests::count_fused(2);
    pool.cut();
    held.t = pool.t;
    pool_keys(logits, ov, pool, |_| true, |x| !reach(x), held);
    TopKHead::TopK(write_keys(logits, ov, held, k, scratch))
}

/// A logit below every `x` with `(x - m) * inv_t >= cut`, for a finite `m`
/// and a cut between about -104 and 0 (min-p's, for any `min_p` in (0, 1]).
///
/// A hundredth of a nat lower than the cut in exact arithmetic, which is
/// far more than the two roundings of the scaled difference can move it
/// (a relative 2^-23 of at most 104), then rounded down to a float and
/// stepped down once more, so that the test stays strict.
fn raw_floor(m: f32, inv_t: f32, cut: f32) -> f32 {
    let r = f64::from(m) + (f64::from(cut) - 0.01) / f64::from(inv_t);
    below(r as f32)
}

/// A lower bound on the weight of `places` tokens ranked just below the cut:
/// the weights of the `places` highest of the pool's maxima (`entries`)
/// below it, each less `2^-16` of itself and one unit.
///
/// The exponential is within about `3e-7` of `e^d` (relative), so a token
/// ranked at or above an entry weighs at least the entry's weight less
/// twice that and a unit of rounding; the margin is far more.
fn rest_weight(entries: &[f32], places: usize, scale: &Scale, cut: f32) -> u64 {
    let mut keys = [0u32; POOL];
    let mut n = 0usize;
    for &x in entries {
        if scale.d(x) < cut {
            if let Some(slot) = keys.get_mut(n) {
                *slot = ordered(x);
                n += 1;
            }
        }
    }
    let below = keys.get_mut(..n).unwrap_or(&mut []);
    if below.len() > places {
        nth_desc(below, places.saturating_sub(1));
    }
    below
        .iter()
        .take(places)
        .map(|&key| lower_weight(scale, unordered(key)))
        .sum()
}

/// The weight of `x` less `2^-16` of itself and one unit: at most the
/// weight of any logit at or above `x` (see [`rest_weight`]).
#[inline(always)]
fn lower_weight(scale: &Scale, x: f32) -> u64 {
    let w = scale.weight(x);
    w.saturating_sub((w >> 16) + 1)
}

/// The effective logit of `id`, which must be in the vocabulary.
fn effective(logits: &[f32], ov: &Overrides, id: u32) -> f32 {
    let changed = ov.as_slice();
    match changed.binary_search_by_key(&id, |o| o.id()) {
        Ok(i) => changed.get(i).map_or(f32::NAN, |o| o.value()),
        Err(_) => logits.get(id as usize).copied().unwrap_or(f32::NAN),
    }
}

/// Appends the elements of `chunk` above `t` whose ids are not in `changed`.
///
/// `changed` is sorted by id and starts at or after `first`. Branch-free
/// like [`append_above`], with the overridden lanes masked out.
fn append_unchanged(
    scratch: &mut [Candidate],
    mut n: usize,
    first: u32,
    chunk: &[f32; CHUNK],
    t: f32,
    changed: &[Override],
) -> usize {
    let mut skip = [false; CHUNK];
    for o in changed {
        let lane = o
            .id()
            .checked_sub(first)
            .and_then(|i| skip.get_mut(i as usize));
        match lane {
            Some(lane) => *lane = true,
            None => break,
        }
    }
    if let Some(window) = scratch.get_mut(n..n + CHUNK) {
        let mut end = 0usize;
        for ((id, &x), &skipped) in (first..).zip(chunk).zip(&skip) {
            if let Some(slot) = window.get_mut(end) {
                *slot = Candidate { id, logit: x };
            }
            end += usize::from(x > t && !skipped);
        }
        return n + end;
    }
    for ((id, &x), &skipped) in (first..).zip(chunk).zip(&skip) {
        if x > t && !skipped {
            if let Some(slot) = scratch.get_mut(n) {
                *slot = Candidate { id, logit: x };
                n += 1;
            }
        }
    }
    n
}

/// Index of a chunk of `run` at or before the first logit above `t`.
///
/// Tests two chunks at a time through a four-lane running maximum, which
/// compiles to a few vector max instructions per 32 logits. The index
/// returned is that of the pair's first chunk, which may itself hold no
/// hit; callers append from it with a strict test, so that costs nothing.
/// NaN never wins a maximum. Kept apart from the caller's loop so that `t`
/// stays in a register.
#[inline(always)]
fn next_hit(run: &[f32], t: f32) -> Option<usize> {
    let mut pairs = run.chunks_exact(2 * CHUNK);
    for (i, pair) in pairs.by_ref().enumerate() {
        let mut top = [f32::NEG_INFINITY; 4];
        for quad in pair.chunks_exact(4) {
            for (a, &x) in top.iter_mut().zip(quad) {
                *a = if x > *a { x } else { *a };
            }
        }
        let mut hit = false;
        for &a in &top {
            hit |= a > t;
        }
        if hit {
            return Some(2 * i);
        }
    }
    let rest = pairs.remainder();
    let mut hit = false;
    for &x in rest {
        hit |= x > t;
    }
    // The remainder is at most one chunk.
    (hit && !rest.is_empty()).then_some(run.len() / (2 * CHUNK) * 2)
}

/// Appends the elements of `chunk` above `t` to `scratch` at `n`; returns the new count.
///
/// Branch-free: every element is written at the current end and the end
/// advances only past those that pass, so unpredictable data costs no
/// mispredictions. Falls back to checked writes near the end of the buffer.
#[inline(always)]
fn append_above(
    scratch: &mut [Candidate],
    mut n: usize,
    first: u32,
    chunk: &[f32; CHUNK],
    t: f32,
) -> usize {
    if let Some(window) = scratch.get_mut(n..n + CHUNK) {
        let mut end = 0usize;
        for (id, &x) in (first..).zip(chunk) {
            if let Some(slot) = window.get_mut(end) {
                *slot = Candidate { id, logit: x };
            }
            end += usize::from(x > t);
        }
        return n + end;
    }
    for (id, &x) in (first..).zip(chunk) {
        if x > t {
            if let Some(slot) = scratch.get_mut(n) {
                *slot = Candidate { id, logit: x };
                n += 1;
            }
        }
    }
    n
}

/// Chunks per sampled group in [`seed`].
const SEED_GROUP: usize = 8;

/// A lower bound on the k-th highest effective logit, or -inf.
///
/// Takes the maxima of `4k` (at least 32) groups of [`SEED_GROUP`] chunks
/// spread over the vocabulary (groups holding an override are left out, so
/// raw and effective logits agree) and returns the k-th highest: k distinct
/// groups, hence k distinct tokens, reach it. A group's maximum is that of
/// 128 logits, so the bound sits far above what single logits would give,
/// and the scan that follows meets few logits above it. Uses `scratch` for the
/// maxima; the caller overwrites them.
fn seed(logits: &[f32], ov: &Overrides, k: usize, scratch: &mut [Candidate]) -> f32 {
    const SPAN: usize = SEED_GROUP * CHUNK;
    let groups = logits.len() / SPAN;
    let want = k.saturating_mul(4).max(32).min(groups).min(scratch.len());
    if want < k || want == 0 {
        return f32::NEG_INFINITY;
    }
    let stride = groups / want;
    let mut pending = ov
        .as_slice()
        .iter()
        .map(|o| o.id() as usize / SPAN)
        .peekable();
    let mut n = 0usize;
    for g in (0..want).map(|i| i * stride) {
        while pending.next_if(|&p| p < g).is_some() {}
        if pending.peek() == Some(&g) {
            // A group with a changed logit says nothing about effective
            // logits; it is left out, and so is its slot.
            continue;
        }
        let Some(group) = logits.get(g * SPAN..g * SPAN + SPAN) else {
            break;
        };
        let mut lanes = [f32::NEG_INFINITY; 4];
        for quad in group.chunks_exact(4) {
            for (a, &x) in lanes.iter_mut().zip(quad) {
                // NaN never wins.
                *a = if x > *a { x } else { *a };
            }
        }
        let top = lanes
            .iter()
            .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
        let Some(slot) = scratch.get_mut(n) else {
            break;
        };
        *slot = Candidate {
            id: g as u32,
            logit: top,
        };
        n += 1;
    }
    let maxima = scratch.get_mut(..n).unwrap_or(&mut []);
    if n < k {
        return f32::NEG_INFINITY;
    }
    maxima.select_nth_unstable_by(k - 1, |a, b| b.logit.total_cmp(&a.logit));
    maxima.get(k - 1).map_or(f32::NEG_INFINITY, |c| c.logit)
}

/// The largest float below `x` (for a strict test equivalent to `>= x`); -inf stays.
fn below(x: f32) -> f32 {
    if x.is_nan() || x == f32::NEG_INFINITY {
        f32::NEG_INFINITY
    } else if x == 0.0 {
        -f32::from_bits(1)
    } else if x > 0.0 {
        f32::from_bits(x.to_bits() - 1)
    } else {
        f32::from_bits(x.to_bits() + 1)
    }
}

/// Chunks per block of the exact weight sums: each f64 lane takes at most
/// `4 * BLOCK` weights of at most 2^30, staying below 2^53 where f64 holds
/// every integer.
const BLOCK: usize = 1 << 20;

/// Small-weight chunks summed in 32-bit lanes before they are flushed:
/// 255 weights below 2^23 stay below 2^31.
const SMALL_RUN: u32 = 255;

/// How [`mass_pass`] sums the chunks whose weights are all below 2^23.
trait SmallSum: Default {
    /// Chunks whose largest scaled difference is below this go to
    /// [`SmallSum::skip`] instead of [`SmallSum::add`].
    fn floor(&self) -> f32;

    /// Adds the weights of one chunk of scaled differences, each at most
    /// [`SMALL_CUT`], -inf or NaN; `top` is the largest of them.
    fn add(&mut self, d: &[f32; CHUNK], top: f32);

    /// Takes note of a chunk whose largest scaled difference, `top`, is
    /// below [`SmallSum::floor`].
    fn skip(&mut self, top: f32);
}

/// The exact sum: [`small_weight_bits`] in 32-bit integer lanes.
#[derive(Default)]
struct ExactSmall {
    lanes: [u32; CHUNK],
    runs: u32,
    total: u64,
}

impl ExactSmall {
    /// Moves the lanes into `total`.
    fn flush(&mut self) {
        // Each lane holds its weights plus 2^23 apiece, wrapped; its true
        // sum is below 2^31, so the wrapped difference is that sum.
        let extra = self.runs.wrapping_mul(TWO_23_BITS);
        let sum: u64 = self
            .lanes
            .iter()
            .map(|&s| u64::from(s.wrapping_sub(extra)))
            .sum();
        self.total += sum;
        self.lanes = [0; CHUNK];
        self.runs = 0;
    }
}

impl SmallSum for ExactSmall {
    #[inline(always)]
    fn floor(&self) -> f32 {
        ZERO_WEIGHT_CUT
    }

    /// Such a chunk weighs nothing.
    #[inline(always)]
    fn skip(&mut self, _top: f32) {}

    #[inline(always)]
    fn add(&mut self, d: &[f32; CHUNK], _top: f32) {
        for (s, &di) in self.lanes.iter_mut().zip(d) {
            *s = s.wrapping_add(small_weight_bits(di));
        }
        self.runs += 1;
        if self.runs == SMALL_RUN {
            self.flush();
        }
    }
}

/// Bound on the relative error of [`ApproxSmall`]'s summation. Each chunk
/// adds its sixteen non-negative f32 values four to a lane in a tree of
/// two additions, erring by at most `2 * 2^-24` of their sum, and the four
/// lane sums go into f64 lanes, whose additions err by less than 2^-24 in
/// all, even over 2^32 weights. This is more than twice their sum.
const SUM_ERROR: f64 = 1.0 / 1_048_576.0;

/// Approximate weights, summed a chunk at a time in f32 and then in four
/// f64 lanes.
///
/// Four lanes and no counter: sixteen f32 lanes, flushed into f64 every
/// eight chunks, cost a load and a store per lane group at every chunk
/// and a scalar flush, where four sums take one f64 addition per pair.
#[derive(Default)]
struct ApproxLanes {
    sum: [f64; 4],
}

impl ApproxLanes {
    /// Adds `approx` of each of the chunk's scaled differences.
    #[inline(always)]
    fn add(&mut self, d: &[f32; CHUNK], approx: impl Fn(f32) -> f32) {
        let mut w = [0.0f32; CHUNK];
        for (wi, &di) in w.iter_mut().zip(d) {
            *wi = approx(di);
        }
        let (lo, hi) = w.split_at(CHUNK / 2);
        let mut half = [0.0f32; CHUNK / 2];
        for ((h, &x), &y) in half.iter_mut().zip(lo).zip(hi) {
            *h = x + y;
        }
        let (lo, hi) = half.split_at(CHUNK / 4);
        for ((s, &x), &y) in self.sum.iter_mut().zip(lo).zip(hi) {
            *s += f64::from(x + y);
        }
    }

    /// The sum of everything added, and the bound on its relative error
    /// against the exact weights, for approximations within `error`.
    fn total(self, error: f64) -> (f64, f64) {
        // Each weight is within `error` of its approximation plus a half
        // for its rounding; the sum of the approximations is within
        // SUM_ERROR of `sum`. 2^-30 covers their products and squares
        // (under 2^-31) and the rounding of this arithmetic (2^-50).
        let [a, b, c, d] = self.sum;
        ((a + b) + (c + d), error + SUM_ERROR + 1.0 / 1_073_741_824.0)
    }
}

/// Bounds on the sum, so that the true sum of the weights can be bounded
/// ([`ApproxSmall::bounds`]): chunks lying wholly below [`CHEAP_CUT`] are
/// summed with [`small_weight_approx3`], the others with
/// [`small_weight_approx`], and the count of weights summed is kept.
/// Chunks below `floor` are only counted: each weighs between 0 and
/// `CHUNK * LOW_WEIGHT_MAX`.
#[derive(Default)]
struct ApproxSmall {
    /// [`LOW_CUT`], or [`ZERO_WEIGHT_CUT`] to count no chunk.
    floor: f32,
    cheap: ApproxLanes,
    fine: ApproxLanes,
    weights: u64,
    low_chunks: u64,
}

impl ApproxSmall {
    /// The least and the greatest integer the exact sum of the weights can be.
    fn bounds(self) -> (u64, u64) {
        let (cheap, cheap_spread) = self.cheap.total(APPROX3_ERROR);
        let (fine, fine_spread) = self.fine.total(APPROX_ERROR);
        let halves = self.weights as f64 * 0.5 + 1.0;
        let lo = libm::floor(cheap * (1.0 - cheap_spread) + fine * (1.0 - fine_spread) - halves);
        let hi = libm::ceil(cheap * (1.0 + cheap_spread) + fine * (1.0 + fine_spread) + halves);
        // In range: the sum is below 2^62 for any vocabulary of u32 ids,
        // and so is the weight of the low chunks, under 2^9 per chunk.
        let low = self.low_chunks * (CHUNK as u64 * u64::from(LOW_WEIGHT_MAX));
        (if lo > 0.0 { lo as u64 } else { 0 }, hi as u64 + low)
    }
}

impl SmallSum for ApproxSmall {
    #[inline(always)]
    fn floor(&self) -> f32 {
        self.floor
    }

    /// Counted without a branch when it may weigh something.
    #[inline(always)]
    fn skip(&mut self, top: f32) {
        self.low_chunks += u64::from(top >= ZERO_WEIGHT_CUT);
    }

    #[inline(always)]
    fn add(&mut self, d: &[f32; CHUNK], top: f32) {
        if top < CHEAP_CUT {
            self.cheap.add(d, small_weight_approx3);
        } else {
            self.fine.add(d, small_weight_approx);
        }
        self.weights += CHUNK as u64;
    }
}

/// One pass for [`mass_and_head`] and [`bounded_mass_and_head`]: returns
/// the exact total weight of the chunks holding a weight of 2^23 or more,
/// and the count of chunks listed at the back of `scratch`; `small` sums
/// the other chunks of nonzero weight.
///
/// Each chunk's largest `d` picks its path and tells whether the chunk
/// holds a head candidate (`d >= cut`); the starts of those chunks are
/// listed at the back of `scratch`, entry `i` at `len - 1 - i`.
#[inline(always)]
fn mass_pass<S: SmallSum>(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    scratch: &mut [Candidate],
    small: &mut S,
) -> (u64, usize) {
    let (m, inv_t) = (scale.m, scale.inv_t);
    let back = scratch.len();
    let floor = small.floor();
    let mut total = 0u64;
    let mut marked = 0usize;
    for_each_run(logits, ov, |first, run| {
        // The sums and the count in locals for the run: reached through
        // the closure's captures, they went through memory at every chunk,
        // since the stores to `scratch` might alias them for all the
        // compiler can tell.
        let mut sums = core::mem::take(small);
        let mut count = marked;
        for (block, at) in run
            .chunks(CHUNK * BLOCK)
            .zip((first..).step_by(CHUNK * BLOCK))
        {
            let mut acc = [0.0f64; 4];
            for (chunk, start) in block.chunks_exact(CHUNK).zip((at..).step_by(CHUNK)) {
                let mut d = [0.0f32; CHUNK];
                for (di, &x) in d.iter_mut().zip(chunk) {
                    *di = (x - m) * inv_t;
                }
                // NaN never wins, so it neither marks nor weighs a chunk.
                let top = chunk_max(&d);
                // Written every time, kept only for a head chunk: no branch.
                if let Some(slot) = back.checked_sub(count + 1).and_then(|i| scratch.get_mut(i)) {
                    slot.id = start;
                }
                count += usize::from(top >= cut);
                if top > SMALL_CUT {
                    for quarter in d.chunks_exact(4) {
                        for (a, &di) in acc.iter_mut().zip(quarter) {
                            *a += weight_f64(di);
                        }
                    }
                } else if top >= floor {
                    sums.add(&d, top);
                } else {
                    sums.skip(top);
                }
            }
            // Each lane is an exact non-negative integer below 2^53.
            total += acc.iter().map(|&a| a as u64).sum::<u64>();
        }
        *small = sums;
        marked = count;
    });
    (total, marked)
}

/// The head after [`mass_pass`]: from the listed chunks when the list
/// stays clear of what is collected, else by [`at_most`].
fn head_after_pass(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    limit: usize,
    scratch: &mut [Candidate],
    marked: usize,
) -> Option<usize> {
    // Collecting writes at most 16 candidates per listed chunk from the
    // front; the list must stay clear of them until it is read.
    if marked.saturating_mul(CHUNK + 1) <= scratch.len() {
        collect_marked(logits, ov, scale, cut, limit, scratch, marked)
    } else {
        at_most(logits, ov, scale, cut, limit, scratch)
    }
}

/// The exact total weight of all candidates under `scale`, and the
/// candidates with `scale.d(x) >= cut` in `scratch` (`None` for the count
/// once more than `limit` pass, as [`at_most`]).
///
/// Every weight is an exact integer, so the total is exact and equal to
/// summing [`Scale::weight`] over the candidates in any order: chunks
/// holding a weight of 2^23 or more sum theirs in four f64 lanes, exact
/// within a block of [`BLOCK`] chunks; the other chunks of nonzero weight
/// go through [`small_weight_bits`] and are summed in 32-bit integer
/// lanes, with fewer operations per weight. Chunks whose every `d` is
/// below [`ZERO_WEIGHT_CUT`] weigh nothing and are skipped. Only the chunks
/// [`mass_pass`] lists are read again to collect the head.
///
/// `scale` must not be the +inf kind and `cut` must be finite.
pub(crate) fn mass_and_head(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    limit: usize,
    scratch: &mut [Candidate],
) -> (u64, Option<usize>) {
    let mut small = ExactSmall::default();
    let (big, marked) = mass_pass(logits, ov, scale, cut, scratch, &mut small);
    small.flush();
    let head = head_after_pass(logits, ov, scale, cut, limit, scratch, marked);
    (big + small.total, head)
}

/// The exact total weight of all candidates under `scale`: the sum of
/// [`mass_and_head`] without the head.
///
/// `scale` must not be the +inf kind.
pub(crate) fn total_weight(logits: &[f32], ov: &Overrides, scale: &Scale) -> u64 {
    let mut small = ExactSmall::default();
    // With no room to list chunks in, and a cut no difference reaches,
    // the pass lists nothing.
    let (big, _) = mass_pass(logits, ov, scale, f32::INFINITY, &mut [], &mut small);
    small.flush();
    big + small.total
}

/// Bins per nat of [`weight_histogram`].
pub(crate) const BINS_PER_NAT: f32 = 8.0;

/// Bins of [`weight_histogram`]: eight per nat down to
/// [`ZERO_WEIGHT_CUT`], and a last one for everything below, which
/// weighs nothing.
pub(crate) const BINS: usize = 22 * 8 + 1;

/// The bin of scaled difference `d` (at most 0): `floor(-d * BINS_PER_NAT)`,
/// at most `BINS - 1`.
///
/// The product is exact (a power of two), so bin `b` holds exactly the
/// differences in `(-(b + 1) / 8, -b / 8]`, and a higher difference never
/// gets a later bin. The cast floors, sends +inf to the last bin and NaN to
/// the first; NaN weighs nothing and is never a candidate.
#[inline(always)]
pub(crate) fn bin_of(d: f32) -> usize {
    ((-d * BINS_PER_NAT) as u32 as usize).min(BINS - 1)
}

/// The least scaled difference in bins up to `b`: the float just above
/// `-(b + 1) / 8`, so that `d >= bin_floor(b)` exactly when `bin_of(d) <= b`.
pub(crate) fn bin_floor(b: usize) -> f32 {
    let edge = -((b + 1) as f32) / BINS_PER_NAT;
    // Negative and finite: the next float up has the next lower magnitude.
    f32::from_bits(edge.to_bits() - 1)
}

/// The exact total weight of all candidates under `scale`, with the weight
/// of each [`bin_of`] their scaled differences added up in `hist`.
///
/// The weights are those of [`Scale::weight`], in one pass: each chunk with
/// a nonzero weight gets its sixteen weights exactly (the cheaper kernel
/// when all are below 2^23) and adds each to its bin. The sums are exact
/// integers, so the total is the sum of the bins. `scale` must not be the
/// +inf kind.
pub(crate) fn weight_histogram(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    hist: &mut [u64; BINS],
) -> u64 {
    let (m, inv_t) = (scale.m, scale.inv_t);
    for_each_run(logits, ov, |_, run| {
        for chunk in run.chunks_exact(CHUNK) {
            let mut d = [0.0f32; CHUNK];
            for (di, &x) in d.iter_mut().zip(chunk) {
                *di = (x - m) * inv_t;
            }
            // NaN never wins; a chunk under the zero cut weighs nothing.
            let top = chunk_max(&d);
            if top < ZERO_WEIGHT_CUT {
                continue;
            }
            let mut w = [0u32; CHUNK];
            if top > SMALL_CUT {
                for (wi, &di) in w.iter_mut().zip(&d) {
                    *wi = weight_of(di);
                }
            } else {
                for (wi, &di) in w.iter_mut().zip(&d) {
                    *wi = small_weight_bits(di).wrapping_sub(TWO_23_BITS);
                }
            }
            let mut at = [0usize; CHUNK];
            for (a, &di) in at.iter_mut().zip(&d) {
                *a = bin_of(di);
            }
            for (&wi, &a) in w.iter().zip(&at) {
                if let Some(sum) = hist.get_mut(a) {
                    *sum += u64::from(wi);
                }
            }
        }
    });
    hist.iter().sum()
}

/// Chunks [`low_floor`] looks at.
const FLOOR_SAMPLE: usize = 64;

/// Where [`bounded_mass_and_head`] stops summing chunks and only counts
/// them: [`LOW_CUT`] when a sample of chunks says that many lie wholly
/// below [`ZERO_WEIGHT_CUT`] (one in eight or more), else
/// [`ZERO_WEIGHT_CUT`].
///
/// Which chunks are summed follows no pattern, so the branch on it is
/// mispredicted about as often as the less common side comes up. With
/// many weightless chunks it already is; counting the chunks below
/// [`LOW_CUT`] as well then saves their sums at little further cost
/// (at temperature 0.8 on SmolLM2, a third of the chunks). With few, as at
/// temperature 1, it would turn a branch nearly always taken into one
/// taken three times in four, and cost more than it saves. Either way the
/// bounds hold; only the speed depends on the sample.
fn low_floor(logits: &[f32], scale: &Scale) -> f32 {
    let chunks = logits.len() / CHUNK;
    let step = (chunks / FLOOR_SAMPLE).max(1);
    let mut looked = 0usize;
    let mut weightless = 0usize;
    for chunk in logits.chunks_exact(CHUNK).step_by(step).take(FLOOR_SAMPLE) {
        let top = chunk
            .iter()
            .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
        looked += 1;
        // An all-NaN chunk has a top of -inf: weightless, as it is.
        weightless += usize::from(scale.d(top) < ZERO_WEIGHT_CUT);
    }
    if weightless * 8 >= looked && looked > 0 {
        LOW_CUT
    } else {
        ZERO_WEIGHT_CUT
    }
}

/// Like [`mass_and_head`], but with bounds `(lo, hi)` on the total weight
/// instead of the total: the weights below 2^23 are summed with
/// [`small_weight_approx`], or [`small_weight_approx3`] in chunks lying
/// wholly below [`CHEAP_CUT`], both cheaper than the exact kernel, and the
/// error of those sums is bounded; chunks below [`low_floor`] are not
/// summed at all, only counted. `hi - lo` is a few millionths of the small
/// weights' total (a few ten-thousandths of the cheap ones'), plus half a
/// unit per weight summed and `CHUNK * LOW_WEIGHT_MAX` per chunk counted.
pub(crate) fn bounded_mass_and_head(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    limit: usize,
    scratch: &mut [Candidate],
) -> (u64, u64, Option<usize>) {
    let mut small = ApproxSmall {
        floor: low_floor(logits, scale),
        ..ApproxSmall::default()
    };
    let (big, marked) = mass_pass(logits, ov, scale, cut, scratch, &mut small);
    let (lo, hi) = small.bounds();
    let head = head_after_pass(logits, ov, scale, cut, limit, scratch, marked);
    (big + lo, big + hi, head)
}

/// The head of [`mass_and_head`], read from the `marked` chunks whose
/// starts are listed at the back of `scratch`, entry `i` at `len - 1 - i`.
fn collect_marked(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    limit: usize,
    scratch: &mut [Candidate],
    marked: usize,
) -> Option<usize> {
    let limit = limit.min(scratch.len());
    let back = scratch.len();
    let mut pending = ov.as_slice();
    let mut n = 0usize;
    for i in 0..marked {
        let start = scratch.get(back.checked_sub(i + 1)?)?.id;
        let mut chunk = [f32::NAN; CHUNK];
        let from = start as usize;
        let raw = logits.get(from..logits.len().min(from + CHUNK))?;
        for (slot, &x) in chunk.iter_mut().zip(raw) {
            *slot = x;
        }
        let skip = pending.partition_point(|o| o.id() < start);
        pending = patch(&mut chunk, start, pending.get(skip..)?);
        if !take(start, &chunk, scale, cut, limit, scratch, &mut n) {
            return None;
        }
    }
    Some(n)
}

/// Appends the candidates of `chunk` (ids from `first`) with
/// `scale.d(x) >= cut` to `scratch[*n..]`; false once more than `limit`
/// would be held.
#[inline(always)]
fn take(
    first: u32,
    chunk: &[f32; CHUNK],
    scale: &Scale,
    cut: f32,
    limit: usize,
    scratch: &mut [Candidate],
    n: &mut usize,
) -> bool {
    let (m, inv_t) = (scale.m, scale.inv_t);
    if !scale.inf && *n + CHUNK <= limit {
        // Branch-free: write every element at the end and advance past
        // those that pass.
        if let Some(window) = scratch.get_mut(*n..*n + CHUNK) {
            let mut end = 0usize;
            for (id, &x) in (first..).zip(chunk) {
                if let Some(slot) = window.get_mut(end) {
                    *slot = Candidate { id, logit: x };
                }
                // NaN compares false, so NaN logits never pass.
                end += usize::from((x - m) * inv_t >= cut);
            }
            *n += end;
            return true;
        }
    }
    for (id, &x) in (first..).zip(chunk) {
        if x > f32::NEG_INFINITY && scale.d(x) >= cut {
            match scratch.get_mut(*n).filter(|_| *n < limit) {
                Some(slot) => {
                    *slot = Candidate { id, logit: x };
                    *n += 1;
                }
                None => return false,
            }
        }
    }
    true
}

/// Copies every candidate with scaled difference `scale.d(x) >= cut` into `scratch`.
///
/// Returns the count. Since `d` rises with the logit, the result is a rank
/// prefix of the candidates. `cut` must be finite.
pub(crate) fn at_least(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    scratch: &mut [Candidate],
) -> usize {
    at_most(logits, ov, scale, cut, usize::MAX, scratch).unwrap_or(0)
}

/// Like [`at_least`], but gives up, returning `None`, once more than
/// `limit` candidates pass.
pub(crate) fn at_most(
    logits: &[f32],
    ov: &Overrides,
    scale: &Scale,
    cut: f32,
    limit: usize,
    scratch: &mut [Candidate],
) -> Option<usize> {
    let limit = limit.min(scratch.len());
    let mut over = false;
    let mut n = 0usize;
    let (m, inv_t, inf) = (scale.m, scale.inv_t, scale.inf);
    for_each_run(logits, ov, |base, run| {
        for (chunk, first) in run.chunks_exact(CHUNK).zip((base..).step_by(CHUNK)) {
            let mut hit = false;
            if inf {
                for &x in chunk {
                    hit |= x == f32::INFINITY;
                }
            } else {
                for &x in chunk {
                    // NaN compares false, so NaN logits never pass.
                    hit |= (x - m) * inv_t >= cut;
                }
            }
            if !hit || over {
                continue;
            }
            if let Ok(chunk) = <&[f32; CHUNK]>::try_from(chunk) {
                over = !take(first, chunk, scale, cut, limit, scratch, &mut n);
            }
        }
    });
    (!over).then_some(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::collect_all;
    use crate::penalty::MAX_RECENT;
    use crate::select::sort_by_rank;
    use crate::Config;

    extern crate std;
    use core::cell::Cell;
    use std::vec;
    use std::vec::Vec;

    std::thread_local! {
        /// How [`top_k_min_p`] ended on this thread: settled by the few
        /// alone, settled with a bound from the first entries below the
        /// cut, refused by the caller, too many entries above the cut,
        /// settled with the bound from the highest entries below the cut.
        pub(crate) static FUSED: Cell<[usize; 5]> = const { Cell::new([0; 5]) };
    }

    pub(crate) fn count_fused(way: usize) {
        FUSED.with(|c| {
            let mut ways = c.get();
            if let Some(n) = ways.get_mut(way) {
                *n += 1;
            }
            c.set(ways);
        });
    }

    #[test]
    fn entry_floor_agrees_with_the_float_test_on_every_threshold_the_pool_sets() {
        // Thresholds are -inf or `below` of a maximum; +0.0 is one of
        // them (below the least positive subnormal), -0.0 never is.
        let maxima = [
            f32::NEG_INFINITY,
            f32::MIN,
            -1.0,
            -f32::from_bits(1),
            -0.0,
            0.0,
            f32::from_bits(1),
            f32::from_bits(2),
            f32::MIN_POSITIVE,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        let mut thresholds = vec![f32::NEG_INFINITY];
        thresholds.extend(maxima.iter().map(|&x| below(x)));
        assert!(
            thresholds.iter().any(|t| t.to_bits() == 0),
            "+0.0 is reached"
        );
        for &t in &thresholds {
            assert_ne!(t.to_bits(), (-0.0f32).to_bits(), "below gave -0.0");
            for (tag, &x) in (0u32..).zip(&maxima) {
                for tag in [tag, TAG_MIXED | tag, TAG_CHANGED | tag] {
                    assert_eq!(
                        entry(x, tag) > entry_floor(t),
                        x > t,
                        "maximum {x:e} threshold {t:e} tag {tag:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn raw_floor_is_below_every_logit_that_reaches_the_cut() {
        // The least logit whose scaled difference reaches the cut, found by
        // bisection over the floats in order, must lie above the floor.
        let ms = [
            0.0f32, -0.0, 1.0, -7.5, 31.25, 1e-30, 1e6, -1e6, 3e38, -3e38,
        ];
        let inv_ts = [1.0f32, 1.25, 0.01, 100.0, 1e-30, 1e30, 1.0 / 1.7];
        let min_ps = [0.05f32, 1.0, 0.5, 1e-9, f32::MIN_POSITIVE, 1e-45];
        let mut checked = 0;
        for &m in &ms {
            for &inv_t in &inv_ts {
                for &min_p in &min_ps {
                    let cut = crate::minp::cut(min_p);
                    let scale = Scale {
                        inv_t,
                        ..Scale::new(m)
                    };
                    let reach = |x: f32| scale.d(x) >= cut;
                    // Bisect on the order-preserving integers of the floats.
                    let (mut lo, mut hi) = (ordered(f32::MIN), ordered(m));
                    if reach(f32::MIN) {
                        hi = lo;
                    }
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        if reach(unordered(mid)) {
                            hi = mid;
                        } else {
                            lo = mid;
                        }
                    }
                    let least = unordered(hi);
                    assert!(reach(least), "m {m} inv_t {inv_t} min_p {min_p}");
                    let floor = raw_floor(m, inv_t, cut);
                    assert!(
                        least > floor,
                        "m {m} inv_t {inv_t} min_p {min_p}: {least} reaches, floor {floor}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, ms.len() * inv_ts.len() * min_ps.len());
    }

    fn lcg(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
    }

    /// Logits with ties, NaN, infinities, and a penalty window.
    fn case(v: usize, seed: u64) -> (Vec<f32>, Overrides) {
        let mut s = seed;
        let mut logits: Vec<f32> = (0..v).map(|_| (lcg(&mut s) * 4.0).round() / 4.0).collect();
        for (i, x) in logits.iter_mut().enumerate() {
            match i % 37 {
                5 => *x = f32::NAN,
                9 => *x = f32::NEG_INFINITY,
                _ => {}
            }
        }
        let recent: Vec<u32> = (0..v as u32).filter(|i| i % 23 == 3).take(1000).collect();
        let bias = [(0u32, 2.5f32), ((v - 1) as u32, -1.0)];
        let mut ov = Overrides::new();
        let c = Config {
            repeat_penalty: 1.3,
            presence_penalty: 0.25,
            ..Config::default()
        };
        ov.build(&logits, &recent, &bias, &c).unwrap();
        (logits, ov)
    }

    fn reference(logits: &[f32], ov: &Overrides) -> Vec<Candidate> {
        let mut all = vec![Candidate::default(); logits.len()];
        let n = collect_all(logits, ov, &mut all);
        all.truncate(n);
        sort_by_rank(&mut all);
        all
    }

    #[test]
    fn top_k_min_p_bounds_the_rest_of_the_best_k_from_below() {
        // Every lower bound `top_k_min_p` offers for the weight of the best
        // k outside the few must be at most that weight, and the few must
        // be exactly the best k above the cut. Asking for a random amount
        // of rest weight sends calls down each way, the selection of the
        // highest entries included: the logits put a lone top token over
        // many blocks whose maxima rise with the id, so the entries met
        // first in the pool are the low ones.
        let mut s = 17u64;
        let before = FUSED.with(|c| c.get());
        for case in 0..1200 {
            let v = [12_000, 20_011, 4096, 700][case % 4];
            let (mut logits, mut ov) = case_logits(v, case, &mut s);
            if case % 3 == 0 {
                ov = Overrides::new();
            }
            let k = [40, 2, 64, 17][case / 4 % 4];
            let inv_t = [1.0f32, 1.25, 0.5][case % 3];
            let cut = crate::minp::cut([0.05f32, 0.3, 1e-3][case / 3 % 3]);
            let want = reference(&logits, &ov);
            let best = &want[..k.min(want.len())];
            let asked = match case % 5 {
                0 => 0,
                _ => u64::from(lcg(&mut s).to_bits() >> 4),
            };
            let mut scratch = vec![Candidate { id: 7, logit: 1e30 }; v];
            let got = top_k_min_p(&logits, &ov, k, inv_t, cut, &mut scratch, |head| {
                let n = head.few.len();
                assert_eq!(head.few, &best[..n], "case {case}: the few");
                assert!(best[n..].iter().all(|c| head.scale.d(c.logit) < cut));
                let rest: u64 = best[n..].iter().map(|c| head.scale.weight(c.logit)).sum();
                if head.bound {
                    assert!(head.rest <= rest, "case {case}: {} > {rest}", head.rest);
                }
                head.rest >= asked % (rest + rest / 4 + 1)
            });
            match got {
                TopKHead::Cut(n) => assert_eq!(&scratch[..n], &best[..n], "case {case}"),
                TopKHead::TopK(n) => assert_eq!(&scratch[..n], best, "case {case}"),
            }
            logits.clear();
        }
        let after = FUSED.with(|c| c.get());
        let ways: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert!(ways.iter().all(|&n| n >= 5), "ways: {ways:?}");
    }

    /// Logits for [`top_k_min_p_bounds_the_rest_of_the_best_k_from_below`]:
    /// a top token, a few near it, and block maxima below the cut that rise
    /// with the id (or not), with overrides on some of the high ones.
    fn case_logits(v: usize, case: usize, s: &mut u64) -> (Vec<f32>, Overrides) {
        let rising = case % 2 == 0;
        let logits: Vec<f32> = (0..v)
            .map(|i| {
                let u = lcg(s);
                match (i, i % 61, i % 257) {
                    (3, _, _) => 0.0,
                    (_, _, 100) if i < 2000 => -1.0 - 2.5 * u,
                    (_, 7, _) if rising => -9.0 + 5.5 * (i as f32 / v as f32) - 0.3 * u,
                    (_, 7, _) => -3.2 - 7.0 * u * u,
                    _ => -14.0 - 4.0 * u,
                }
            })
            .collect();
        let recent = [3u32, 100, 7, (v / 2) as u32];
        let mut ov = Overrides::new();
        let c = Config {
            repeat_penalty: 1.3,
            ..Config::default()
        };
        ov.build(&logits, &recent, &[], &c).unwrap();
        (logits, ov)
    }

    /// Checks `top_k` for each `k` against the reference, rank order and
    /// the sign of zero included, writing over a scratch buffer full of
    /// stale candidates.
    fn top_k_agrees(logits: &[f32], ov: &Overrides, ks: &[usize]) {
        let bits = |s: &[Candidate]| -> Vec<(u32, u32)> {
            s.iter().map(|c| (c.id, c.logit.to_bits())).collect()
        };
        let all = reference(logits, ov);
        for &k in ks {
            let mut scratch = vec![Candidate { id: 7, logit: 1e30 }; logits.len()];
            let n = top_k(logits, ov, k, &mut scratch);
            let want = &all[..k.min(all.len())];
            assert_eq!(bits(&scratch[..n]), bits(want), "k {k}");
        }
    }

    fn sorted(mut s: Vec<Candidate>) -> Vec<Candidate> {
        sort_by_rank(&mut s);
        s
    }

    #[test]
    fn top_and_count_match_reference() {
        for v in [1, 15, 16, 17, 100, 1000, 4099] {
            let (logits, ov) = case(v, v as u64);
            let all = reference(&logits, &ov);
            assert_eq!(count(&logits, &ov), all.len(), "v {v}");
            let want = all.first().map_or(f32::NEG_INFINITY, |c| c.logit);
            assert_eq!(top(&logits, &ov), want, "v {v}");
        }
        let ov = Overrides::new();
        let masked = [f32::NAN, f32::NEG_INFINITY];
        assert_eq!(
            (top(&masked, &ov), count(&masked, &ov)),
            (f32::NEG_INFINITY, 0)
        );
        let inf = [1.0, f32::INFINITY, f32::NAN];
        assert_eq!((top(&inf, &ov), count(&inf, &ov)), (f32::INFINITY, 2));
    }

    #[test]
    fn top_k_matches_reference() {
        for v in [1, 16, 33, 700, 5000] {
            let (logits, ov) = case(v, 7 + v as u64);
            let all = reference(&logits, &ov);
            for k in [1, 2, 40, 600, v] {
                let mut scratch = vec![Candidate::default(); v];
                let n = top_k(&logits, &ov, k, &mut scratch);
                scratch.truncate(n);
                let want: Vec<Candidate> = all.iter().copied().take(k).collect();
                assert_eq!(sorted(scratch), want, "v {v} k {k}");
            }
        }
    }

    #[test]
    fn top_k_with_overrides_in_every_block_matches_reference() {
        // More blocks hold an override than the block pool has room for,
        // and the penalised ids are among the highest logits.
        let v = 70_000;
        let mut s = 5u64;
        let logits: Vec<f32> = (0..v).map(|_| lcg(&mut s)).collect();
        let mut recent: Vec<u32> = (0..v as u32).step_by(97).collect();
        recent.extend((0..v as u32).filter(|&i| logits[i as usize] > 3.9).take(40));
        let mut ov = Overrides::new();
        let c = Config {
            repeat_penalty: 1.5,
            ..Config::default()
        };
        ov.build(&logits, &recent[..MAX_RECENT.min(recent.len())], &[], &c)
            .unwrap();
        top_k_agrees(&logits, &ov, &[2, 40, 64]);
    }

    #[test]
    fn top_k_when_every_block_maximum_is_overridden_matches_reference() {
        // Each block's raw maximum is a token biased far down, so no block
        // maximum is an effective logit; the best k lie elsewhere in the
        // very blocks that hold the overrides.
        let blocks = 200;
        let v = SCAN_BLOCK * blocks + 5;
        let mut s = 11u64;
        let mut logits: Vec<f32> = (0..v).map(|_| lcg(&mut s)).collect();
        let mut bias = Vec::new();
        for b in 0..blocks {
            let id = b * SCAN_BLOCK + (b * 37) % SCAN_BLOCK;
            logits[id] = 50.0 + b as f32 * 0.01;
            bias.push((id as u32, -100.0f32));
        }
        let mut ov = Overrides::new();
        ov.build(&logits, &[], &bias, &Config::default()).unwrap();
        assert!(
            reference(&logits, &ov)[0].logit < 50.0,
            "the biased ids must not lead"
        );
        top_k_agrees(&logits, &ov, &[2, 40, 64]);
    }

    /// A number below `n` from the generator of [`lcg`].
    fn below_n(state: &mut u64, n: usize) -> usize {
        lcg(state);
        ((*state >> 33) % n as u64) as usize
    }

    #[test]
    fn block_max_matches_a_plain_fold() {
        // Every chunk count up to a whole block, odd ones leaving a chunk
        // past the last pair, with the maximum placed in each chunk in turn.
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0];
        let mut s = 17u64;
        for chunks in 0..=SCAN_BLOCK / CHUNK {
            let len = chunks * CHUNK;
            for top_chunk in 0..chunks.max(1) {
                for fill in 0..4 {
                    let mut block: Vec<f32> = (0..len)
                        .map(|_| match fill {
                            0 => lcg(&mut s),
                            1 => f32::NAN,
                            2 => f32::NEG_INFINITY,
                            _ => specials[below_n(&mut s, specials.len())],
                        })
                        .collect();
                    if fill == 0 && len > 0 {
                        block[top_chunk * CHUNK + below_n(&mut s, CHUNK)] = 9.0;
                        // NaN beside the maximum must not hide it.
                        block[top_chunk * CHUNK + below_n(&mut s, CHUNK)] = f32::NAN;
                    }
                    let what = std::format!("chunks {chunks} top {top_chunk} fill {fill}");
                    assert_plain_max(&block, block_max(&block), &what);
                }
            }
        }
    }

    /// Asserts that `got` is the maximum of `values` as a plain fold from
    /// -inf finds it, where NaN never wins.
    fn assert_plain_max(values: &[f32], got: f32, what: &str) {
        let want = values
            .iter()
            .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
        // -0.0 and +0.0 tie, so either may come back.
        assert!(
            got == want && !got.is_nan(),
            "{what}: {got} vs {want} for {values:?}"
        );
    }

    #[test]
    fn chunk_max_matches_a_plain_fold() {
        // The maximum in every lane in turn, with NaN in another lane, and
        // chunks of NaN, -inf, +inf and zeros of either sign mixed.
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0, 1.5];
        let mut s = 29u64;
        for round in 0..4000 {
            let mut chunk = [0.0f32; CHUNK];
            for x in &mut chunk {
                *x = if round % 2 == 0 {
                    lcg(&mut s)
                } else {
                    specials[below_n(&mut s, specials.len())]
                };
            }
            if round % 4 == 0 {
                chunk[round / 4 % CHUNK] = 9.0;
                chunk[below_n(&mut s, CHUNK)] = f32::NAN;
            }
            assert_plain_max(&chunk, chunk_max(&chunk), &std::format!("round {round}"));
        }
        assert_eq!(chunk_max(&[f32::NAN; CHUNK]), f32::NEG_INFINITY);
    }

    #[test]
    fn pool_threshold_stays_below_the_kth_best_entry() {
        // Each value offered stands for a distinct token, as a block maximum
        // or a changed logit does. After every offer the threshold must be
        // below the k-th best value so far (-inf while there are fewer than
        // k), and unless the pool overflowed, it must end up holding exactly
        // the values above its threshold. Orders that rise, fall and tie
        // drive the batch raise, the cut and the overflow at every count.
        let mut s = 23u64;
        let mut overflowed = 0;
        let mut raised = 0;
        for case in 0..400 {
            let k = [2, 3, 5, 16, 63, KEYS_K_MAX][below_n(&mut s, 6)];
            let lens = [
                1,
                k - 1,
                k,
                k + 1,
                POOL - 1,
                POOL,
                POOL + 1,
                3 * POOL + 7,
                1000,
            ];
            let len = lens[below_n(&mut s, lens.len())];
            let shape = below_n(&mut s, 7);
            let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0];
            let values: Vec<f32> = (0..len)
                .map(|i| match shape {
                    0 => below_n(&mut s, 3) as f32,
                    1 => i as f32,
                    2 => -(i as f32),
                    3 => (i / 3) as f32,
                    4 => 1.0,
                    5 if below_n(&mut s, 4) == 0 => specials[below_n(&mut s, specials.len())],
                    _ => lcg(&mut s),
                })
                .collect();
            let changed = [0, 1, k - 1, k, k + 1, POOL, len][below_n(&mut s, 7)].min(len);

            let source: Vec<Source> = (0..len)
                .map(|i| match (i < changed, below_n(&mut s, 2)) {
                    (true, _) => Source::Changed,
                    (false, 0) => Source::Mixed,
                    _ => Source::Block,
                })
                .collect();

            let mut pool = Pool::new(k);
            // The values so far that are candidates, highest first.
            let mut live: Vec<f32> = Vec::new();
            for (i, &x) in values.iter().enumerate() {
                // Value i stands for the i-th block, or the i-th override.
                match source[i] {
                    Source::Changed => pool.push_changed(x, i as u32),
                    src => pool.offer(x, (i * SCAN_BLOCK) as u32, src == Source::Mixed),
                }
                if x > f32::NEG_INFINITY {
                    let at = live.partition_point(|&y| y >= x);
                    live.insert(at, x);
                }
                match live.get(k - 1) {
                    Some(&kth) => assert!(
                        pool.t < kth,
                        "case {case} k {k} shape {shape} at {i}: t {} kth {kth}",
                        pool.t
                    ),
                    None => assert_eq!(pool.t, f32::NEG_INFINITY, "case {case} at {i}"),
                }
            }
            raised += usize::from(pool.t > f32::NEG_INFINITY);
            if pool.overflow {
                overflowed += 1;
                continue;
            }
            pool.cut();
            if let Some(&kth) = live.get(k - 1) {
                assert!(
                    pool.t < kth,
                    "case {case}: after the cut, t {} kth {kth}",
                    pool.t
                );
            }
            let index = |e: u64| match entry_source(e) {
                (Source::Changed, place) => (place as usize, Source::Changed),
                (src, start) => (start as usize / SCAN_BLOCK, src),
            };
            let mut held: Vec<usize> = pool.live().iter().map(|&e| index(e).0).collect();
            held.sort_unstable();
            let above: Vec<usize> = (0..len).filter(|&i| values[i] > pool.t).collect();
            assert_eq!(held, above, "case {case} k {k} shape {shape} len {len}");
            for &e in pool.live() {
                let (i, src) = index(e);
                assert_eq!(src, source[i], "case {case}: {i} lost its source");
                assert_eq!(
                    entry_max(e).to_bits(),
                    values[i].to_bits(),
                    "case {case}: {i}"
                );
            }
        }
        // The cases reach both the overflow and a raised threshold.
        assert!(
            overflowed > 0 && raised > overflowed,
            "{overflowed} {raised}"
        );
    }

    #[test]
    fn pool_cut_sets_the_threshold_just_below_the_kth_highest_maximum() {
        // The cut orders keys that hold a maximum in their high half and a
        // slot in the low half. Among tied maxima the slot decides, and
        // the threshold must come from the high half alone; zeros of both
        // signs tie as logits, and +inf may be the k-th. The entries are
        // written straight into the pool, so no upkeep runs before the cut.
        let mut s = 31u64;
        let picks = [
            f32::INFINITY,
            f32::MAX,
            3.0,
            1.0,
            f32::from_bits(1),
            0.0,
            -0.0,
            -f32::from_bits(1),
            -1.0,
            f32::MIN,
        ];
        let mut shapes: Vec<Vec<f32>> = vec![
            vec![1.0; POOL],
            (0..POOL).map(|i| [0.0, -0.0][i % 2]).collect(),
            (0..POOL)
                .map(|i| if i == POOL - 1 { 0.0 } else { -0.0 })
                .collect(),
            (0..POOL)
                .map(|i| if i < 70 { f32::INFINITY } else { 2.0 })
                .collect(),
            (0..POOL)
                .map(|i| [3.0, 2.0, 2.0, 2.0, 1.0][i % 5])
                .collect(),
            (0..POOL).map(|i| (i / 40) as f32).collect(),
            (0..POOL).map(|i| -((i / 40) as f32)).collect(),
            vec![-0.0; KEYS_K_MAX - 1],
        ];
        for _ in 0..40 {
            let len = 1 + below_n(&mut s, POOL);
            shapes.push(
                (0..len)
                    .map(|_| picks[below_n(&mut s, picks.len())])
                    .collect(),
            );
        }
        for maxima in &shapes {
            for k in [2, 3, 17, KEYS_K_MAX] {
                let mut pool = Pool::new(k);
                for (i, &x) in maxima.iter().enumerate() {
                    pool.entries[i] = entry(x, i as u32);
                }
                pool.n = maxima.len();
                pool.cut();

                let mut sorted = maxima.clone();
                sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
                let want = sorted.get(k - 1).map_or(f32::NEG_INFINITY, |&x| below(x));
                assert_eq!(
                    pool.t.to_bits(),
                    want.to_bits(),
                    "k {k} of {maxima:?}: t {}",
                    pool.t
                );
                let kept: Vec<u32> = (0..maxima.len() as u32)
                    .filter(|&i| maxima[i as usize] > want)
                    .collect();
                // The cut selects in place, so the entries come back in no order.
                let mut held: Vec<u32> = pool.live().iter().map(|&e| e as u32).collect();
                held.sort_unstable();
                assert_eq!(held, kept, "k {k} of {maxima:?}");
            }
        }
    }

    #[test]
    fn top_k_matches_reference_when_block_maxima_rise_tie_or_are_changed() {
        // Block maxima that rise block after block make every block enter
        // the pool and the threshold rise by batches; maxima that tie fill
        // it past its room; a negative presence penalty lifts the window's
        // ids over everything, so they take the first batches; zeros of
        // both signs, NaN and infinities sit among them. Vocabularies stop
        // short of, at and past a chunk and a block.
        let mut s = 29u64;
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0];
        for case in 0..60 {
            let sizes = [
                1,
                2,
                15,
                17,
                255,
                257,
                4095,
                4097,
                130 * SCAN_BLOCK + 7,
                70_001,
            ];
            let v = sizes[case % sizes.len()];
            let shape = below_n(&mut s, 7);
            let mut logits: Vec<f32> = (0..v)
                .map(|i| match shape {
                    0 => (i / SCAN_BLOCK) as f32 * 0.25 + lcg(&mut s) * 0.01,
                    1 => i as f32 * 1e-3,
                    2 => below_n(&mut s, 3) as f32,
                    3 => specials[below_n(&mut s, specials.len())],
                    4 if below_n(&mut s, 40) == 0 => lcg(&mut s),
                    4 => f32::NEG_INFINITY,
                    _ => lcg(&mut s),
                })
                .collect();
            for _ in 0..below_n(&mut s, 3) * (1 + v / 40) {
                logits[below_n(&mut s, v)] = specials[below_n(&mut s, specials.len())];
            }
            let step = [1, 7, SCAN_BLOCK, SCAN_BLOCK + 3][below_n(&mut s, 4)];
            let recent: Vec<u32> = match below_n(&mut s, 3) {
                0 => Vec::new(),
                1 => (0..v as u32).step_by(step).take(MAX_RECENT).collect(),
                _ => (0..below_n(&mut s, 40))
                    .map(|_| below_n(&mut s, v) as u32)
                    .collect(),
            };
            let bias: Vec<(u32, f32)> = (0..below_n(&mut s, 5))
                .map(|_| {
                    let b = [f32::NEG_INFINITY, f32::INFINITY, -0.0, 50.0, -50.0];
                    (below_n(&mut s, v) as u32, b[below_n(&mut s, b.len())])
                })
                .collect();
            let c = Config {
                repeat_penalty: [1.0, 1.3][below_n(&mut s, 2)],
                presence_penalty: [0.0, 0.5, -100.0][below_n(&mut s, 3)],
                ..Config::default()
            };
            let mut ov = Overrides::new();
            ov.build(&logits, &recent, &bias, &c).unwrap();
            top_k_agrees(&logits, &ov, &[2, 3, 17, KEYS_K_MAX - 1, KEYS_K_MAX]);
        }
    }

    #[test]
    fn both_shapes_of_the_chunk_test_agree() {
        let mut s = 3u64;
        for len in [0, CHUNK, 5 * CHUNK, SCAN_BLOCK] {
            let mut block: Vec<f32> = (0..len).map(|_| lcg(&mut s)).collect();
            for (i, x) in block.iter_mut().enumerate() {
                match i % 29 {
                    4 => *x = f32::NAN,
                    7 => *x = f32::INFINITY,
                    11 => *x = f32::NEG_INFINITY,
                    _ => {}
                }
            }
            for t in [
                f32::NEG_INFINITY,
                -4.0,
                0.0,
                3.9,
                3.999,
                f32::INFINITY,
                f32::NAN,
            ] {
                let want = chunks_above_by_chunk(&block, t);
                assert_eq!(chunks_above_flat(&block, t), want, "len {len} t {t}");
                // The mask is right, not merely the same both ways.
                for i in 0..len / CHUNK {
                    let any = block[i * CHUNK..(i + 1) * CHUNK].iter().any(|&x| x > t);
                    assert_eq!(want >> i & 1 == 1, any, "len {len} t {t} chunk {i}");
                }
            }
        }
    }

    #[test]
    fn seed_ignores_stale_scratch_next_to_skipped_chunks() {
        // All logits negative; the first sampled chunk holds a penalised id,
        // and the scratch buffer holds large logits from an earlier call.
        let v = 4096;
        let logits: Vec<f32> = (0..v).map(|i| -1.0 - (i % 97) as f32 * 0.01).collect();
        let mut ov = Overrides::new();
        let c = Config {
            repeat_penalty: 1.5,
            ..Config::default()
        };
        ov.build(&logits, &[3, 700], &[], &c).unwrap();
        top_k_agrees(&logits, &ov, &[1, 2, 40]);
    }

    #[test]
    fn below_is_the_next_float_down() {
        assert_eq!(below(1.0), 0.999_999_94);
        assert_eq!(below(-1.0), -1.000_000_1);
        assert_eq!(below(0.0), -f32::from_bits(1));
        assert_eq!(below(-0.0), -f32::from_bits(1));
        assert_eq!(below(f32::from_bits(1)), 0.0);
        assert_eq!(below(f32::INFINITY), f32::MAX);
        assert_eq!(below(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(below(-f32::MAX), f32::NEG_INFINITY);
    }

    /// Calls `f(v, logits, overrides, reference candidates, scale)` on
    /// random cases of several sizes with a finite top logit, each at three
    /// temperatures.
    fn scaled_cases(seed: u64, mut f: impl FnMut(usize, &[f32], &Overrides, &[Candidate], Scale)) {
        for v in [1, 16, 31, 700, 5000, 70_000] {
            let (logits, ov) = case(v, seed + v as u64);
            let all = reference(&logits, &ov);
            let Some(top) = all.first() else { continue };
            if top.logit == f32::INFINITY {
                continue;
            }
            for t in [0.3f32, 1.0, 4.0] {
                f(
                    v,
                    &logits,
                    &ov,
                    &all,
                    Scale::new(top.logit).with_temperature(t),
                );
            }
        }
    }

    #[test]
    fn mass_and_at_most_match_reference() {
        scaled_cases(3, |v, logits, ov, all, scale| {
            let t = 1.0 / scale.inv_t;
            let want: u64 = all.iter().map(|c| scale.weight(c.logit)).sum();
            assert_eq!(total_weight(logits, ov, &scale), want, "v {v} t {t}");
            for (cut, limit) in [(-2.0f32, v), (-6.0, v), (-6.0, 16)] {
                let mut scratch = vec![Candidate::default(); v];
                let (total, fused) = mass_and_head(logits, ov, &scale, cut, limit, &mut scratch);
                assert_eq!(total, want, "v {v} t {t}: fused total");
                let fused_sorted = fused.map(|n| sorted(scratch[..n].to_vec()));
                let (lo, hi, bounded) =
                    bounded_mass_and_head(logits, ov, &scale, cut, limit, &mut scratch);
                assert!(lo <= want && want <= hi, "v {v} t {t}: {lo} {want} {hi}");
                // Loose by the relative error of the small weights and
                // half a unit per weight, no more.
                let slack = 2.1 * (APPROX_ERROR + SUM_ERROR) * want as f64;
                assert!(
                    ((hi - lo) as f64) <= slack + v as f64 + 4.0,
                    "v {v} t {t}: {lo} {hi}"
                );
                assert_eq!(
                    bounded.map(|n| sorted(scratch[..n].to_vec())),
                    fused_sorted,
                    "v {v} t {t}"
                );
                let fused = fused_sorted;
                let got = at_most(logits, ov, &scale, cut, limit, &mut scratch);
                assert_eq!(
                    fused,
                    got.map(|n| sorted(scratch[..n].to_vec())),
                    "v {v} t {t}"
                );
                let head: Vec<Candidate> = all
                    .iter()
                    .copied()
                    .filter(|c| scale.d(c.logit) >= cut)
                    .collect();
                match got {
                    Some(n) => {
                        scratch.truncate(n);
                        assert_eq!(sorted(scratch), head, "v {v} t {t} cut {cut}");
                    }
                    None => assert!(head.len() > limit),
                }
            }
        });
    }

    #[test]
    fn at_least_matches_reference() {
        for v in [3, 16, 257, 3000] {
            let (logits, ov) = case(v, 99 + v as u64);
            let all = reference(&logits, &ov);
            let Some(top) = all.first() else { continue };
            let scale = Scale::new(top.logit).with_temperature(0.7);
            for cut in [0.0f32, -1.0, -3.5, -22.0] {
                let mut scratch = vec![Candidate::default(); v];
                let n = at_least(&logits, &ov, &scale, cut, &mut scratch);
                scratch.truncate(n);
                let want: Vec<Candidate> = all
                    .iter()
                    .copied()
                    .filter(|c| scale.d(c.logit) >= cut)
                    .collect();
                assert_eq!(sorted(scratch), want, "v {v} cut {cut}");
            }
        }
        let ov = Overrides::new();
        let logits = [1.0, f32::INFINITY, 2.0, f32::INFINITY];
        let mut scratch = [Candidate::default(); 4];
        let n = at_least(
            &logits,
            &ov,
            &Scale::new(f32::INFINITY),
            -22.0,
            &mut scratch,
        );
        assert_eq!(n, 2);
        assert_eq!(scratch.map(|c| c.id)[..2], [1, 3]);
    }

    /// The scaled difference from `from` down to `to` at which the exact
    /// weight lies furthest above (`sign` 1) or below (`sign` -1) its
    /// approximation: the cheaper one below [`CHEAP_CUT`], as a chunk of
    /// such differences alone gets.
    fn leaning(from: f32, to: f32, sign: f64) -> f32 {
        let mut best = (f64::NEG_INFINITY, from);
        for bits in from.to_bits()..=to.to_bits() {
            let d = f32::from_bits(bits);
            let w = f64::from(crate::softmax::weight_of(d));
            let approx = if d < CHEAP_CUT {
                small_weight_approx3(d)
            } else {
                small_weight_approx(d)
            };
            let lean = sign * (w - f64::from(approx));
            if lean > best.0 {
                best = (lean, d);
            }
        }
        best.1
    }

    #[test]
    fn bounds_hold_when_every_error_leans_one_way() {
        // Hundreds of thousands of small weights, each where the exact
        // weight is furthest from its approximation in one direction:
        // near 2^23, where the relative error counts most; near half a
        // unit, where the rounding does; and both mixed. Summed, the
        // errors add up instead of cancelling, so the total must sit near
        // the bound they lean towards, and still within it.
        let v = 300_007;
        for sign in [1.0f64, -1.0] {
            let large = leaning(-4.87, -5.0, sign);
            // Just below the cheap cut, where its error counts most.
            let mid = leaning(CHEAP_CUT - 0.001, CHEAP_CUT - 0.1, sign);
            // Just above the low cut: below it nothing is approximated.
            let tiny = leaning(LOW_CUT + 0.1, LOW_CUT, sign);
            for kinds in [[large; 3], [mid; 3], [tiny; 3], [large, mid, tiny]] {
                let mut logits: Vec<f32> = (0..v).map(|i| kinds[i / CHUNK % 3]).collect();
                logits[v / 2] = 0.0;
                let ov = Overrides::new();
                let scale = Scale::new(0.0);
                let total: u64 = logits.iter().map(|&x| scale.weight(x)).sum();
                assert_eq!(total_weight(&logits, &ov, &scale), total, "{kinds:?}");
                let mut scratch = vec![Candidate::default(); v];
                let (lo, hi, head) =
                    bounded_mass_and_head(&logits, &ov, &scale, -1.0, 16, &mut scratch);
                assert_eq!(head, Some(1), "{kinds:?}");
                assert!(lo <= total && total <= hi, "{kinds:?}: {lo} {total} {hi}");
                // Loose by the relative error of each approximation and
                // half a unit per weight, no more.
                let cheap: u64 = logits
                    .iter()
                    .filter(|&&x| x < CHEAP_CUT)
                    .map(|&x| scale.weight(x))
                    .sum();
                let slack = 2.1 * (APPROX_ERROR + SUM_ERROR) * (total - cheap) as f64
                    + 2.1 * (APPROX3_ERROR + SUM_ERROR) * cheap as f64;
                assert!(((hi - lo) as f64) <= slack + v as f64 + 4.0, "{kinds:?}");
                // The errors did lean: the total is in the half they point to.
                let (above, below) = (hi - total, total - lo);
                assert!(
                    (above < below) == (sign > 0.0),
                    "{kinds:?}: {lo} {total} {hi}"
                );
            }
        }
    }

    #[test]
    fn chunks_below_the_low_cut_are_bounded_from_both_sides() {
        // Every chunk below the low cut, at the most and at the least its
        // weights can be: the upper bound is reached in the first case, the
        // lower in the second, whatever the rest weighs. Every third chunk
        // weighs nothing, so that the low chunks are counted, not summed.
        let v = 40_001 * CHUNK + 5;
        let most = f32::from_bits(LOW_CUT.to_bits() + 1);
        let least = f32::from_bits(ZERO_WEIGHT_CUT.to_bits() - 1);
        assert_eq!(crate::softmax::weight_of(most), LOW_WEIGHT_MAX);
        assert_eq!(crate::softmax::weight_of(least), 0);
        for (fill, at_hi) in [(most, true), (least, false)] {
            for rest in [0.0f32, -2.0, -10.0] {
                let mut logits: Vec<f32> = (0..v)
                    .map(|i| if i / CHUNK % 3 == 2 { -40.0 } else { fill })
                    .collect();
                logits[0] = 0.0;
                // One chunk apart from the low ones, with a small weight.
                for x in &mut logits[CHUNK * 7..CHUNK * 8] {
                    *x = rest - 5.0;
                }
                logits[v - 1] = rest;
                let ov = Overrides::new();
                let scale = Scale::new(0.0);
                assert_eq!(low_floor(&logits, &scale), LOW_CUT);
                let total: u64 = logits.iter().map(|&x| scale.weight(x)).sum();
                let mut scratch = vec![Candidate::default(); v];
                let (lo, hi, _) =
                    bounded_mass_and_head(&logits, &ov, &scale, -1.0, 16, &mut scratch);
                assert!(
                    lo <= total && total <= hi,
                    "{fill} {rest}: {lo} {total} {hi}"
                );
                let low_chunks = logits
                    .chunks(CHUNK)
                    .filter(|c| c.iter().all(|&x| x == fill || x == -40.0))
                    .filter(|c| c.contains(&fill))
                    .count() as u64;
                assert!(low_chunks > 20_000, "{low_chunks}");
                let width = low_chunks * CHUNK as u64 * u64::from(LOW_WEIGHT_MAX);
                // The other chunks err by their relative error at most.
                let slack = (2.1 * (APPROX_ERROR + SUM_ERROR) * total as f64) as u64 + 64;
                let near = if at_hi { hi - total } else { total - lo };
                assert!(near <= slack, "{fill} {rest}: {lo} {total} {hi}");
                assert!(hi - lo >= width && hi - lo <= width + slack, "{lo} {hi}");
            }
        }
    }

    #[test]
    fn the_low_floor_follows_the_share_of_weightless_chunks() {
        let scale = Scale::new(0.0);
        // The sample then takes every 65th chunk, which meets every
        // residue of the patterns below.
        let chunks = FLOOR_SAMPLE * 65;
        // One weightless chunk in `every`, spread evenly.
        let with = |every: usize, weightless: f32| -> Vec<f32> {
            (0..chunks * CHUNK)
                .map(|i| {
                    if (i / CHUNK) % every == 0 {
                        weightless
                    } else {
                        -5.0
                    }
                })
                .collect()
        };
        assert_eq!(low_floor(&with(4, -30.0), &scale), LOW_CUT);
        assert_eq!(low_floor(&with(8, -30.0), &scale), LOW_CUT);
        assert_eq!(low_floor(&with(16, -30.0), &scale), ZERO_WEIGHT_CUT);
        // NaN chunks weigh nothing either; -22 itself may still weigh.
        assert_eq!(low_floor(&with(4, f32::NAN), &scale), LOW_CUT);
        assert_eq!(
            low_floor(&with(2, ZERO_WEIGHT_CUT), &scale),
            ZERO_WEIGHT_CUT
        );
        assert_eq!(low_floor(&[0.0; 5], &scale), ZERO_WEIGHT_CUT);
        assert_eq!(low_floor(&[], &scale), ZERO_WEIGHT_CUT);
    }

    #[test]
    fn weight_histogram_bins_every_weight_exactly() {
        scaled_cases(11, |v, logits, ov, all, scale| {
            let mut want = [0u64; BINS];
            for c in all {
                want[bin_of(scale.d(c.logit))] += scale.weight(c.logit);
            }
            let mut hist = [0u64; BINS];
            let total = weight_histogram(logits, ov, &scale, &mut hist);
            assert_eq!(hist, want, "v {v} scale {scale:?}");
            assert_eq!(
                total,
                total_weight(logits, ov, &scale),
                "v {v} scale {scale:?}"
            );
        });
    }

    #[test]
    fn bin_floors_split_the_bins_exactly() {
        for b in 0..BINS - 1 {
            let floor = bin_floor(b);
            let under = f32::from_bits(floor.to_bits() + 1);
            assert!(bin_of(floor) <= b && bin_of(under) > b, "bin {b}");
            assert_eq!(bin_of(-(b as f32) / BINS_PER_NAT), b);
        }
        assert_eq!(bin_of(0.0), 0);
        assert_eq!(bin_of(-0.0), 0);
        assert_eq!(bin_of(f32::NEG_INFINITY), BINS - 1);
        assert_eq!(bin_of(-1.0e30), BINS - 1);
        assert_eq!(bin_of(ZERO_WEIGHT_CUT), BINS - 1);
    }

    #[test]
    fn marked_chunks_may_fill_scratch_to_the_last_entry() {
        // Nearly every chunk holds head candidates, so the chunk list at
        // the back of scratch and the head collected at the front come
        // close when scratch holds exactly 17 entries per listed chunk;
        // with fewer the head is collected by a second scan instead, and
        // with as few as the vocabulary the list would be overwritten
        // before it is read. Overrides penalise the top token, pull a token into the head
        // from a chunk that would not be listed, and ban one and push
        // another out of the head in the tail chunk.
        let chunks = 63;
        let v = chunks * CHUNK + 12;
        let mut s = 41u64;
        let mut logits: Vec<f32> = (0..v)
            .map(|i| {
                let x = lcg(&mut s) * 0.75 - 3.0;
                if [59, 61, 62].contains(&(i / CHUNK)) {
                    x - 10.0
                } else {
                    x
                }
            })
            .collect();
        logits[100] = 0.5;
        // Every listed chunk but the one pulled in and the tail is full,
        // so the head grows as fast as it can towards the list.
        let bias = [
            (59 * CHUNK as u32 + 3, 12.0),
            (v as u32 - 3, f32::NEG_INFINITY),
            (v as u32 - 5, -9.0),
        ];
        let c = Config {
            repeat_penalty: 1.4,
            ..Config::default()
        };
        let mut ov = Overrides::new();
        ov.build(&logits, &[100, v as u32 - 1], &bias, &c).unwrap();
        let all = reference(&logits, &ov);
        let scale = Scale::new(all[0].logit);
        let cut = -7.0;
        let head: Vec<Candidate> = all
            .iter()
            .copied()
            .filter(|c| scale.d(c.logit) >= cut)
            .collect();
        let mut listed: Vec<u32> = head.iter().map(|c| c.id / CHUNK as u32).collect();
        listed.sort_unstable();
        listed.dedup();
        let marked = listed.len();
        assert_eq!(marked, 62, "chunks {listed:?}");
        assert_eq!(head.len(), 60 * CHUNK + 1 + 10, "head");

        let total: u64 = all.iter().map(|c| scale.weight(c.logit)).sum();
        let stale = Candidate { id: 9, logit: 1e30 };
        for len in [v, 17 * marked - 1, 17 * marked, 17 * marked + 1, 40 * v] {
            let mut scratch = vec![stale; len];
            let (got_total, n) = mass_and_head(&logits, &ov, &scale, cut, len, &mut scratch);
            assert_eq!(got_total, total, "len {len}");
            let n = n.unwrap();
            assert_eq!(sorted(scratch[..n].to_vec()), head, "len {len}");

            let mut scratch = vec![stale; len];
            let (lo, hi, n) = bounded_mass_and_head(&logits, &ov, &scale, cut, len, &mut scratch);
            assert!(lo <= total && total <= hi, "len {len}");
            let n = n.unwrap();
            assert_eq!(sorted(scratch[..n].to_vec()), head, "len {len}");

            // The list itself, read with a limit at the head's size and one below.
            let mut scratch = vec![stale; len];
            let mut small = ExactSmall::default();
            let (_, listed) = mass_pass(&logits, &ov, &scale, cut, &mut scratch, &mut small);
            assert_eq!(listed, marked, "len {len}");
            if listed * (CHUNK + 1) <= len {
                let mut again = scratch.clone();
                let n = collect_marked(&logits, &ov, &scale, cut, head.len(), &mut again, listed);
                assert_eq!(n.map(|n| sorted(again[..n].to_vec())), Some(head.clone()));
                let limit = head.len() - 1;
                let n = collect_marked(&logits, &ov, &scale, cut, limit, &mut scratch, listed);
                assert_eq!(n, None, "len {len}");
            }
        }
    }
}
