//! Incremental UTF-8 sanitizing, one raw byte at a time.
//!
//! Input: raw bytes in any split. Output: valid UTF-8, emitted byte by byte,
//! in which every maximal invalid subpart is one U+FFFD and an unfinished
//! sequence at the end is one U+FFFD. That is byte for byte what
//! `String::from_utf8_lossy` makes of the whole input, however it is split.
//!
//! Invariants: at most three bytes are pending, and they are always a proper
//! prefix of a well-formed sequence. A character is emitted only once all its
//! bytes are in, so everything emitted so far is valid UTF-8 on its own.

/// U+FFFD REPLACEMENT CHARACTER, UTF-8 encoded.
pub(crate) const REPLACEMENT: [u8; 3] = [0xEF, 0xBF, 0xBD];

/// Most bytes that can be pending: a four-byte sequence missing its last byte.
pub(crate) const MAX_PENDING: usize = 3;

/// Turns raw bytes into sanitized UTF-8 without looking ahead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Utf8Sanitizer {
    /// Bytes of the sequence being built; only `pending[..len]` is meaningful.
    pending: [u8; 4],
    /// How many bytes are pending.
    len: usize,
    /// Length of the sequence the first pending byte announced.
    width: usize,
}

impl Utf8Sanitizer {
    /// A sanitizer with nothing pending.
    pub(crate) const fn new() -> Self {
        Self {
            pending: [0; 4],
            len: 0,
            width: 0,
        }
    }

    /// How many raw bytes wait for the rest of their character.
    pub(crate) const fn pending(&self) -> usize {
        self.len
    }

    /// Takes one raw byte and emits whatever it completes or invalidates.
    pub(crate) fn push(&mut self, byte: u8, emit: &mut impl FnMut(u8)) {
        if self.len > 0 {
            if self.continues(byte) {
                if let Some(slot) = self.pending.get_mut(self.len) {
                    *slot = byte;
                }
                self.len += 1;
                if self.len == self.width {
                    let done = self.pending;
                    let len = self.len;
                    self.clear();
                    done.iter().take(len).for_each(|&b| emit(b));
                }
                return;
            }

            // The pending bytes cannot be extended, so they are a maximal
            // subpart: one U+FFFD for all of them. The byte that broke the
            // sequence is not consumed by it and starts afresh below, as
            // `from_utf8_lossy` does.
            self.clear();
            REPLACEMENT.iter().for_each(|&b| emit(b));
        }

        match sequence_width(byte) {
            1 => emit(byte),
            0 => REPLACEMENT.iter().for_each(|&b| emit(b)),
            width => {
                self.pending = [byte, 0, 0, 0];
                self.len = 1;
                self.width = width;
            }
        }
    }

    /// Ends the input: an unfinished sequence becomes one U+FFFD.
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(u8)) {
        if self.len > 0 {
            self.clear();
            REPLACEMENT.iter().for_each(|&b| emit(b));
        }
    }

    fn clear(&mut self) {
        *self = Self::new();
    }

    /// Whether `byte` may follow the pending bytes in a well-formed sequence.
    fn continues(&self, byte: u8) -> bool {
        let lead = self.pending.first().copied().unwrap_or(0);
        if self.len == 1 {
            // The second byte's range depends on the lead byte: it is what
            // rules out overlong forms, surrogates and code points past
            // U+10FFFF (Unicode table 3-7).
            match lead {
                0xE0 => matches!(byte, 0xA0..=0xBF),
                0xED => matches!(byte, 0x80..=0x9F),
                0xF0 => matches!(byte, 0x90..=0xBF),
                0xF4 => matches!(byte, 0x80..=0x8F),
                _ => matches!(byte, 0x80..=0xBF),
            }
        } else {
            matches!(byte, 0x80..=0xBF)
        }
    }
}

/// Length of the sequence a lead byte starts; 0 for a byte no sequence starts with.
fn sequence_width(byte: u8) -> usize {
    match byte {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::String;
    use std::vec::Vec;

    use super::*;

    fn sanitize(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Utf8Sanitizer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            for &b in *chunk {
                s.push(b, &mut |x| out.push(x));
            }
        }
        s.finish(&mut |x| out.push(x));
        out
    }

    fn lossy(bytes: &[u8]) -> Vec<u8> {
        String::from_utf8_lossy(bytes).into_owned().into_bytes()
    }

    #[test]
    fn valid_text_passes_unchanged() {
        let text = "plain, é, € and 🦀".as_bytes();
        assert_eq!(sanitize(&[text]), text);
    }

    #[test]
    fn split_character_is_held_until_complete() {
        let crab = "🦀".as_bytes();
        let mut s = Utf8Sanitizer::new();
        let mut out = Vec::new();
        for &b in &crab[..3] {
            s.push(b, &mut |x| out.push(x));
        }
        assert!(out.is_empty());
        assert_eq!(s.pending(), 3);
        s.push(crab[3], &mut |x| out.push(x));
        assert_eq!(out, crab);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn maximal_subparts_match_from_utf8_lossy() {
        let cases: &[&[u8]] = &[
            b"\xFF",
            b"a\x80b",
            b"\xC0\xAF",
            b"\xE0\x80\x80",
            b"\xE0\xA0",
            b"\xE0\xA0x",
            b"\xED\xA0\x80",
            b"\xF0\x8F\xBF\xBF",
            b"\xF0\x90\x80",
            b"\xF0\x90\x80\xF0\x90\x80\x80",
            b"\xF4\x90\x80\x80",
            b"\xF5\x80",
            b"\xE2\x82",
            b"\xC3",
            b"\xC3\xC3\xA9",
        ];
        for case in cases {
            assert_eq!(sanitize(&[case]), lossy(case), "input {case:02X?}");
        }
    }

    #[test]
    fn every_two_byte_sequence_matches_from_utf8_lossy() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let bytes = [a, b];
                assert_eq!(sanitize(&[&bytes]), lossy(&bytes), "input {bytes:02X?}");
            }
        }
    }

    #[test]
    fn unfinished_tail_is_one_replacement() {
        assert_eq!(sanitize(&[b"ok\xF0\x9F", b"\xA6"]), "ok\u{FFFD}".as_bytes());
    }
}
