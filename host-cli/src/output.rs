//! What stdout carries: streamed text, one JSON object, or JSON lines.
//!
//! stdout holds only what was asked for and is flushed per token; every
//! diagnostic goes to stderr.
//!
//! No sink allocates per token: those that keep the reply's text reserve,
//! up front, room for all the text the run can release
//! ([`Request::text_bound`]), and a JSON-lines event is serialized from
//! borrowed fields into a line buffer that is cleared, never dropped.

use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use sampler_core::{Order, Stage, Survivors};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::generate::{step_text_bound, Engine, Outcome, Request, Sink, Step};
use crate::model::Model;
use crate::settings::Settings;

/// The reader of stdout went away (`talkback ... | head`), which is a normal
/// way to stop reading and exits 0.
///
/// Only writes to stdout carry it: a broken pipe anywhere else (a
/// `--dump-logits` or `--trace` file that is a pipe) is a failure.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Whether `e`, or anything that caused it, is stdout being closed.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(closed))
}

/// Whether the write error `e` is stdout being closed.
pub fn closed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
}

/// The error of a write to stdout after its reader left.
pub fn stdout_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
}

/// `text` on one line, shown as it reads: control characters (a line
/// break in a file name, say), Unicode's line and paragraph separators and
/// its marks that reorder text written as escapes, `\n` for a line feed.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
        ) || matches!(c, '\u{2066}'..='\u{2069}');
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || reorders {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `n` and a noun, plural unless `n` is 1: "1 step", "2 steps".
pub fn many(n: usize, noun: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {noun}{s}")
}

/// Longest error line, in characters, that [`error_line`] prints whole.
pub const MAX_ERROR_CHARS: usize = 1024;

/// An error as one line ([`one_line`]) of at most about
/// [`MAX_ERROR_CHARS`] characters: a value quoted from a file (a number of
/// a million digits in a trace, a huge string) is cut in the middle, which
/// keeps what the error is about and the line and column that end it.
pub fn error_line(text: &str) -> String {
    cut_line(one_line(text))
}

/// `line` cut in the middle to about [`MAX_ERROR_CHARS`] characters, as
/// [`error_line`] does, for a line already made one.
pub fn cut_line(line: String) -> String {
    let count = line.chars().count();
    if count <= MAX_ERROR_CHARS {
        return line;
    }
    let head = MAX_ERROR_CHARS * 2 / 3;
    let tail = MAX_ERROR_CHARS / 4;
    let left_out = count - head - tail;
    let mut out: String = line.chars().take(head).collect();
    out.push_str(&format!(" [... {left_out} characters left out ...] "));
    out.extend(line.chars().skip(count - tail));
    out
}

/// Whether stdout was a terminal when the process started.
static STDOUT_TERMINAL: AtomicBool = AtomicBool::new(false);

/// Set when a write to stdout found its terminal hung up.
static HUNG_UP: AtomicBool = AtomicBool::new(false);

/// Notes whether stdout is a terminal, before anything is written: once
/// the terminal hangs up, it no longer says it is one.
pub fn remember_terminal() {
    STDOUT_TERMINAL.store(io::stdout().is_terminal(), Ordering::Relaxed);
}

/// Whether a write to stdout found its terminal hung up.
pub fn hung_up() -> bool {
    HUNG_UP.load(Ordering::Relaxed)
}

/// Whether `e`, from a write to stdout, is the terminal hanging up: EIO
/// from a terminal (from a file, it is a failing disk).
fn hangup(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        STDOUT_TERMINAL.load(Ordering::Relaxed) && e.raw_os_error() == Some(nix::libc::EIO)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Locked stdout whose broken-pipe errors say that they come from stdout.
pub struct Stdout(io::StdoutLock<'static>);

/// Locks stdout for writing.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        stdout_closed()
    } else if hangup(&e) {
        // As for a reader that left: the run stops and writes its trace.
        HUNG_UP.store(true, Ordering::Relaxed);
        stdout_closed()
    } else {
        // A full disk or a device that refuses writes: say which stream.
        io::Error::new(e.kind(), format!("cannot write to stdout: {e}"))
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Prints released text as it arrives.
pub struct TextSink<W: Write> {
    out: W,
}

impl<W: Write> TextSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !bytes.is_empty() {
            self.out.write_all(bytes)?;
            self.out.flush()?;
        }
        Ok(())
    }

    fn token(&mut self, _step: &Step<'_>) -> io::Result<()> {
        Ok(())
    }

    fn statistics(&self) -> bool {
        false
    }
}

/// Collects the text, for the single JSON object printed at the end.
#[derive(Default)]
pub struct CollectSink {
    /// Released text so far.
    pub text: Vec<u8>,
}

impl CollectSink {
    /// A sink with room for all the text `req` can release with `model` in a
    /// context of `n_ctx` tokens, so that collecting never grows it.
    pub fn new(model: &Model, req: &Request<'_>, n_ctx: usize) -> Self {
        Self {
            text: Vec::with_capacity(req.text_bound(model, n_ctx)),
        }
    }
}

impl Sink for CollectSink {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    fn token(&mut self, _step: &Step<'_>) -> io::Result<()> {
        Ok(())
    }

    fn statistics(&self) -> bool {
        false
    }
}

/// Writes one JSON event per token; each event carries the text that the
/// token released.
///
/// A token's event is written when the next token arrives, or at
/// [`JsonlSink::flush_pending`], because its text reaches the sink after it.
pub struct JsonlSink<'m, W: Write> {
    out: W,
    model: &'m Model,
    stats: bool,
    ran: Ran,
    held: HeldToken,
    pending: bool,
    released: Vec<u8>,
    line: Vec<u8>,
    /// All released text, for the summary event.
    pub text: Vec<u8>,
}

impl<'m, W: Write> JsonlSink<'m, W> {
    /// A sink writing to `out` for a run of `req` in a context of `n_ctx`
    /// tokens, naming alternatives with `model`'s vocabulary.
    ///
    /// Without statistics (`--sampler llama.cpp` computes none), entropy,
    /// survivors and alternatives are written as `null`. Every buffer is
    /// given its full size here, from `model`'s longest piece, the number
    /// of alternatives and the token cap.
    pub fn new(out: W, model: &'m Model, req: &Request<'_>, n_ctx: usize) -> Self {
        let longest = model.longest_piece();
        let alternatives = req.alternatives;
        Self {
            out,
            model,
            stats: req.engine == Engine::Talkback,
            ran: Ran::of(&req.config.order),
            held: HeldToken {
                piece: Vec::with_capacity(longest),
                alternatives: Vec::with_capacity(alternatives),
                alternative_pieces: Vec::with_capacity(alternatives.saturating_mul(longest)),
                ..HeldToken::default()
            },
            pending: false,
            released: Vec::with_capacity(step_text_bound(longest)),
            line: Vec::with_capacity(line_bound(longest, alternatives)),
            text: Vec::with_capacity(req.text_bound(model, n_ctx)),
        }
    }

    /// Writes the last token event.
    ///
    /// # Errors
    ///
    /// - stdout cannot be written.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending {
            return Ok(());
        }
        self.pending = false;

        self.line.clear();
        self.held
            .write_line(&self.released, self.stats, self.ran, &mut self.line)?;
        self.released.clear();
        self.out.write_all(&self.line)?;
        self.out.flush()
    }

    /// Writes the summary event.
    ///
    /// # Errors
    ///
    /// - stdout cannot be written.
    pub fn finish(&mut self, summary: Value) -> io::Result<()> {
        self.flush_pending()?;
        writeln!(self.out, "{summary}")?;
        self.out.flush()
    }

    /// The writer, once the run is over.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for JsonlSink<'_, W> {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.released.extend_from_slice(bytes);
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    fn token(&mut self, step: &Step<'_>) -> io::Result<()> {
        self.flush_pending()?;

        let held = &mut self.held;
        held.index = step.index;
        held.id = step.id;
        held.logprob = step.logprob;
        held.entropy = step.entropy;
        held.survivors = step.survivors;
        held.piece.clear();
        held.piece.extend_from_slice(step.piece);
        held.alternatives.clear();
        held.alternative_pieces.clear();
        // Without statistics there are no alternatives to name.
        if self.stats {
            for a in step.alternatives {
                let start = held.alternative_pieces.len();
                self.model.piece_into(a.id, &mut held.alternative_pieces);
                held.alternatives.push(HeldAlternative {
                    id: a.id,
                    logprob: a.logprob,
                    start,
                    end: held.alternative_pieces.len(),
                });
            }
        }
        self.pending = true;
        Ok(())
    }

    fn statistics(&self) -> bool {
        true
    }
}

/// The token whose event waits for its text, in buffers that are reused.
#[derive(Default)]
struct HeldToken {
    index: usize,
    id: u32,
    logprob: f32,
    entropy: f32,
    survivors: Survivors,
    piece: Vec<u8>,
    alternatives: Vec<HeldAlternative>,
    /// The alternatives' pieces, end to end.
    alternative_pieces: Vec<u8>,
}

/// One alternative of the held token; its piece is
/// `alternative_pieces[start..end]`.
#[derive(Clone, Copy)]
struct HeldAlternative {
    id: u32,
    logprob: f32,
    start: usize,
    end: usize,
}

impl HeldToken {
    /// Appends this token's event, with `text` as the text it released, as
    /// one line to `line`; without `stats` the statistics are `null`.
    fn write_line(
        &self,
        text: &[u8],
        stats: bool,
        ran: Ran,
        line: &mut Vec<u8>,
    ) -> serde_json::Result<()> {
        let event = TokenEvent {
            alternatives: stats.then_some(AlternativeList {
                held: &self.alternatives,
                pieces: &self.alternative_pieces,
            }),
            // Zeros here would read as a certain choice with no survivors.
            entropy: stats.then_some(f64::from(self.entropy)),
            event: "token",
            id: self.id,
            index: self.index,
            logprob: stats.then_some(f64::from(self.logprob)),
            piece: Lossy(&self.piece),
            piece_bytes: &self.piece,
            survivors: stats.then_some(Counts::new(self.survivors, ran)),
            text: Lossy(text),
        };
        serde_json::to_writer(&mut *line, &event)?;
        line.push(b'\n');
        Ok(())
    }
}

/// One token event as printed.
///
/// The fields are in alphabetical order because the events have always had
/// their keys sorted (`serde_json`'s map without `preserve_order`). Floats
/// are widened to `f64`, as they always were; serde_json writes `null` for
/// one that is not finite.
#[derive(Serialize)]
struct TokenEvent<'a> {
    alternatives: Option<AlternativeList<'a>>,
    entropy: Option<f64>,
    event: &'static str,
    id: u32,
    index: usize,
    logprob: Option<f64>,
    piece: Lossy<'a>,
    piece_bytes: &'a [u8],
    survivors: Option<Counts>,
    text: Lossy<'a>,
}

/// Which truncation stages the sampler order holds.
#[derive(Clone, Copy, Default)]
struct Ran {
    top_k: bool,
    top_p: bool,
    min_p: bool,
}

impl Ran {
    fn of(order: &Order) -> Self {
        let has = |stage| order.stages().contains(&stage);
        Self {
            top_k: has(Stage::TopK),
            top_p: has(Stage::TopP),
            min_p: has(Stage::MinP),
        }
    }
}

/// Survivors after each stage, under the names the events use; `null`
/// for a stage the order leaves out, whose count would only repeat the
/// one before it and read as a cut.
#[derive(Serialize)]
struct Counts {
    #[serde(rename = "final")]
    final_count: usize,
    min_p: Option<usize>,
    top_k: Option<usize>,
    top_p: Option<usize>,
    vocab: usize,
}

impl Counts {
    fn new(s: Survivors, ran: Ran) -> Self {
        Self {
            final_count: s.final_count,
            min_p: ran.min_p.then_some(s.after_min_p),
            top_k: ran.top_k.then_some(s.after_top_k),
            top_p: ran.top_p.then_some(s.after_top_p),
            vocab: s.vocab,
        }
    }
}

/// The held token's alternatives, serialized as an array of objects.
struct AlternativeList<'a> {
    held: &'a [HeldAlternative],
    pieces: &'a [u8],
}

impl Serialize for AlternativeList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.held.iter().map(|a| AlternativeEvent {
            id: a.id,
            logprob: f64::from(a.logprob),
            piece: Lossy(self.pieces.get(a.start..a.end).unwrap_or_default()),
        }))
    }
}

/// One alternative as printed, keys in alphabetical order.
#[derive(Serialize)]
struct AlternativeEvent<'a> {
    id: u32,
    logprob: f64,
    piece: Lossy<'a>,
}

/// Bytes shown as `String::from_utf8_lossy` shows them, without building a
/// `String`.
///
/// As a serde value it is a string written through `collect_str`, which
/// serde_json escapes straight into its writer.
struct Lossy<'a>(&'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each chunk's invalid part is one maximal invalid sequence, the
        // unit that `from_utf8_lossy` replaces with one U+FFFD.
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

impl Serialize for Lossy<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Most bytes of one token event's line, so its buffer is sized once.
///
/// In a JSON string a byte takes at most six bytes (`\u001f`), and lossy
/// UTF-8 writes at most three (U+FFFD) for one byte, which needs no escape;
/// in `piece_bytes` a byte takes at most four (`255,`).
fn line_bound(longest_piece: usize, alternatives: usize) -> usize {
    // Keys and punctuation take about 170 bytes, and each of the nine
    // numbers at most 24 (an `f64` such as -2.2250738585072014e-308).
    const FIXED: usize = 512;
    // `{"id":4294967295,"logprob":` and 24 bytes of number, `,"piece":""},`.
    const PER_ALTERNATIVE: usize = 64;
    let piece = longest_piece.saturating_mul(6 + 4);
    let text = step_text_bound(longest_piece).saturating_mul(6);
    let each = longest_piece
        .saturating_mul(6)
        .saturating_add(PER_ALTERNATIVE);
    FIXED
        .saturating_add(piece)
        .saturating_add(text)
        .saturating_add(alternatives.saturating_mul(each))
}

/// The summary of a run as JSON: text, tokens, finish reason, settings, timings.
pub fn summary(text: &[u8], outcome: &Outcome, settings: &Settings, event: bool) -> Value {
    let t = outcome.timings;
    let n = outcome.tokens.len();
    let mut v = json!({
        "text": String::from_utf8_lossy(text),
        "tokens": outcome.tokens.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        "logprobs": outcome.tokens.iter().map(|&(_, lp)| lp).collect::<Vec<_>>(),
        "finish_reason": outcome.finish.as_str(),
        "prompt_tokens": outcome.prompt_tokens,
        "generated_tokens": n,
        "settings": settings_value(settings),
        "timings": {
            "prompt_ms": t.prompt.as_secs_f64() * 1e3,
            "generation_ms": t.generation.as_secs_f64() * 1e3,
            "sampling_ms": t.sampling.as_secs_f64() * 1e3,
            "tokens_per_second": t.tokens_per_second(),
        },
    });
    if let Some(fields) = v.as_object_mut() {
        if let Some(why) = &outcome.failure {
            fields.insert("error".into(), Value::String(why.clone()));
        }
        if event {
            fields.insert("event".into(), Value::String("summary".into()));
        }
    }
    v
}

/// The settings as JSON, each `f32` written as its shortest decimal.
///
/// `json!` widens an `f32` to `f64` first, which prints `0.8` as
/// `0.800000011920929`; going through the text keeps what the user typed.
fn settings_value(settings: &Settings) -> Value {
    let mut value = serde_json::to_string(settings)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    // A stage the order leaves out never ran: its value is no setting in
    // force, so it is shown as null (a trace keeps it, for the replay).
    for (stage, key) in [
        (Stage::TopK, "top_k"),
        (Stage::TopP, "top_p"),
        (Stage::MinP, "min_p"),
    ] {
        if !settings.sampler_order.iter().any(|s| s == stage.name()) {
            if let Some(v) = value.get_mut(key) {
                *v = Value::Null;
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(
            one_line("model a\nb\r\tc\u{1b}[31m é \\ \"q\""),
            "model a\\nb\\r\\tc\\u{1b}[31m é \\ \"q\""
        );
        assert_eq!(
            one_line("a\u{2028}b\u{202e}c\u{85}d\u{61c}"),
            "a\\u{2028}b\\u{202e}c\\u{85}d\\u{61c}"
        );
    }

    #[test]
    fn a_long_error_is_cut_in_the_middle() {
        let short = "trace t.json is not a valid trace: at line 1 column 9";
        assert_eq!(error_line(short), short);
        let digits = "9".repeat(1 << 20);
        let long = format!("at `settings.temperature`: `1{digits}` is out of range at line 1");
        let line = error_line(&long);
        assert!(
            line.chars().count() < MAX_ERROR_CHARS + 60,
            "{}",
            line.len()
        );
        assert!(
            line.starts_with("at `settings.temperature`: `1999"),
            "{line}"
        );
        assert!(line.ends_with("999` is out of range at line 1"), "{line}");
        let left_out = long.len() - (MAX_ERROR_CHARS * 2 / 3 + MAX_ERROR_CHARS / 4);
        assert!(line.contains(&format!(" [... {left_out} characters left out ...] ")));
        // Characters, not bytes: a cut never splits one.
        let wide = "é".repeat(5000);
        assert_eq!(error_line(&wide).matches('é').count(), 682 + 256);
    }

    #[test]
    fn only_a_broken_pipe_on_stdout_counts_as_stdout_closed() {
        let stdout: Result<(), io::Error> = Err(mark(io::ErrorKind::BrokenPipe.into()));
        let e = stdout.context("cannot print").expect_err("an error");
        assert!(is_stdout_closed(&e));

        let file: Result<(), io::Error> = Err(io::ErrorKind::BrokenPipe.into());
        let e = file.context("cannot write trace").expect_err("an error");
        assert!(!is_stdout_closed(&e));

        let full = mark(io::Error::from_raw_os_error(28));
        assert!(!is_stdout_closed(&anyhow::Error::new(full)));
    }

    /// The event built the obvious way, as a `serde_json::Value` printed by
    /// its `Display`, with the text added last.
    fn reference(held: &HeldToken, text: &[u8], stats: bool) -> String {
        let piece = String::from_utf8_lossy(&held.piece);
        let mut event = if stats {
            let alternatives: Vec<Value> = held
                .alternatives
                .iter()
                .map(|a| {
                    let bytes = &held.alternative_pieces[a.start..a.end];
                    json!({
                        "id": a.id,
                        "piece": String::from_utf8_lossy(bytes),
                        "logprob": a.logprob,
                    })
                })
                .collect();
            let s = held.survivors;
            json!({
                "event": "token",
                "index": held.index,
                "id": held.id,
                "piece": piece,
                "piece_bytes": held.piece,
                "logprob": held.logprob,
                "entropy": held.entropy,
                "survivors": {
                    "vocab": s.vocab,
                    "top_k": s.after_top_k,
                    "top_p": s.after_top_p,
                    "min_p": s.after_min_p,
                    "final": s.final_count,
                },
                "alternatives": alternatives,
            })
        } else {
            json!({
                "event": "token",
                "index": held.index,
                "id": held.id,
                "piece": piece,
                "piece_bytes": held.piece,
                "logprob": null,
                "entropy": null,
                "survivors": null,
                "alternatives": null,
            })
        };
        let text = String::from_utf8_lossy(text).into_owned();
        event
            .as_object_mut()
            .expect("an object")
            .insert("text".into(), Value::String(text));
        format!("{event}\n")
    }

    /// A held token with `piece` and `alternatives` as (id, logprob, piece).
    fn held(
        piece: &[u8],
        logprob: f32,
        entropy: f32,
        alternatives: &[(u32, f32, &[u8])],
    ) -> HeldToken {
        let mut held = HeldToken {
            index: 7,
            id: 3_571,
            logprob,
            entropy,
            survivors: Survivors {
                vocab: 49_152,
                after_top_k: 40,
                after_top_p: 12,
                after_min_p: 9,
                final_count: 9,
            },
            piece: piece.to_vec(),
            ..HeldToken::default()
        };
        for &(id, logprob, bytes) in alternatives {
            let start = held.alternative_pieces.len();
            held.alternative_pieces.extend_from_slice(bytes);
            held.alternatives.push(HeldAlternative {
                id,
                logprob,
                start,
                end: held.alternative_pieces.len(),
            });
        }
        held
    }

    fn line(held: &HeldToken, text: &[u8], stats: bool) -> String {
        let mut line = Vec::new();
        held.write_line(text, stats, EVERY_STAGE, &mut line)
            .expect("a Vec takes every write");
        String::from_utf8(line).expect("JSON is UTF-8")
    }

    const EVERY_STAGE: Ran = Ran {
        top_k: true,
        top_p: true,
        min_p: true,
    };

    #[test]
    fn stages_the_order_leaves_out_have_null_survivors() {
        let mut held = held(b"x", -0.5, 0.25, &[]);
        held.survivors = Survivors {
            vocab: 100,
            after_top_k: 40,
            after_top_p: 7,
            after_min_p: 7,
            final_count: 7,
        };
        let order = Order::new(&[Stage::TopP, Stage::Temperature]).expect("an order");
        let mut out = Vec::new();
        held.write_line(b"x", true, Ran::of(&order), &mut out)
            .expect("a Vec takes every write");
        let event: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            event["survivors"],
            json!({"vocab": 100, "top_k": null, "top_p": 7, "min_p": null, "final": 7})
        );
        let full: Value = serde_json::from_str(&line(&held, b"x", true)).expect("JSON");
        assert_eq!(
            full["survivors"],
            json!({"vocab": 100, "top_k": 40, "top_p": 7, "min_p": 7, "final": 7})
        );
    }

    #[test]
    fn token_lines_match_the_value_built_event_byte_for_byte() {
        let awkward: &[u8] = b"\"q\\ \n\t\x01\x1f\x7f/ \xc3\xa9\xe2\x98\x83\xf0\x9d\x84\x9e";
        let cases = [
            held(
                b" time",
                -0.318_492_5,
                1.734_67,
                &[
                    (891, -0.318_492_5, b" time"),
                    (2_001, -1.5, b" day"),
                    (12, -2.000_001, b","),
                    (0, -7.25e-9, b""),
                    (49_151, -30.0, b" upon"),
                ],
            ),
            // Parts of a character, bytes that never start one, and escapes.
            held(
                b"\xe2\x82",
                -1e-30,
                0.0,
                &[
                    (1, -0.0, b"\xff"),
                    (2, -1e-45, b"\xf0\x9f"),
                    (3, -3.4e38, awkward),
                ],
            ),
            held(awkward, f32::MIN_POSITIVE, f32::MAX, &[]),
            // Values a sampler should never report still print as `null`.
            held(
                b"",
                f32::NAN,
                f32::INFINITY,
                &[(5, f32::NEG_INFINITY, b"x"), (6, f32::NAN, b"y")],
            ),
        ];
        let texts: [&[u8]; 4] = [b"", b" time", awkward, b"\xe2\x82\xac tail \xed\xa0\x80"];
        for held in &cases {
            for text in texts {
                for stats in [true, false] {
                    assert_eq!(line(held, text, stats), reference(held, text, stats));
                }
            }
        }

        let mut extreme = held(b"a", -1.0, 1.0, &[(u32::MAX, -1.0, b"b")]);
        extreme.index = usize::MAX;
        extreme.id = u32::MAX;
        extreme.survivors = Survivors {
            vocab: usize::MAX,
            after_top_k: usize::MAX,
            after_top_p: 1,
            after_min_p: 0,
            final_count: 0,
        };
        assert_eq!(line(&extreme, b"", true), reference(&extreme, b"", true));
    }

    #[test]
    fn lossy_text_is_what_from_utf8_lossy_gives() {
        let mut inputs: Vec<Vec<u8>> = (0..=u8::MAX).map(|b| vec![b]).collect();
        inputs.extend((0..=u16::MAX).map(|x| x.to_be_bytes().to_vec()));
        // Bytes at the edges of UTF-8's ranges, in every order of four.
        let edges = [
            0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed,
            0xef, 0xf0, 0xf4, 0xf5, 0xff,
        ];
        for a in edges {
            for b in edges {
                for c in edges {
                    for d in edges {
                        inputs.push(vec![a, b, c, d]);
                    }
                }
            }
        }
        for bytes in &inputs {
            assert_eq!(
                Lossy(bytes).to_string(),
                String::from_utf8_lossy(bytes),
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn the_longest_line_fits_the_room_reserved_for_it() {
        let longest = 81;
        for byte in [0x01, 0xff] {
            let piece = vec![byte; longest];
            let alternatives: Vec<(u32, f32, &[u8])> = (0..5)
                .map(|i| (u32::MAX - i, -1.175_494_2e-38, &piece[..]))
                .collect();
            let mut held = held(&piece, -1.175_494_2e-38, -1.175_494_2e-38, &alternatives);
            held.index = usize::MAX;
            held.id = u32::MAX;
            held.survivors = Survivors {
                vocab: usize::MAX,
                after_top_k: usize::MAX,
                after_top_p: usize::MAX,
                after_min_p: usize::MAX,
                final_count: usize::MAX,
            };
            let text = vec![byte; step_text_bound(longest)];

            let bound = line_bound(longest, alternatives.len());
            let mut line = Vec::with_capacity(bound);
            let room = line.capacity();
            held.write_line(&text, true, EVERY_STAGE, &mut line)
                .expect("a Vec takes every write");
            assert!(line.len() <= bound, "{} > {bound}", line.len());
            assert_eq!(line.capacity(), room, "the line grew");
        }
    }
}
