//! Stop strings and UTF-8-safe release of generated text.
//!
//! Input: the decoded pieces of generated tokens, raw bytes split anywhere,
//! inside a character or inside a stop string. Output: the bytes that may be
//! shown now, written to a buffer the caller owns.
//!
//! Each byte goes through two stages:
//!
//! 1. a UTF-8 sanitizer holds the bytes of an unfinished character until the
//!    character is complete, and turns each maximal invalid subpart into one
//!    U+FFFD, exactly as `String::from_utf8_lossy` does;
//! 2. a stop matcher holds the sanitized bytes that could still begin a stop
//!    string, releases them as soon as they cannot, and drops the stop string
//!    and everything after it once one is complete.
//!
//! The exact contract, the capacities and the cost are stated on [`TextStream`],
//! where the public documentation shows them.

mod error;
mod stop;
mod utf8;

pub use error::StreamError;
pub use stop::StopSet;

use utf8::{Utf8Sanitizer, MAX_PENDING};

/// What one [`TextStream::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes written to the front of the output buffer; valid UTF-8.
    pub written: usize,
    /// Index of the stop string that has matched, if one has (in this call
    /// or an earlier one).
    pub stop: Option<usize>,
}

/// Text streamer: stop matching over decoded bytes plus UTF-8 safety.
///
/// `S` and `L` are the capacities of its [`StopSet`]; `H` is the held-bytes
/// capacity and must be at least `L + 3` (checked at compile time).
///
/// # What is matched
///
/// Stop strings are matched against the *sanitized* text, the text as it
/// will be shown, never against raw bytes. A stop string must therefore be
/// valid UTF-8 (anything else is refused when it is added), and a stop string
/// containing U+FFFD matches a replacement character however the invalid
/// bytes behind it were split.
///
/// # The contract
///
/// Split a byte string `text` into pieces in any way, push them in order and
/// call [`TextStream::finish`]. Everything released, concatenated, equals
/// this reference:
///
/// 1. decode `text` with `String::from_utf8_lossy`;
/// 2. find the stop string whose first occurrence *ends* earliest; if several
///    end at the same byte, take the longest, that is the one that starts
///    first; if the same string was added twice, the lower index;
/// 3. cut the decoded text where that occurrence starts, or keep all of it
///    when no stop string occurs.
///
/// The rule is "first to complete", because that is the first moment the
/// stream can know a stop has happened: generation ends there, and text
/// after that point was never meant to be shown.
///
/// Each call's released bytes are valid UTF-8 on their own. Once a stop
/// string has matched, [`TextStream::push`] releases nothing more and
/// [`TextStream::stopped`] names the stop string.
///
/// # Capacities
///
/// - `S`: most stop strings, `L`: most bytes in one stop string, both in the
///   type of [`StopSet`].
/// - `H`: held-bytes capacity of [`TextStream`]. The stream never holds more
///   than `max(L, 1) + 2` bytes: `L - 1` that may begin a stop string (none
///   when `L` is 0) and 3 of an unfinished character. `H >= L + 3` is
///   checked when the program is built (`cargo build`; `cargo check` does
///   not evaluate the check, which runs when the type is instantiated);
///   `H` sizes the held-text buffer and enters the output bounds.
/// - Output: the caller's buffer. [`TextStream::output_bound`] and
///   [`TextStream::finish_bound`] give lengths that always suffice; a smaller
///   buffer fails with [`StreamError::OutputTooSmall`] only when what the
///   call releases does not fit, and then changes nothing.
/// - Memory: a [`StopSet`] takes about `S * L * (1 + size_of::<usize>())`
///   bytes (each stop string keeps its border table), a [`TextStream`] that
///   plus `H + S * size_of::<usize>()` and a few words.
///
/// Pieces may be of any length: they are consumed byte by byte and only the
/// held text is stored, so a piece far longer than `H` is fine given an
/// output buffer for what it releases.
///
/// # Cost
///
/// O(`S`) amortized work per input byte (each stop string runs a
/// Knuth–Morris–Pratt automaton), no allocation, and no panic on any input.
///
/// # Examples
///
/// ```
/// use sampler_core::{StopSet, TextStream};
///
/// let mut stops = StopSet::<1, 8>::new();
/// stops.push_str("\nUser:")?;
/// let mut stream = TextStream::<1, 8, 11>::new(stops);
///
/// // Fixed buffers only, as on a target without an allocator: `out`
/// // takes one call's release, `text` collects them.
/// let mut out = [0u8; 32];
/// let (mut text, mut len) = ([0u8; 64], 0);
/// for piece in ["Hi", " th", "ere\nUs", "er: more"] {
///     let pushed = stream.push(piece.as_bytes(), &mut out)?;
///     let released = &out[..pushed.written];
///     text[len..len + released.len()].copy_from_slice(released);
///     len += released.len();
///     if pushed.stop.is_some() {
///         break;
///     }
/// }
/// assert_eq!(&text[..len], b"Hi there");
/// assert_eq!(stream.stopped(), Some(0));
/// # Ok::<(), sampler_core::StreamError>(())
/// ```
///
/// `H` below `L + 3` does not build:
///
/// ```compile_fail
/// use sampler_core::{StopSet, TextStream};
///
/// let stream = TextStream::<1, 8, 10>::new(StopSet::new());
/// ```
#[derive(Debug, Clone)]
pub struct TextStream<const S: usize, const L: usize, const H: usize> {
    stops: StopSet<S, L>,
    state: State<S, H>,
}

impl<const S: usize, const L: usize, const H: usize> TextStream<S, L, H> {
    /// Refuses, at compile time, an `H` too small for the held text.
    const HELD_FITS: () = assert!(
        H >= L.saturating_add(MAX_PENDING),
        "TextStream needs H >= L + 3"
    );

    /// A stream that stops at any string of `stops`.
    ///
    /// It is a `const fn`, so a stream with no stop strings can be a
    /// `const` item, copied where it is used (one with stop strings needs
    /// [`StopSet::push_str`], which is not `const`).
    ///
    /// # Panics
    ///
    /// Never; an `H` below `L + 3` is a build error instead (one that
    /// `cargo check` does not report).
    pub const fn new(stops: StopSet<S, L>) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::HELD_FITS;
        Self {
            stops,
            state: State::new(),
        }
    }

    /// An output length that always suffices for a piece of `piece_len` bytes.
    ///
    /// This is `3 * piece_len + H`: a push can release all of the held text,
    /// and each invalid byte of the piece turns into the three bytes of
    /// U+FFFD. (`piece_len + H` suffices when the piece holds no invalid
    /// bytes, but one that does, such as a run of 0xFF, needs more.)
    pub const fn output_bound(piece_len: usize) -> usize {
        piece_len.saturating_mul(3).saturating_add(H)
    }

    /// An output length that always suffices for [`TextStream::finish`]: `H`.
    pub const fn finish_bound() -> usize {
        H
    }

    /// Feeds one decoded token piece and writes the releasable bytes to `out`.
    ///
    /// The bytes written to `out[..written]` are valid UTF-8 on their own.
    /// Once a stop string has matched, this writes nothing and reports the
    /// stop again.
    ///
    /// # Errors
    ///
    /// - [`StreamError::OutputTooSmall`] if `out` is shorter than what this
    ///   call releases; `needed` is that exact amount, the stream is left as
    ///   it was and the contents of `out` are unspecified. A buffer of
    ///   [`TextStream::output_bound`]`(piece.len())` bytes never fails.
    /// - [`StreamError::Finished`] after [`TextStream::finish`], until
    ///   [`TextStream::reset`].
    ///
    /// # Panics
    ///
    /// Never.
    pub fn push(&mut self, piece: &[u8], out: &mut [u8]) -> Result<Pushed, StreamError> {
        if self.state.finished {
            return Err(StreamError::Finished);
        }
        if let Some(stop) = self.state.matcher.stopped {
            return Ok(Pushed {
                written: 0,
                stop: Some(stop),
            });
        }

        // A buffer of the bound's length cannot overflow, so the copy that
        // makes a failed call harmless is only taken when it might.
        let capacity = out.len();
        let backup = (capacity < Self::output_bound(piece.len())).then(|| self.state.clone());
        let mut output = Output::new(out);
        self.state.push(&self.stops, piece, &mut output);

        let written = output.len();
        if written > capacity {
            if let Some(backup) = backup {
                self.state = backup;
            }
            return Err(StreamError::OutputTooSmall {
                needed: written,
                capacity,
            });
        }
        Ok(Pushed {
            written,
            stop: self.state.matcher.stopped,
        })
    }

    /// Ends the text for another reason than a stop string and releases what is held.
    ///
    /// An unfinished character at the end becomes one U+FFFD. That
    /// replacement character is matched like any other text, so it can still
    /// complete a stop string: check [`TextStream::stopped`] afterwards if
    /// that matters. Calling this after a stop, or twice, writes nothing.
    ///
    /// # Errors
    ///
    /// - [`StreamError::OutputTooSmall`] if `out` is shorter than what is
    ///   released; the stream is left as it was. A buffer of
    ///   [`TextStream::finish_bound`]`()` bytes never fails.
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::{StopSet, TextStream};
    ///
    /// let mut stops = StopSet::<1, 4>::new();
    /// stops.push_str("END")?;
    /// let mut stream = TextStream::<1, 4, 7>::new(stops);
    /// let mut out = [0u8; 16];
    ///
    /// // "EN" could still become "END", and the lone 0xE2 could still
    /// // become a character, so nothing is released yet.
    /// let pushed = stream.push(b"EN\xE2", &mut out)?;
    /// assert_eq!(pushed.written, 0);
    ///
    /// let n = stream.finish(&mut out)?;
    /// assert_eq!(&out[..n], "EN\u{FFFD}".as_bytes());
    /// # Ok::<(), sampler_core::StreamError>(())
    /// ```
    pub fn finish(&mut self, out: &mut [u8]) -> Result<usize, StreamError> {
        if self.state.finished {
            return Ok(0);
        }

        let capacity = out.len();
        let backup = (capacity < Self::finish_bound()).then(|| self.state.clone());
        let mut output = Output::new(out);
        self.state.finish(&self.stops, &mut output);

        let written = output.len();
        if written > capacity {
            if let Some(backup) = backup {
                self.state = backup;
            }
            return Err(StreamError::OutputTooSmall {
                needed: written,
                capacity,
            });
        }
        Ok(written)
    }

    /// Index of the stop string that matched, if one has.
    pub fn stopped(&self) -> Option<usize> {
        self.state.matcher.stopped
    }

    /// How many bytes are held back right now; never more than `max(L, 1) + 2`.
    ///
    /// After a stop, what is still held lies past the stop and is never
    /// released.
    pub fn held(&self) -> usize {
        self.state.matcher.held_len + self.state.utf8.pending()
    }

    /// The stop strings this stream matches.
    pub fn stops(&self) -> &StopSet<S, L> {
        &self.stops
    }

    /// Forgets the current text, held bytes and stop included, keeping the stop strings.
    pub fn reset(&mut self) {
        self.state = State::new();
    }
}

/// Everything a push changes; cloned to undo a push that did not fit.
#[derive(Debug, Clone)]
struct State<const S: usize, const H: usize> {
    utf8: Utf8Sanitizer,
    matcher: Matcher<S, H>,
    finished: bool,
}

impl<const S: usize, const H: usize> State<S, H> {
    const fn new() -> Self {
        Self {
            utf8: Utf8Sanitizer::new(),
            matcher: Matcher::new(),
            finished: false,
        }
    }

    fn push<const L: usize>(&mut self, stops: &StopSet<S, L>, piece: &[u8], out: &mut Output<'_>) {
        let Self { utf8, matcher, .. } = self;
        for &byte in piece {
            if matcher.stopped.is_some() {
                break;
            }
            utf8.push(byte, &mut |b| matcher.feed(stops, b, out));
        }
    }

    fn finish<const L: usize>(&mut self, stops: &StopSet<S, L>, out: &mut Output<'_>) {
        let Self { utf8, matcher, .. } = self;
        utf8.finish(&mut |b| matcher.feed(stops, b, out));
        if matcher.stopped.is_none() {
            matcher.release(matcher.held_len, out);
        }
        self.finished = true;
    }
}

/// The stop-matching stage: sanitized bytes in, released bytes out.
#[derive(Debug, Clone)]
struct Matcher<const S: usize, const H: usize> {
    /// Sanitized text not yet released, as a ring: `held_len` bytes from
    /// `held_start`, wrapping at `H`. A ring, so that releasing the oldest
    /// byte of a long held prefix does not move the others.
    held: [u8; H],
    held_start: usize,
    /// Length of the longest tail of the text that is a proper prefix of a
    /// stop string, which is `matched`'s maximum: fewer than `L` bytes.
    held_len: usize,
    /// Per stop string, the length of the longest tail of the text that is
    /// a prefix of it.
    matched: [usize; S],
    stopped: Option<usize>,
}

impl<const S: usize, const H: usize> Matcher<S, H> {
    const fn new() -> Self {
        Self {
            held: [0; H],
            held_start: 0,
            held_len: 0,
            matched: [0; S],
            stopped: None,
        }
    }

    fn feed<const L: usize>(&mut self, stops: &StopSet<S, L>, byte: u8, out: &mut Output<'_>) {
        if self.stopped.is_some() {
            return;
        }
        // held_len < L <= H - 3, so there is room; the `else` cannot happen.
        let end = wrap::<H>(self.held_start.saturating_add(self.held_len));
        let Some(slot) = self.held.get_mut(end) else {
            return;
        };
        *slot = byte;
        self.held_len += 1;

        let mut completed: Option<(usize, usize)> = None;
        let mut keep = 0;
        for (index, (matched, stop)) in self.matched.iter_mut().zip(stops.iter()).enumerate() {
            *matched = stop.advance(*matched, byte);
            if *matched == stop.len() {
                // All stops completed by this byte end at the same place:
                // the longer one started first and wins; among equals the
                // strict comparison keeps the lower index.
                if completed.map_or(true, |(_, len)| stop.len() > len) {
                    completed = Some((index, stop.len()));
                }
            } else {
                keep = keep.max(*matched);
            }
        }

        match completed {
            Some((index, len)) => {
                // The completed stop's earlier bytes were held, because a
                // prefix of it was a tail of the text, so it starts inside
                // `held`; what precedes it is released and the rest dropped.
                self.release(self.held_len.saturating_sub(len), out);
                self.held_len = 0;
                self.stopped = Some(index);
            }
            None => self.release(self.held_len.saturating_sub(keep), out),
        }
    }

    /// Writes the oldest `count` held bytes to `out` and keeps the rest.
    fn release(&mut self, count: usize, out: &mut Output<'_>) {
        let count = count.min(self.held_len);
        if count == 0 {
            return;
        }
        let first = count.min(H.saturating_sub(self.held_start));
        let head = self.held_start.saturating_add(first);
        out.put(self.held.get(self.held_start..head).unwrap_or(&[]));
        out.put(self.held.get(..count - first).unwrap_or(&[]));
        self.held_start = wrap::<H>(self.held_start.saturating_add(count));
        self.held_len -= count;
    }
}

/// `index` reduced into `0..H`; `H` is never 0 (see `HELD_FITS`).
const fn wrap<const H: usize>(index: usize) -> usize {
    match index.checked_rem(H) {
        Some(index) => index,
        None => 0,
    }
}

/// The caller's buffer plus a count that goes on past its end.
///
/// Counting past the end tells a caller whose buffer was too small exactly
/// how much it needs.
struct Output<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Output<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = end;
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::String;
    use std::vec::Vec;

    use super::*;

    const S: usize = 4;
    const L: usize = 16;
    const H: usize = L + 3;

    type Stream = TextStream<S, L, H>;

    fn stream(stops: &[&str]) -> Stream {
        let mut set = StopSet::new();
        for stop in stops {
            set.push_str(stop).unwrap();
        }
        Stream::new(set)
    }

    #[test]
    fn a_stream_without_stops_can_be_a_constant() {
        const PLAIN: Stream = TextStream::new(StopSet::new());
        let mut plain = PLAIN;
        let got = chunks(&mut plain, &[b"caf\xc3", b"\xa9 \xff"]);
        assert_eq!(got.concat(), "caf\u{e9} \u{fffd}".as_bytes());
        assert_eq!(plain.stopped(), None);
    }

    /// Pushes each piece, then finishes; returns every released chunk.
    fn chunks(stream: &mut Stream, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let mut out = [0u8; 256];
        for piece in pieces {
            let pushed = stream.push(piece, &mut out).unwrap();
            chunks.push(out[..pushed.written].to_vec());
        }
        let n = stream.finish(&mut out).unwrap();
        chunks.push(out[..n].to_vec());
        for chunk in &chunks {
            assert!(core::str::from_utf8(chunk).is_ok(), "chunk {chunk:02X?}");
        }
        chunks
    }

    fn text(stops: &[&str], pieces: &[&[u8]]) -> (String, Option<usize>) {
        let mut s = stream(stops);
        let all = chunks(&mut s, pieces).concat();
        (String::from_utf8(all).unwrap(), s.stopped())
    }

    #[test]
    fn several_stops_first_completed_wins() {
        let (out, stop) = text(&["world", "lo w"], &[b"hello world"]);
        assert_eq!(out, "hel");
        assert_eq!(stop, Some(1));
    }

    #[test]
    fn match_spans_token_boundaries() {
        let (out, stop) = text(&["\nUser:"], &[b"Hel", b"lo\nUs", b"er", b": hi"]);
        assert_eq!(out, "Hello");
        assert_eq!(stop, Some(0));
    }

    #[test]
    fn earliest_end_beats_earlier_start() {
        // "abcd" starts first but "bc" is complete one byte sooner.
        let (out, stop) = text(&["abcd", "bc"], &[b"ab", b"cd"]);
        assert_eq!(out, "a");
        assert_eq!(stop, Some(1));
    }

    #[test]
    fn same_end_longer_stop_wins() {
        let (out, stop) = text(&["cd", "bcd"], &[b"abcde"]);
        assert_eq!(out, "a");
        assert_eq!(stop, Some(1));
    }

    #[test]
    fn same_string_twice_lower_index_wins() {
        let (out, stop) = text(&["x", "yz", "yz"], &[b"ayzb"]);
        assert_eq!(out, "a");
        assert_eq!(stop, Some(1));
    }

    #[test]
    fn stop_and_everything_after_is_never_released() {
        let mut s = stream(&["STOP"]);
        let got = chunks(&mut s, &[b"keep S", b"TOP drop", b"more"]);
        assert_eq!(got, [&b"keep "[..], b"", b"", b""]);
        assert_eq!(s.stopped(), Some(0));
    }

    #[test]
    fn push_after_stop_writes_nothing() {
        let mut s = stream(&["!"]);
        let mut out = [0xAAu8; 32];
        let first = s.push(b"hi!", &mut out).unwrap();
        assert_eq!(
            first,
            Pushed {
                written: 2,
                stop: Some(0)
            }
        );
        let again = s.push(b"more text", &mut out).unwrap();
        assert_eq!(
            again,
            Pushed {
                written: 0,
                stop: Some(0)
            }
        );
        assert_eq!(s.finish(&mut out), Ok(0));
    }

    #[test]
    fn possible_stop_is_held_until_it_cannot_match() {
        let mut s = stream(&["abc"]);
        let mut out = [0u8; 32];
        let pushed = s.push(b"xab", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], b"x");
        assert_eq!(s.held(), 2);
        let pushed = s.push(b"d", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], b"abd");
        assert_eq!(s.held(), 0);
        assert_eq!(s.stopped(), None);
    }

    #[test]
    fn overlapping_prefix_keeps_only_what_can_still_match() {
        // After "aaa", only the last "aa" can still begin "aab".
        let mut s = stream(&["aab"]);
        let mut out = [0u8; 32];
        let pushed = s.push(b"aaa", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], b"a");
        assert_eq!(s.held(), 2);
        let pushed = s.push(b"b", &mut out).unwrap();
        assert_eq!(
            pushed,
            Pushed {
                written: 0,
                stop: Some(0)
            }
        );
    }

    #[test]
    fn held_text_wraps_around_the_ring() {
        // After H - 2 released bytes the ring's start sits two bytes before
        // its end, so a held "ab" straddles the wrap when "d" arrives.
        let mut s = stream(&["abc"]);
        let mut out = [0u8; 64];
        let filler = [b'x'; H - 2];
        assert_eq!(s.push(&filler, &mut out).unwrap().written, H - 2);
        assert_eq!(s.push(b"ab", &mut out).unwrap().written, 0);
        let pushed = s.push(b"abd", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], b"ababd");
        let pushed = s.push(b"zab", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], b"z");
        assert_eq!(s.push(b"c", &mut out).unwrap().stop, Some(0));
    }

    #[test]
    fn held_text_is_released_at_finish() {
        let mut s = stream(&["abc"]);
        let got = chunks(&mut s, &[b"x", b"ab"]);
        assert_eq!(got, [&b"x"[..], b"", b"ab"]);
        assert_eq!(s.stopped(), None);
    }

    #[test]
    fn stop_at_the_very_start_releases_nothing() {
        let (out, stop) = text(&["a"], &[b"abc"]);
        assert_eq!(out, "");
        assert_eq!(stop, Some(0));
    }

    #[test]
    fn empty_stop_is_a_configuration_error() {
        let mut set = StopSet::<S, L>::new();
        assert_eq!(set.push(b""), Err(StreamError::EmptyStop));
        assert_eq!(set.push_str(""), Err(StreamError::EmptyStop));
        assert!(set.is_empty());
    }

    #[test]
    fn split_character_is_held_until_complete() {
        let mut s = stream(&[]);
        let got = chunks(&mut s, &[b"a\xF0\x9F", b"\xA6", b"\x80b"]);
        assert_eq!(got, [&b"a"[..], b"", "🦀b".as_bytes(), b""]);
    }

    #[test]
    fn invalid_bytes_become_replacement_like_from_utf8_lossy() {
        let input: &[u8] = b"a\xFFb\xE2\x82c\xF0\x90\x80\xF0\x90\x80\x80d\xED\xA0\x80";
        let (out, _) = text(&[], &[&input[..5], &input[5..9], &input[9..]]);
        assert_eq!(out, String::from_utf8_lossy(input));
    }

    #[test]
    fn incomplete_tail_is_one_replacement_at_finish() {
        let mut s = stream(&[]);
        let got = chunks(&mut s, &[b"ok", b"\xF0\x9F\xA6"]);
        assert_eq!(got, [&b"ok"[..], b"", "\u{FFFD}".as_bytes()]);
    }

    #[test]
    fn stops_match_sanitized_text() {
        // A lone 0xFF is shown as U+FFFD, so a U+FFFD stop matches it,
        // even when the invalid bytes are split across pieces.
        let (out, stop) = text(&["\u{FFFD}"], &[b"ab\xE2", b"\x82", b"c"]);
        assert_eq!(out, "ab");
        assert_eq!(stop, Some(0));
    }

    #[test]
    fn replacement_made_at_finish_can_complete_a_stop() {
        let mut s = stream(&["x\u{FFFD}"]);
        let got = chunks(&mut s, &[b"ax", b"\xF0\x9F"]);
        assert_eq!(got, [&b"a"[..], b"", b""]);
        assert_eq!(s.stopped(), Some(0));
    }

    #[test]
    fn multibyte_stop_split_inside_a_character() {
        let stop = "é!";
        let (out, hit) = text(&[stop], &[b"caf\xC3", b"\xA9", b"! rest"]);
        assert_eq!(out, "caf");
        assert_eq!(hit, Some(0));
    }

    #[test]
    fn output_too_small_names_the_exact_need_and_changes_nothing() {
        let mut s = stream(&["abc"]);
        let mut out = [0u8; 64];
        s.push(b"ab", &mut out).unwrap();
        assert_eq!(s.held(), 2);

        let mut small = [0u8; 3];
        let err = s.push(b"xyz\xFF", &mut small);
        assert_eq!(
            err,
            Err(StreamError::OutputTooSmall {
                needed: 8,
                capacity: 3
            })
        );
        assert_eq!(s.held(), 2);

        let mut exact = [0u8; 8];
        let pushed = s.push(b"xyz\xFF", &mut exact).unwrap();
        assert_eq!(pushed.written, 8);
        assert_eq!(&exact, "abxyz\u{FFFD}".as_bytes());
    }

    #[test]
    fn finish_too_small_changes_nothing() {
        let mut s = stream(&["abcd"]);
        let mut out = [0u8; 64];
        s.push(b"abc\xE2", &mut out).unwrap();
        let mut small = [0u8; 5];
        assert_eq!(
            s.finish(&mut small),
            Err(StreamError::OutputTooSmall {
                needed: 6,
                capacity: 5
            })
        );
        let n = s.finish(&mut out).unwrap();
        assert_eq!(&out[..n], "abc\u{FFFD}".as_bytes());
    }

    #[test]
    fn a_buffer_only_as_long_as_the_release_is_enough() {
        // Smaller than the bound but as long as what is released.
        let mut s = stream(&["zz"]);
        let mut out = [0u8; 5];
        let pushed = s.push(b"hello", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], b"hello");
    }

    #[test]
    fn output_bound_covers_the_worst_case() {
        // Hold L - 1 bytes of a possible stop and one unfinished lead
        // byte, then push only invalid bytes: everything comes out, and
        // each invalid byte as three.
        let stop = "a".repeat(L);
        let mut s = stream(&[stop.as_str()]);
        let mut out = [0u8; 4];
        let prefix = "a".repeat(L - 1);
        assert_eq!(s.push(prefix.as_bytes(), &mut out).unwrap().written, 0);
        assert_eq!(s.push(b"\xF0", &mut out).unwrap().written, 0);
        assert_eq!(s.held(), L);

        let piece = [0xFFu8; 10];
        let mut big = [0u8; 256];
        let pushed = s.push(&piece, &mut big).unwrap();
        assert_eq!(pushed.written, (L - 1) + 3 + 3 * piece.len());
        assert!(pushed.written <= Stream::output_bound(piece.len()));
        assert!(pushed.written > piece.len() + H);
    }

    #[test]
    fn output_bound_saturates() {
        assert_eq!(Stream::output_bound(usize::MAX), usize::MAX);
        assert_eq!(Stream::output_bound(0), H);
        assert_eq!(Stream::finish_bound(), H);
    }

    #[test]
    fn piece_far_longer_than_held_capacity() {
        let mut piece = "xy".repeat(20_000).into_bytes();
        piece.extend_from_slice(b"<END>tail");
        let mut set = StopSet::<S, L>::new();
        set.push_str("<END>").unwrap();
        let mut s = Stream::new(set);
        let mut out = std::vec![0u8; Stream::output_bound(piece.len())];
        let pushed = s.push(&piece, &mut out).unwrap();
        assert_eq!(
            pushed,
            Pushed {
                written: 40_000,
                stop: Some(0)
            }
        );
        assert!(out[..40_000].chunks(2).all(|pair| pair == b"xy"));
    }

    #[test]
    fn piece_far_longer_than_a_small_buffer_is_an_error() {
        let mut s = stream(&[]);
        let piece = [b'q'; 1000];
        let mut out = [0u8; 16];
        assert_eq!(
            s.push(&piece, &mut out),
            Err(StreamError::OutputTooSmall {
                needed: 1000,
                capacity: 16
            })
        );
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn push_after_finish_is_an_error_until_reset() {
        let mut s = stream(&["?"]);
        let mut out = [0u8; 32];
        s.push(b"ab", &mut out).unwrap();
        assert_eq!(s.finish(&mut out), Ok(0));
        assert_eq!(s.finish(&mut out), Ok(0));
        assert_eq!(s.push(b"c", &mut out), Err(StreamError::Finished));

        s.reset();
        let got = chunks(&mut s, &[b"x?y"]);
        assert_eq!(got, [&b"x"[..], b""]);
        assert_eq!(s.stopped(), Some(0));
        assert_eq!(s.stops().get(0), Some(&b"?"[..]));
    }

    #[test]
    fn no_stops_is_plain_sanitizing() {
        let (out, stop) = text(&[], &[b"plain ", b"text"]);
        assert_eq!(out, "plain text");
        assert_eq!(stop, None);
    }

    #[test]
    fn zero_capacities_still_sanitize() {
        let mut s = TextStream::<0, 0, 3>::new(StopSet::new());
        let mut out = [0u8; 8];
        let pushed = s.push(b"a\xFF\xC3", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], "a\u{FFFD}".as_bytes());
        assert_eq!(s.held(), 1);
        let n = s.finish(&mut out).unwrap();
        assert_eq!(&out[..n], "\u{FFFD}".as_bytes());
        assert_eq!(s.stopped(), None);
    }

    #[test]
    fn without_room_for_a_stop_an_unfinished_character_is_still_held() {
        // L = 0 holds no stop bytes, but the three bytes of an unfinished
        // four-byte character wait all the same, one more than L + 2.
        let mut s = TextStream::<0, 0, 3>::new(StopSet::new());
        let mut out = [0u8; 8];
        assert_eq!(s.push(b"\xF0\x9F\xA6", &mut out).unwrap().written, 0);
        assert_eq!(s.held(), 3);
        let pushed = s.push(b"\x80", &mut out).unwrap();
        assert_eq!(&out[..pushed.written], "\u{1F980}".as_bytes());
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn held_never_exceeds_l_plus_two() {
        let stop = "ab".repeat(L / 2);
        let mut s = stream(&[stop.as_str()]);
        let mut out = [0u8; 128];
        let mut piece = "ab".repeat(L / 2 - 1).into_bytes();
        piece.extend_from_slice(b"a\xF0\x9F\x98");
        s.push(&piece, &mut out).unwrap();
        assert_eq!(s.held(), L + 2);
    }
}
