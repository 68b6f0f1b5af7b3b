//! Stop strings and the automaton that finds them in a byte stream.
//!
//! Input: up to `S` stop strings of up to `L` bytes each, then sanitized text
//! one byte at a time. Output: after each byte, how many trailing bytes could
//! still begin a stop string, or which stop string has just been completed.
//!
//! Invariants: every stored stop string is non-empty valid UTF-8. Each one
//! carries its Knuth–Morris–Pratt border table, so a byte costs O(`S`)
//! amortized steps however the text and the stops overlap, and the matcher
//! never needs to look back further than the bytes it is holding.

use heapless::Vec;

use super::StreamError;

/// Several stop strings, each at most `L` bytes, at most `S` of them.
///
/// The strings keep the order in which they were pushed; that order gives
/// each its index, which is what [`TextStream::stopped`] reports.
/// The set takes `S * L * (1 + size_of::<usize>())` bytes plus a little,
/// whatever it holds.
///
/// [`TextStream::stopped`]: super::TextStream::stopped
#[derive(Debug, Clone)]
pub struct StopSet<const S: usize, const L: usize> {
    stops: Vec<Stop<L>, S>,
}

/// One stop string and its border table.
#[derive(Debug, Clone)]
pub(crate) struct Stop<const L: usize> {
    bytes: Vec<u8, L>,
    /// `border[i]` is the length of the longest proper prefix of
    /// `bytes[..=i]` that is also its suffix.
    border: [usize; L],
}

impl<const S: usize, const L: usize> StopSet<S, L> {
    /// An empty set.
    ///
    /// # Panics
    ///
    /// Never.
    pub const fn new() -> Self {
        Self { stops: Vec::new() }
    }

    /// Adds a stop string at the next index.
    ///
    /// The same string may be added twice; the lower index then wins.
    ///
    /// # Errors
    ///
    /// The set is left unchanged and:
    /// - [`StreamError::EmptyStop`] if `stop` is empty;
    /// - [`StreamError::StopTooLong`] if it is longer than `L` bytes;
    /// - [`StreamError::StopNotUtf8`] if it is not valid UTF-8;
    /// - [`StreamError::TooManyStops`] if the set already holds `S` strings.
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::{StopSet, StreamError};
    ///
    /// let mut stops = StopSet::<2, 8>::new();
    /// stops.push(b"\n\n")?;
    /// assert_eq!(stops.push(b""), Err(StreamError::EmptyStop));
    /// assert_eq!(
    ///     stops.push(b"far too long"),
    ///     Err(StreamError::StopTooLong { len: 12, capacity: 8 })
    /// );
    /// stops.push("User:".as_bytes())?;
    /// assert_eq!(stops.push(b"x"), Err(StreamError::TooManyStops { capacity: 2 }));
    /// assert_eq!(stops.get(1), Some("User:".as_bytes()));
    /// # Ok::<(), StreamError>(())
    /// ```
    pub fn push(&mut self, stop: &[u8]) -> Result<(), StreamError> {
        if stop.is_empty() {
            return Err(StreamError::EmptyStop);
        }
        if stop.len() > L {
            return Err(StreamError::StopTooLong {
                len: stop.len(),
                capacity: L,
            });
        }
        if core::str::from_utf8(stop).is_err() {
            return Err(StreamError::StopNotUtf8);
        }
        if self.stops.is_full() {
            return Err(StreamError::TooManyStops { capacity: S });
        }

        let entry = Stop::new(stop).ok_or(StreamError::StopTooLong {
            len: stop.len(),
            capacity: L,
        })?;
        self.stops
            .push(entry)
            .map_err(|_| StreamError::TooManyStops { capacity: S })
    }

    /// Adds a stop string given as text; see [`StopSet::push`].
    ///
    /// # Errors
    ///
    /// As [`StopSet::push`], except that text is always valid UTF-8.
    ///
    /// # Panics
    ///
    /// Never.
    pub fn push_str(&mut self, stop: &str) -> Result<(), StreamError> {
        self.push(stop.as_bytes())
    }

    /// How many stop strings the set holds.
    pub fn len(&self) -> usize {
        self.stops.len()
    }

    /// Whether the set holds no stop string.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop string at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.stops.get(index).map(|stop| stop.bytes.as_slice())
    }

    /// The stored stops, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Stop<L>> {
        self.stops.iter()
    }
}

impl<const S: usize, const L: usize> Default for StopSet<S, L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const L: usize> Stop<L> {
    /// Stores `text` and computes its border table; `None` if it exceeds `L`.
    fn new(text: &[u8]) -> Option<Self> {
        let bytes = Vec::from_slice(text).ok()?;
        let mut stop = Self {
            bytes,
            border: [0; L],
        };

        // border[0] is 0. Each later entry extends the previous border, or
        // falls back along shorter borders; this is `advance` run on the
        // string against itself, reading only entries already filled in.
        for i in 1..text.len() {
            let previous = stop.border.get(i - 1).copied().unwrap_or(0);
            let byte = text.get(i).copied().unwrap_or(0);
            let next = stop.advance(previous, byte);
            if let Some(slot) = stop.border.get_mut(i) {
                *slot = next;
            }
        }
        Some(stop)
    }

    /// Length of the stop string in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The matched length after `byte`, given `matched` bytes matched before it.
    ///
    /// `matched` must be below `len()`; the result equals `len()` exactly when
    /// the stop string has just been completed.
    pub(crate) fn advance(&self, mut matched: usize, byte: u8) -> usize {
        loop {
            if self.bytes.get(matched) == Some(&byte) {
                return matched + 1;
            }
            if matched == 0 {
                return 0;
            }
            // A border is strictly shorter than what it borders, so this
            // loop ends.
            matched = self.border.get(matched - 1).copied().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(text: &str) -> Stop<16> {
        Stop::new(text.as_bytes()).unwrap()
    }

    #[test]
    fn border_table_of_a_self_overlapping_string() {
        let s = stop("abacabab");
        assert_eq!(&s.border[..8], &[0, 0, 1, 0, 1, 2, 3, 2]);
    }

    #[test]
    fn advance_falls_back_to_the_longest_border() {
        let s = stop("aab");
        let mut matched = 0;
        for &b in b"aaa" {
            matched = s.advance(matched, b);
        }
        assert_eq!(matched, 2);
        assert_eq!(s.advance(matched, b'b'), 3);
        assert_eq!(s.advance(1, b'x'), 0);
    }

    #[test]
    fn push_refuses_invalid_utf8_and_keeps_the_set() {
        let mut set = StopSet::<4, 8>::new();
        assert_eq!(set.push(b"\xFF"), Err(StreamError::StopNotUtf8));
        assert_eq!(set.push(b"\xE2\x82"), Err(StreamError::StopNotUtf8));
        assert!(set.is_empty());
        assert_eq!(set.push_str("\u{FFFD}"), Ok(()));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn capacity_errors_name_the_capacity() {
        let mut set = StopSet::<1, 3>::new();
        assert_eq!(
            set.push(b"abcd"),
            Err(StreamError::StopTooLong {
                len: 4,
                capacity: 3
            })
        );
        assert_eq!(set.push(b"abc"), Ok(()));
        assert_eq!(
            set.push(b"a"),
            Err(StreamError::TooManyStops { capacity: 1 })
        );
        assert_eq!(set.get(0), Some(&b"abc"[..]));
        assert_eq!(set.get(1), None);
    }

    #[test]
    fn zero_capacity_set_takes_nothing() {
        let mut set = StopSet::<0, 4>::new();
        assert_eq!(
            set.push(b"a"),
            Err(StreamError::TooManyStops { capacity: 0 })
        );
    }
}
