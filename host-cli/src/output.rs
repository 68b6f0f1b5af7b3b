//! What stdout carries: streamed text, one JSON object, or JSON lines.
//!
//! stdout holds only what was asked for and is flushed per token; every
//! diagnostic goes to stderr.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::generate::{Outcome, Sink, Step};
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
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Locked stdout whose broken-pipe errors say that they come from stdout.
pub struct Stdout(io::StdoutLock<'static>);

/// Locks stdout for writing.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
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
}

/// Collects the text, for the single JSON object printed at the end.
#[derive(Default)]
pub struct CollectSink {
    /// Released text so far.
    pub text: Vec<u8>,
}

impl Sink for CollectSink {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    fn token(&mut self, _step: &Step<'_>) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one JSON event per token; each event carries the text that the
/// token released.
pub struct JsonlSink<'m, W: Write> {
    out: W,
    model: &'m Model,
    pending: Option<Value>,
    released: Vec<u8>,
    piece: Vec<u8>,
    stats: bool,
    /// All released text, for the summary event.
    pub text: Vec<u8>,
}

impl<'m, W: Write> JsonlSink<'m, W> {
    /// A sink writing to `out`, naming alternatives with `model`'s vocabulary;
    /// without `stats` (llama.cpp's sampler computes none), entropy,
    /// survivors and alternatives are written as `null`.
    pub fn new(out: W, model: &'m Model, stats: bool) -> Self {
        Self {
            out,
            model,
            pending: None,
            released: Vec::new(),
            piece: Vec::new(),
            stats,
            text: Vec::new(),
        }
    }

    /// Writes the last token event.
    ///
    /// # Errors
    ///
    /// - stdout cannot be written.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if let Some(mut event) = self.pending.take() {
            if let Some(fields) = event.as_object_mut() {
                let text = String::from_utf8_lossy(&self.released).into_owned();
                fields.insert("text".into(), Value::String(text));
            }
            self.released.clear();
            writeln!(self.out, "{event}")?;
            self.out.flush()?;
        }
        Ok(())
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
}

impl<W: Write> Sink for JsonlSink<'_, W> {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.released.extend_from_slice(bytes);
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    fn token(&mut self, step: &Step<'_>) -> io::Result<()> {
        self.flush_pending()?;
        let piece = String::from_utf8_lossy(step.piece);
        if !self.stats {
            // Zeros here would read as a certain choice with no survivors.
            self.pending = Some(json!({
                "event": "token",
                "index": step.index,
                "id": step.id,
                "piece": piece,
                "piece_bytes": step.piece,
                "logprob": null,
                "entropy": null,
                "survivors": null,
                "alternatives": null,
            }));
            return Ok(());
        }
        let alternatives: Vec<Value> = step
            .alternatives
            .iter()
            .map(|a| {
                self.piece.clear();
                self.model.piece_into(a.id, &mut self.piece);
                json!({
                    "id": a.id,
                    "piece": String::from_utf8_lossy(&self.piece),
                    "logprob": a.logprob,
                })
            })
            .collect();
        let s = step.survivors;
        self.pending = Some(json!({
            "event": "token",
            "index": step.index,
            "id": step.id,
            "piece": piece,
            "piece_bytes": step.piece,
            "logprob": step.logprob,
            "entropy": step.entropy,
            "survivors": {
                "vocab": s.vocab,
                "top_k": s.after_top_k,
                "top_p": s.after_top_p,
                "min_p": s.after_min_p,
                "final": s.final_count,
            },
            "alternatives": alternatives,
        }));
        Ok(())
    }
}

/// The summary of a run as JSON: text, tokens, finish reason, settings, timings.
pub fn summary(text: &[u8], outcome: &Outcome, settings: &Settings, event: bool) -> Value {
    let t = outcome.timings;
    let n = outcome.tokens.len();
    let secs = t.generation.as_secs_f64();
    let mut v = json!({
        "text": String::from_utf8_lossy(text),
        "tokens": outcome.tokens.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        "logprobs": outcome.tokens.iter().map(|&(_, lp)| lp).collect::<Vec<_>>(),
        "finish_reason": outcome.finish.as_str(),
        "prompt_tokens": outcome.prompt_tokens,
        "generated_tokens": n,
        "settings": settings,
        "timings": {
            "prompt_ms": t.prompt.as_secs_f64() * 1e3,
            "generation_ms": secs * 1e3,
            "sampling_ms": t.sampling.as_secs_f64() * 1e3,
            "tokens_per_second": if secs > 0.0 { n as f64 / secs } else { 0.0 },
        },
    });
    if let (true, Some(fields)) = (event, v.as_object_mut()) {
        fields.insert("event".into(), Value::String("summary".into()));
    }
    v
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

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
}
