//! The text stream against a naive whole-text reference.
//!
//! The reference decodes the whole text with `String::from_utf8_lossy`, finds
//! the stop string that completes first (longest at the same end, lowest
//! index among equals) and cuts there. The stream must release exactly that,
//! in valid UTF-8 chunks, however the text is split into pieces and however
//! small the output buffers are.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

use proptest::prelude::*;
use sampler_core::{StopSet, StreamError, TextStream};

const S: usize = 4;
const L: usize = 8;
const H: usize = L + 3;

type Stream = TextStream<S, L, H>;

/// Text pieces that make stops, characters and broken sequences collide.
const ATOMS: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"ab",
    b" ",
    b"\n",
    "é".as_bytes(),
    "€".as_bytes(),
    "🦀".as_bytes(),
    "\u{FFFD}".as_bytes(),
    b"\xFF",
    b"\x80",
    b"\xC3",
    b"\xE2\x82",
    b"\xF0\x9F",
    b"\xF0\x9F\xA6",
    b"\xED\xA0\x80",
    b"\xE0\x80",
];

/// Characters stop strings are made of; all valid UTF-8.
const STOP_CHARS: &[&str] = &["a", "b", "c", " ", "\n", "é", "€", "🦀", "\u{FFFD}"];

fn reference(text: &[u8], stops: &[Vec<u8>]) -> (Vec<u8>, Option<usize>) {
    let shown = String::from_utf8_lossy(text).into_owned().into_bytes();
    for end in 1..=shown.len() {
        let mut best: Option<(usize, usize)> = None;
        for (index, stop) in stops.iter().enumerate() {
            let longer = best.map_or(true, |(len, _)| stop.len() > len);
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

/// Streams `text` cut at `cuts`; an output buffer of `sizes[i]` bytes is
/// tried first for call `i`, and on `OutputTooSmall` the call is retried
/// with exactly the length the error names.
fn stream(
    text: &[u8],
    stops: &[Vec<u8>],
    cuts: &[usize],
    sizes: &[usize],
) -> Result<(Vec<u8>, Option<usize>), TestCaseError> {
    let mut set = StopSet::<S, L>::new();
    for stop in stops {
        set.push(stop).unwrap();
    }
    let mut s = Stream::new(set);
    let mut released = Vec::new();
    let mut size = sizes.iter().copied().cycle();

    let mut call = |s: &mut Stream, piece: Option<&[u8]>| -> Result<(), TestCaseError> {
        let mut out = vec![0u8; size.next().unwrap_or(0)];
        let mut result = match piece {
            Some(piece) => s.push(piece, &mut out).map(|p| p.written),
            None => s.finish(&mut out),
        };
        if let Err(StreamError::OutputTooSmall { needed, capacity }) = result {
            prop_assert_eq!(capacity, out.len());
            prop_assert!(needed > capacity);
            out = vec![0u8; needed];
            result = match piece {
                Some(piece) => s.push(piece, &mut out).map(|p| p.written),
                None => s.finish(&mut out),
            };
            prop_assert_eq!(result, Ok(needed));
        }
        let written = result.unwrap();
        let chunk = &out[..written];
        prop_assert!(std::str::from_utf8(chunk).is_ok(), "chunk {:02X?}", chunk);
        prop_assert!(s.held() <= L + 2);
        if let Some(piece) = piece {
            prop_assert!(written <= Stream::output_bound(piece.len()));
        }
        released.extend_from_slice(chunk);
        Ok(())
    };

    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&text.len())) {
        let cut = cut.clamp(start, text.len());
        call(&mut s, Some(&text[start..cut]))?;
        start = cut;
    }
    call(&mut s, None)?;
    Ok((released, s.stopped()))
}

fn text_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(ATOMS), 0..40)
            .prop_map(|atoms| atoms.concat()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn stop_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(STOP_CHARS), 1..5)
        .prop_map(|chars| chars.concat().into_bytes())
        .prop_filter("fits the stop capacity", |stop| stop.len() <= L)
}

/// Stop strings cut from the shown text itself, so that matches are common.
fn stops_from_text(text: &[u8], picks: &[(usize, usize)]) -> Vec<Vec<u8>> {
    let shown = String::from_utf8_lossy(text).into_owned();
    let bounds: Vec<usize> = shown.char_indices().map(|(i, _)| i).collect();
    let mut stops = Vec::new();
    if bounds.is_empty() {
        return stops;
    }
    for &(from, chars) in picks {
        let from = bounds[from % bounds.len()];
        let stop: String = shown[from..].chars().take(chars).collect();
        if !stop.is_empty() && stop.len() <= L {
            stops.push(stop.into_bytes());
        }
    }
    stops
}

/// 512 cases unless `PROPTEST_CASES` asks for another number.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stream_equals_reference(
        text in text_strategy(),
        free_stops in prop::collection::vec(stop_strategy(), 0..3),
        picks in prop::collection::vec((any::<usize>(), 1..4usize), 0..3),
        mut cuts in prop::collection::vec(0..80usize, 0..12),
        sizes in prop::collection::vec(prop_oneof![0..4usize, 0..40usize, Just(256usize)], 1..6),
    ) {
        let mut stops = stops_from_text(&text, &picks);
        stops.extend(free_stops);
        stops.truncate(S);
        cuts.sort_unstable();

        let expected = reference(&text, &stops);
        let got = stream(&text, &stops, &cuts, &sizes)?;
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn every_split_of_a_short_text_agrees(
        text in prop::collection::vec(prop::sample::select(ATOMS), 0..8).prop_map(|a| a.concat()),
        stops in prop::collection::vec(stop_strategy(), 0..S),
    ) {
        // All two-way splits: the cut most likely to land inside a
        // character or a stop is tried at every position.
        let expected = reference(&text, &stops);
        for cut in 0..=text.len() {
            let got = stream(&text, &stops, &[cut], &[256])?;
            prop_assert_eq!(&got, &expected, "cut at {}", cut);
        }
    }
}

#[test]
fn reference_follows_the_documented_rule() {
    let stops = |list: &[&str]| {
        list.iter()
            .map(|s| s.as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reference(b"abcd", &stops(&["abcd", "bc"])),
        (b"a".to_vec(), Some(1))
    );
    assert_eq!(
        reference(b"abcd", &stops(&["cd", "bcd"])),
        (b"a".to_vec(), Some(1))
    );
    assert_eq!(
        reference(b"x\xFFy", &stops(&["\u{FFFD}y"])),
        (b"x".to_vec(), Some(0))
    );
    assert_eq!(reference(b"abc", &stops(&["z"])), (b"abc".to_vec(), None));
}
