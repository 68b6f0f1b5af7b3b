//! Repetition, presence and frequency penalties, and logit bias, as sparse overrides.
//!
//! Input: the dense logits, the penalty window and the bias list. Output:
//! [`Overrides`], a short list sorted by token id that holds the changed
//! logit of every token named in the window or the bias list.
//! Invariants: the dense logits are never written; only ids named by the
//! caller are changed, so the cost depends on the window and the bias list,
//! not on the vocabulary. Ids are unique and ascending.

use heapless::Vec;

use crate::{Config, Error};

/// Most tokens the penalty window may hold.
pub const MAX_RECENT: usize = 1024;

/// Most entries the logit bias list may hold.
pub const MAX_BIAS: usize = 256;

const MAX_OVERRIDES: usize = MAX_RECENT + MAX_BIAS;

/// The changed logit of one token, packed as `id << 32 | value bits`.
///
/// Packing makes a list of them sort as plain integers, by id first, which
/// is several times faster than sorting a struct with a key. While the list
/// is built, the low word may hold a bias entry's position instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Override(u64);

impl Override {
    fn new(id: u32, low: u32) -> Self {
        Override((u64::from(id) << 32) | u64::from(low))
    }

    fn with_value(id: u32, value: f32) -> Self {
        Override::new(id, value.to_bits())
    }

    /// Token id.
    pub(crate) fn id(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The logit after penalties and bias.
    pub(crate) fn value(self) -> f32 {
        f32::from_bits(self.low())
    }

    fn low(self) -> u32 {
        // Keeps the low word: the truncation is the point.
        self.0 as u32
    }
}

/// Changed logits, sorted by id, at most [`MAX_RECENT`] + [`MAX_BIAS`] of them.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    list: Vec<Override, MAX_OVERRIDES>,
}

/// Applies the repetition penalty, then presence and frequency, as llama.cpp does.
pub(crate) fn penalize(x: f32, count: u32, config: &Config) -> f32 {
    let rp = config.repeat_penalty;
    // llama.cpp's rule: a positive logit is divided, zero or negative multiplied,
    // so the penalty always lowers the token.
    // Both computed, then one picked: which one applies follows no
    // pattern across the window's tokens, so a branch would be mispredicted.
    let (divided, multiplied) = (x / rp, x * rp);
    let x = crate::select::pick(x > 0.0, divided, multiplied);
    let count = count as f32;
    x - (count * config.frequency_penalty + config.presence_penalty)
}

impl Overrides {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Overrides { list: Vec::new() }
    }

    /// The overrides, ascending by id.
    pub(crate) fn as_slice(&self) -> &[Override] {
        &self.list
    }

    /// The changed logit of `id`, if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, id: u32) -> Option<f32> {
        let i = self.list.binary_search_by_key(&id, |o| o.id()).ok()?;
        self.list.get(i).map(|o| o.value())
    }

    /// Rebuilds the list from the window and the bias list.
    ///
    /// Penalties count each token's occurrences in `recent`; bias entries are
    /// added after the penalties, in list order, several entries for one id
    /// adding up one after the other.
    ///
    /// # Errors
    ///
    /// - [`Error::PenaltyWindowTooLarge`] if `recent` exceeds [`MAX_RECENT`].
    /// - [`Error::TooManyBiases`] if `bias` exceeds [`MAX_BIAS`].
    /// - [`Error::TokenOutOfRange`] if an id is not below `logits.len()`.
    /// - [`Error::InvalidBias`] if a bias value is NaN.
    #[cfg(test)]
    pub(crate) fn build(
        &mut self,
        logits: &[f32],
        recent: &[u32],
        bias: &[(u32, f32)],
        config: &Config,
    ) -> Result<(), Error> {
        self.build_with(logits, recent, bias, config, None)
    }

    /// `Overrides::build`, taking the window's counts from `counts` when
    /// it is given and the window is short enough to be kept there.
    ///
    /// # Errors
    ///
    /// - As `Overrides::build`.
    pub(crate) fn build_with(
        &mut self,
        logits: &[f32],
        recent: &[u32],
        bias: &[(u32, f32)],
        config: &Config,
        counts: Option<&mut WindowCounts>,
    ) -> Result<(), Error> {
        self.list.clear();
        let vocab = logits.len();
        if recent.len() > MAX_RECENT {
            return Err(Error::PenaltyWindowTooLarge {
                len: recent.len(),
                capacity: MAX_RECENT,
            });
        }
        if bias.len() > MAX_BIAS {
            return Err(Error::TooManyBiases {
                len: bias.len(),
                capacity: MAX_BIAS,
            });
        }
        // Every id is checked even when penalties are off, so that a bad
        // window is reported the same way whatever the settings.
        let logit = |id: u32| logits.get(id as usize).copied();
        // One comparison of the largest id first; the loop only names the
        // first offender.
        let largest = recent.iter().fold(0u32, |a, &id| a.max(id));
        if !recent.is_empty() && largest as usize >= vocab {
            for &id in recent {
                if logit(id).is_none() {
                    return Err(Error::TokenOutOfRange { id, vocab });
                }
            }
        }
        for &(id, b) in bias {
            if logit(id).is_none() {
                return Err(Error::TokenOutOfRange { id, vocab });
            }
            if b.is_nan() {
                return Err(Error::InvalidBias { id });
            }
        }

        let counted = match counts {
            Some(c) if config.penalties_active() => c.update(recent),
            _ => None,
        };
        if let Some(counted) = counted {
            for &entry in counted {
                let (id, count) = ((entry >> 32) as u32, entry as u32);
                let value = penalize(logit(id).unwrap_or(f32::NAN), count, config);
                self.push(Override::with_value(id, value))?;
            }
        } else if config.penalties_active() {
            for &id in recent {
                self.push(Override::new(id, 0))?;
            }
            self.list.sort_unstable();
            // Collapse each run of one id into one entry with its count.
            let mut kept = 0usize;
            let mut read = 0usize;
            while let Some(id) = self.list.get(read).map(|o| o.id()) {
                let mut count = 0u32;
                while self.list.get(read).is_some_and(|o| o.id() == id) {
                    count += 1;
                    read += 1;
                }
                let value = penalize(logit(id).unwrap_or(f32::NAN), count, config);
                if let Some(slot) = self.list.get_mut(kept) {
                    *slot = Override::with_value(id, value);
                }
                kept += 1;
            }
            self.list.truncate(kept);
        }

        let penalized = self.list.len();
        for (pos, &(id, _)) in bias.iter().enumerate() {
            self.push(Override::new(id, u32::try_from(pos).unwrap_or(u32::MAX)))?;
        }
        let (pen, tail) = self.list.split_at_mut(penalized);
        // Sorting by (id, position) makes several biases on one id add up in
        // list order, which fixes the float rounding.
        tail.sort_unstable();
        let mut kept = 0usize;
        for read in 0..tail.len() {
            let Some(&entry) = tail.get(read) else {
                break;
            };
            let id = entry.id();
            let b = bias.get(entry.low() as usize).map_or(0.0, |&(_, b)| b);
            if let Ok(i) = pen.binary_search_by_key(&id, |o| o.id()) {
                if let Some(o) = pen.get_mut(i) {
                    *o = Override::with_value(id, o.value() + b);
                }
                continue;
            }
            let last = kept.checked_sub(1);
            match last.and_then(|p| tail.get_mut(p)) {
                Some(o) if o.id() == id => *o = Override::with_value(id, o.value() + b),
                _ => {
                    if let Some(o) = tail.get_mut(kept) {
                        *o = Override::with_value(id, logit(id).unwrap_or(f32::NAN) + b);
                        kept += 1;
                    }
                }
            }
        }
        self.list.truncate(penalized + kept);
        if kept > 0 {
            // Both parts are sorted; only bias-only ids can be out of place.
            self.list.sort_unstable();
        }
        Ok(())
    }

    fn push(&mut self, o: Override) -> Result<(), Error> {
        // Unreachable: the lengths were checked against the capacity above.
        self.list.push(o).map_err(|_| Error::PenaltyWindowTooLarge {
            len: MAX_OVERRIDES + 1,
            capacity: MAX_RECENT,
        })
    }
}

/// Most window ids whose counts a sampler keeps from one call to the next.
pub(crate) const COUNTED_RECENT: usize = 64;

/// The last penalty window and the count of each of its ids.
///
/// Consecutive calls of a generation pass the same window, or the same one
/// moved on by a token, so the counts are updated instead of the window
/// being sorted again. Only speed depends on it: the counts are always
/// those of the window passed.
#[derive(Debug, Default)]
pub(crate) struct WindowCounts {
    /// The window the counts are of.
    window: Vec<u32, COUNTED_RECENT>,
    /// `id << 32 | count`, ascending by id.
    counts: Vec<u64, COUNTED_RECENT>,
}

impl WindowCounts {
    /// No window yet.
    pub(crate) const fn new() -> Self {
        WindowCounts {
            window: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// The counts of `recent`, or `None` when it is too long to keep.
    fn update(&mut self, recent: &[u32]) -> Option<&[u64]> {
        if recent.len() > COUNTED_RECENT {
            return None;
        }
        let (old, new) = (self.window.as_slice(), recent);
        let moved =
            !old.is_empty() && old.len() == new.len() && old.get(1..) == new.get(..new.len() - 1);
        let grown = new.len() == old.len() + 1 && new.get(..old.len()) == Some(old);
        if old == new {
            return Some(&self.counts);
        }
        let fresh = if moved {
            let gone = old.first().copied();
            gone.is_some_and(|id| self.remove(id))
        } else {
            grown
        };
        let fresh = fresh && new.last().is_some_and(|&id| self.add(id));
        if !fresh {
            self.recount(recent)?;
        }
        self.window.clear();
        self.window.extend_from_slice(recent).ok()?;
        Some(&self.counts)
    }

    /// Takes one occurrence of `id` away; false if it had none.
    fn remove(&mut self, id: u32) -> bool {
        let Ok(i) = self.counts.binary_search_by_key(&id, |&e| (e >> 32) as u32) else {
            return false;
        };
        match self.counts.get_mut(i) {
            Some(e) if *e as u32 > 1 => *e -= 1,
            Some(_) => {
                self.counts.remove(i);
            }
            None => return false,
        }
        true
    }

    /// Adds one occurrence of `id`; false if there was no room.
    fn add(&mut self, id: u32) -> bool {
        match self.counts.binary_search_by_key(&id, |&e| (e >> 32) as u32) {
            Ok(i) => match self.counts.get_mut(i) {
                Some(e) => {
                    *e += 1;
                    true
                }
                None => false,
            },
            Err(i) => self.counts.insert(i, (u64::from(id) << 32) | 1).is_ok(),
        }
    }

    /// Counts `recent` from scratch: sorted, then each run of one id collapsed.
    fn recount(&mut self, recent: &[u32]) -> Option<()> {
        let mut ids: Vec<u32, COUNTED_RECENT> = Vec::new();
        ids.extend_from_slice(recent).ok()?;
        ids.sort_unstable();
        self.counts.clear();
        for &id in &ids {
            match self.counts.last_mut() {
                Some(e) if (*e >> 32) as u32 == id => *e += 1,
                _ => self.counts.push((u64::from(id) << 32) | 1).ok()?,
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;

    fn cfg(rp: f32, presence: f32, freq: f32) -> Config {
        Config {
            repeat_penalty: rp,
            presence_penalty: presence,
            frequency_penalty: freq,
            ..Config::default()
        }
    }

    #[test]
    fn repeat_penalty_follows_llama_cpp_sign_rule() {
        let c = cfg(2.0, 0.0, 0.0);
        assert_eq!(penalize(3.0, 1, &c), 1.5);
        assert_eq!(penalize(-3.0, 1, &c), -6.0);
        assert_eq!(penalize(0.0, 1, &c), 0.0);
        assert_eq!(penalize(f32::NEG_INFINITY, 1, &c), f32::NEG_INFINITY);
    }

    #[test]
    fn presence_once_frequency_per_occurrence() {
        let logits = [1.0f32, 2.0, 3.0, 4.0];
        let mut o = Overrides::new();
        let c = cfg(1.0, 0.5, 0.25);
        assert_eq!(o.build(&logits, &[2, 1, 2, 2], &[], &c), Ok(()));
        assert_eq!(o.get(2), Some(3.0 - (3.0 * 0.25 + 0.5)));
        assert_eq!(o.get(1), Some(2.0 - (0.25 + 0.5)));
        assert_eq!(o.get(0), None);
        assert_eq!(o.as_slice().len(), 2);
    }

    #[test]
    fn penalties_off_leave_window_unused() {
        let logits = [1.0f32, 2.0];
        let mut o = Overrides::new();
        assert_eq!(
            o.build(&logits, &[0, 1, 1], &[], &Config::default()),
            Ok(())
        );
        assert!(o.as_slice().is_empty());
    }

    #[test]
    fn bias_adds_after_penalty_in_list_order() {
        let logits = [1.0f32, 2.0, 3.0, 4.0];
        let mut o = Overrides::new();
        let c = cfg(2.0, 0.0, 0.0);
        let bias = [(3, 1.0), (1, -0.5), (3, 0.25), (0, f32::NEG_INFINITY)];
        assert_eq!(o.build(&logits, &[1], &bias, &c), Ok(()));
        assert_eq!(o.get(1), Some(2.0 / 2.0 - 0.5));
        assert_eq!(o.get(3), Some(4.0 + 1.0 + 0.25));
        assert_eq!(o.get(0), Some(f32::NEG_INFINITY));
        assert_eq!(o.get(2), None);
        let ids: [u32; 3] = [0, 1, 3];
        assert!(o.as_slice().iter().map(|x| x.id()).eq(ids));
    }

    #[test]
    fn errors_name_the_problem() {
        let logits = [0.0f32; 4];
        let mut o = Overrides::new();
        let c = Config::default();
        assert_eq!(
            o.build(&logits, &[4], &[], &c),
            Err(Error::TokenOutOfRange { id: 4, vocab: 4 })
        );
        assert_eq!(
            o.build(&logits, &[], &[(9, 1.0)], &c),
            Err(Error::TokenOutOfRange { id: 9, vocab: 4 })
        );
        assert_eq!(
            o.build(&logits, &[], &[(1, f32::NAN)], &c),
            Err(Error::InvalidBias { id: 1 })
        );
        let long = [0u32; MAX_RECENT + 1];
        assert_eq!(
            o.build(&logits, &long, &[], &c),
            Err(Error::PenaltyWindowTooLarge {
                len: MAX_RECENT + 1,
                capacity: MAX_RECENT
            })
        );
        let many = [(0u32, 0.0f32); MAX_BIAS + 1];
        assert_eq!(
            o.build(&logits, &[], &many, &c),
            Err(Error::TooManyBiases {
                len: MAX_BIAS + 1,
                capacity: MAX_BIAS
            })
        );
    }

    #[test]
    fn kept_counts_follow_every_window() {
        // Windows as a generation passes them (the same, grown by one,
        // moved on by one) and unrelated ones; the kept counts must always
        // be those of the window passed.
        let mut kept = WindowCounts::new();
        let mut state = 11u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % n) as u32
        };
        let mut window: std::vec::Vec<u32> = std::vec::Vec::new();
        for step in 0..2000 {
            match next(6) {
                0 => {}
                1 if window.len() < COUNTED_RECENT => window.push(next(40)),
                1 | 2 => {
                    if !window.is_empty() {
                        window.remove(0);
                    }
                    window.push(next(40));
                }
                3 => {
                    window = (0..next(COUNTED_RECENT as u64 + 20))
                        .map(|_| next(60))
                        .collect()
                }
                4 => {
                    if let Some(last) = window.last_mut() {
                        *last = next(40);
                    }
                }
                _ => window.truncate(next(COUNTED_RECENT as u64) as usize),
            }
            let got = kept.update(&window).map(<[u64]>::to_vec);
            let mut tally = std::collections::BTreeMap::new();
            for &id in &window {
                *tally.entry(id).or_insert(0u64) += 1;
            }
            let want: std::vec::Vec<u64> = tally
                .into_iter()
                .map(|(id, n)| (u64::from(id) << 32) | n)
                .collect();
            let want = (window.len() <= COUNTED_RECENT).then_some(want);
            assert_eq!(got, want, "step {step}: window {window:?}");
        }
    }

    #[test]
    fn kept_counts_give_the_same_overrides() {
        let logits: std::vec::Vec<f32> = (0..300).map(|i| (i % 17) as f32 - 8.0).collect();
        let c = cfg(1.3, 0.2, 0.1);
        let mut kept = WindowCounts::new();
        let mut window: std::vec::Vec<u32> = (0..64).map(|i| i * 7 % 300).collect();
        for step in 0..50u32 {
            let mut a = Overrides::new();
            let mut b = Overrides::new();
            a.build_with(&logits, &window, &[(5, 1.0)], &c, Some(&mut kept))
                .unwrap();
            b.build(&logits, &window, &[(5, 1.0)], &c).unwrap();
            assert_eq!(a.as_slice(), b.as_slice(), "step {step}");
            window.remove(0);
            window.push(step * 13 % 300);
        }
    }

    #[test]
    fn full_capacity_fits() {
        let logits = [0.5f32; 4096];
        let recent: [u32; MAX_RECENT] = core::array::from_fn(|i| i as u32);
        let bias: [(u32, f32); MAX_BIAS] = core::array::from_fn(|i| (2000 + i as u32, 1.0));
        let mut o = Overrides::new();
        assert_eq!(
            o.build(&logits, &recent, &bias, &cfg(1.1, 0.0, 0.0)),
            Ok(())
        );
        assert_eq!(o.as_slice().len(), MAX_RECENT + MAX_BIAS);
    }
}
