//! Arbitrary stop strings and pieces through `TextStream`: never a panic,
//! and the released text equals a naive whole-text reference.
//!
//! Input layout, read front to back (missing bytes read as zero):
//! - one byte: its low three bits are how many stop strings to try (0–7,
//!   so more than the capacity `S` is tried too);
//! - per stop string: a length byte (taken modulo 20, so empty and
//!   too-long strings occur), then that many bytes;
//! - then, until the input ends, a control byte followed by a piece: the low
//!   five bits are the piece length, the top three bits choose the output
//!   buffer (the documented bound, or a short one that may fail and is then
//!   retried at the exact length the error asks for).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sampler_core::{StopSet, StreamError, TextStream};

const S: usize = 4;
const L: usize = 16;
const H: usize = L + 3;

type Stream = TextStream<S, L, H>;

fuzz_target!(|data: &[u8]| run(data));

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        *first
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

fn run(data: &[u8]) {
    let mut reader = Reader { data };

    let mut set = StopSet::<S, L>::new();
    let mut accepted: Vec<Vec<u8>> = Vec::new();
    for _ in 0..(reader.byte() & 7) {
        let len = usize::from(reader.byte() % 20);
        let stop = reader.take(len);
        let expected = if stop.is_empty() {
            Err(StreamError::EmptyStop)
        } else if stop.len() > L {
            Err(StreamError::StopTooLong {
                len: stop.len(),
                capacity: L,
            })
        } else if std::str::from_utf8(stop).is_err() {
            Err(StreamError::StopNotUtf8)
        } else if accepted.len() == S {
            Err(StreamError::TooManyStops { capacity: S })
        } else {
            Ok(())
        };
        assert_eq!(set.push(stop), expected, "stop {stop:02X?}");
        if expected.is_ok() {
            accepted.push(stop.to_vec());
        }
    }

    let mut stream = Stream::new(set);
    let mut text = Vec::new();
    let mut released = Vec::new();
    while !reader.data.is_empty() {
        let control = reader.byte();
        let piece = reader.take(usize::from(control & 31));
        text.extend_from_slice(piece);
        let size = match control >> 5 {
            0..=2 => Stream::output_bound(piece.len()),
            3 => piece.len(),
            4 => 0,
            _ => usize::from(control & 7),
        };
        let chunk = call(&mut stream, Some(piece), size);
        released.extend_from_slice(&chunk);
    }
    let chunk = call(&mut stream, None, data.len() % 4);
    released.extend_from_slice(&chunk);

    let (expected, stop) = reference(&text, &accepted);
    assert_eq!(released, expected);
    assert_eq!(stream.stopped(), stop);
}

/// One push (or the finish when `piece` is `None`) into a buffer of `size`
/// bytes, retried at the exact length named by `OutputTooSmall`.
fn call(stream: &mut Stream, piece: Option<&[u8]>, size: usize) -> Vec<u8> {
    let mut once = |out: &mut [u8]| match piece {
        Some(piece) => stream.push(piece, out).map(|pushed| pushed.written),
        None => stream.finish(out),
    };
    let mut out = vec![0u8; size];
    let written = match once(&mut out) {
        Ok(written) => written,
        Err(StreamError::OutputTooSmall { needed, capacity }) => {
            assert_eq!(capacity, size);
            assert!(needed > capacity);
            out = vec![0u8; needed];
            let written = once(&mut out);
            assert_eq!(written, Ok(needed));
            needed
        }
        Err(other) => panic!("unexpected error {other:?}"),
    };
    out.truncate(written);
    assert!(std::str::from_utf8(&out).is_ok(), "chunk {out:02X?}");
    assert!(stream.held() <= L + 2);
    if let Some(piece) = piece {
        assert!(written <= Stream::output_bound(piece.len()));
    } else {
        assert!(written <= Stream::finish_bound());
    }
    out
}

/// Lossy-decode the whole text, cut at the first completed stop string
/// (longest at the same end, lowest index among equals).
fn reference(text: &[u8], stops: &[Vec<u8>]) -> (Vec<u8>, Option<usize>) {
    let shown = String::from_utf8_lossy(text).into_owned().into_bytes();
    for end in 1..=shown.len() {
        let mut best: Option<(usize, usize)> = None;
        for (index, stop) in stops.iter().enumerate() {
            let longer = best.is_none_or(|(len, _)| stop.len() > len);
            if shown[..end].ends_with(stop) && longer {
                best = Some((stop.len(), index));
            }
        }
        if let Some((len, index)) = best {
            return (shown[..end - len].to_vec(), Some(index));
        }
    }
    (shown, None)
}
