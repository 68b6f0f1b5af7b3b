//! The replay: sampler-core run over the embedded vectors, one text line per result.
//!
//! Input: sampling vectors (logits, settings, seed, steps) and stream cases
//! (stop strings, token pieces). Output: lines written through [`Host`].
//! Invariant: the lines depend only on the vectors and on sampler-core, so
//! the firmware and the x86-64 test, which compile this same file, must
//! print the same lines; only lines starting with `info ` may differ.
//!
//! Line format, one record a line:
//!
//! - `case NAME`, then `push I HEX STOP` for each piece pushed (`HEX` is
//!   what the push released, `-` for nothing; `STOP` the matched stop
//!   index or `-`), then `finish HEX`.
//! - `error WHERE DEBUG` when sampler-core refused something.
//! - `info KIND NAME BYTES`: a stack high-water mark, not compared.

use core::fmt;

use sampler_core::{StopSet, TextStream};

/// Most stop strings in one stream case.
pub const MAX_STOPS: usize = 4;

/// Most bytes in one stop string.
pub const MAX_STOP_LEN: usize = 32;

/// Held-bytes capacity of the stream: the least the stop length allows.
const HELD: usize = MAX_STOP_LEN + 3;

/// The stream under test.
type Stream = TextStream<MAX_STOPS, MAX_STOP_LEN, HELD>;

/// Output buffer for one push: enough for any piece of up to 256 bytes.
const OUT: usize = Stream::output_bound(256);

/// Where the replay writes, and how it measures stack use.
pub trait Host {
    /// Writes one line (without its newline).
    fn line(&mut self, args: fmt::Arguments<'_>);

    /// Runs `f` and returns its result with the most stack bytes it used,
    /// when this host can tell.
    fn measure<R>(&mut self, f: impl FnOnce() -> R) -> (R, Option<usize>);
}

/// One stream case: stop strings and the pieces of generated tokens.
#[derive(Clone, Copy, Debug)]
pub struct Case<'a> {
    /// Name, unique among the cases.
    pub name: &'a str,
    /// Stop strings, UTF-8.
    pub stops: &'a [&'a [u8]],
    /// Decoded token pieces, in generation order.
    pub pieces: &'a [&'a [u8]],
}

/// Bytes as lowercase hex, or `-` when there are none.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// `Some(i)` as `i`, `None` as `-`.
struct Opt(Option<usize>);

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, "{i}"),
            None => f.write_str("-"),
        }
    }
}

/// Replays every stream case, then writes `done`.
pub fn all<H: Host>(host: &mut H, cases: &[Case<'_>]) {
    for case in cases {
        stream(host, case);
    }
    host.line(format_args!("done"));
}

/// Feeds one case's pieces through a [`TextStream`] until it stops, then finishes it.
pub fn stream<H: Host>(host: &mut H, case: &Case<'_>) {
    host.line(format_args!("case {}", case.name));
    let mut stops = StopSet::<MAX_STOPS, MAX_STOP_LEN>::new();
    for (i, stop) in case.stops.iter().enumerate() {
        if let Err(e) = stops.push(stop) {
            host.line(format_args!("error stop-{i} {e:?}"));
            return;
        }
    }
    let mut stream = Stream::new(stops);
    let mut out = [0u8; OUT];
    let mut deepest = None;

    for (i, piece) in case.pieces.iter().enumerate() {
        let (pushed, used) = host.measure(|| stream.push(piece, &mut out));
        deepest = deepest.max(used);
        match pushed {
            Ok(p) => {
                let text = out.get(..p.written).unwrap_or(&[]);
                host.line(format_args!("push {i} {} {}", Hex(text), Opt(p.stop)));
                if p.stop.is_some() {
                    break;
                }
            }
            Err(e) => {
                host.line(format_args!("error push-{i} {e:?}"));
                return;
            }
        }
    }

    match stream.finish(&mut out) {
        Ok(n) => host.line(format_args!("finish {}", Hex(out.get(..n).unwrap_or(&[])))),
        Err(e) => host.line(format_args!("error finish {e:?}")),
    }
    if let Some(bytes) = deepest {
        host.line(format_args!("info stack-push {} {bytes}", case.name));
    }
}
