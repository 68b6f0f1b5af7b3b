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
//! - `run NAME vocab V`, then for each step `token STEP ID LOGPROB
//!   ENTROPY V/K/P/M/F ALTS`: the id drawn, the bits of its
//!   log-probability and of the entropy (`f32::to_bits`, hex), the survivor
//!   counts (vocabulary, after top-k, top-p, min-p, final) and the most
//!   probable alternatives as `ID:BITS` joined by commas.
//! - `case NAME`, then `push I HEX STOP` for each piece pushed (`HEX` is
//!   what the push released, `-` for nothing; `STOP` the matched stop
//!   index or `-`), then `finish HEX`.
//! - `error WHERE DEBUG` when sampler-core refused something.
//! - `info KIND NAME BYTES`: a stack high-water mark (`stack-sample`,
//!   `stack-sample-plain` for the calls without a report, `stack-push`) or
//!   the size of the sampler value (`size-sampler`), not compared.

use core::fmt;

use sampler_core::{
    Alternative, Candidate, Config, Input, Order, Report, Sampler, Stage, StopSet, TextStream,
    MAX_STAGES,
};

/// Most alternatives printed per step.
pub const ALTERNATIVES: usize = 4;

/// Longest penalty window a run may ask for.
pub const MAX_WINDOW: usize = 64;

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

/// One sampling run: `steps` draws, step `s` over the logits rotated left
/// by `s * shift` places, each step's penalty window holding the last
/// `window` tokens drawn (the scheme of sampler-core's golden vectors).
#[derive(Clone, Copy, Debug)]
pub struct Vector<'a> {
    /// Name, unique among the runs.
    pub name: &'a str,
    /// One logit per token id.
    pub logits: &'a [f32],
    /// Rotation per step; 0 samples the same logits every step.
    pub shift: usize,
    /// Stage settings; `config.order` is replaced by [`Vector::order`].
    pub config: Config,
    /// `talkback`, `llama.cpp`, or stages joined by commas
    /// (`temperature`, `top-k`, `top-p`, `min-p`).
    pub order: &'a str,
    /// Generator seed.
    pub seed: u64,
    /// Number of draws.
    pub steps: u32,
    /// Penalty window length, at most [`MAX_WINDOW`].
    pub window: usize,
    /// Logit bias.
    pub bias: &'a [(u32, f32)],
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

/// Working memory of the replay, owned by the caller.
#[derive(Debug)]
pub struct Buffers<'a> {
    /// The sampler's scratch: at least the largest vocabulary.
    pub scratch: &'a mut [Candidate],
    /// Rotated logits: at least the largest vocabulary of a run with a shift.
    pub rotated: &'a mut [f32],
}

/// Replays every run, then every stream case, then writes `done`.
pub fn all<H: Host>(host: &mut H, runs: &[Vector<'_>], cases: &[Case<'_>], buf: Buffers<'_>) {
    for run in runs {
        sample(host, run, buf.scratch, buf.rotated);
    }
    for case in cases {
        stream(host, case);
    }
    host.line(format_args!("done"));
}

/// Parses an order: a preset name or stage names joined by commas.
fn order(text: &str) -> Option<Order> {
    if let Some(order) = Order::from_name(text) {
        return Some(order);
    }
    let mut stages = [Stage::Temperature; MAX_STAGES];
    let mut len = 0;
    for name in text.split(',') {
        let stage = match name {
            "temperature" => Stage::Temperature,
            "top-k" => Stage::TopK,
            "top-p" => Stage::TopP,
            "min-p" => Stage::MinP,
            _ => return None,
        };
        *stages.get_mut(len)? = stage;
        len += 1;
    }
    Order::new(stages.get(..len)?).ok()
}

/// Draws `run.steps` tokens from one run's logits and writes a line for
/// each; then draws them again without a report, as a caller that wants
/// only the token does (a path of its own in sampler-core), and writes an
/// error line where a token or its log-probability differs.
pub fn sample<H: Host>(
    host: &mut H,
    run: &Vector<'_>,
    scratch: &mut [Candidate],
    rotated: &mut [f32],
) {
    host.line(format_args!("run {} vocab {}", run.name, run.logits.len()));
    let Some(order) = order(run.order) else {
        host.line(format_args!("error order {:?}", run.order));
        return;
    };
    if run.window > MAX_WINDOW {
        host.line(format_args!("error window {}", run.window));
        return;
    }
    if run.steps as usize > MAX_STEPS {
        host.line(format_args!("error steps {}", run.steps));
        return;
    }
    let config = Config {
        order,
        ..run.config
    };
    let mut drawn = [(0u32, 0u32); MAX_STEPS];
    let mut deepest = None;
    let mut alternatives = [Alternative::default(); ALTERNATIVES];
    let reported = draw(
        host,
        run,
        config,
        scratch,
        rotated,
        |host, sampler, input, step| {
            let mut report = Report::new(&mut alternatives);
            let (choice, used) = host.measure(|| sampler.sample(input, Some(&mut report)));
            deepest = deepest.max(used);
            let choice = match choice {
                Ok(c) => c,
                Err(e) => {
                    host.line(format_args!("error step-{step} {e:?}"));
                    return None;
                }
            };
            let s = report.survivors;
            host.line(format_args!(
                "token {step} {} {:08x} {:08x} {}/{}/{}/{}/{} {}",
                choice.id,
                choice.logprob.to_bits(),
                report.entropy.to_bits(),
                s.vocab,
                s.after_top_k,
                s.after_top_p,
                s.after_min_p,
                s.final_count,
                Alts(report.written()),
            ));
            if let Some(slot) = drawn.get_mut(step as usize) {
                *slot = (choice.id, choice.logprob.to_bits());
            }
            Some(choice.id)
        },
    );
    let Some(size) = reported else {
        return;
    };

    let mut deepest_plain = None;
    let plain = draw(
        host,
        run,
        config,
        scratch,
        rotated,
        |host, sampler, input, step| {
            let (choice, used) = host.measure(|| sampler.sample(input, None));
            deepest_plain = deepest_plain.max(used);
            let choice = match choice {
                Ok(c) => c,
                Err(e) => {
                    host.line(format_args!("error plain-step-{step} {e:?}"));
                    return None;
                }
            };
            let got = (choice.id, choice.logprob.to_bits());
            if drawn.get(step as usize) != Some(&got) {
                host.line(format_args!(
                    "error plain-step-{step} drew {} {:08x}",
                    got.0, got.1
                ));
                return None;
            }
            Some(choice.id)
        },
    );
    if plain.is_none() {
        return;
    }

    if let Some(bytes) = deepest {
        host.line(format_args!("info stack-sample {} {bytes}", run.name));
        host.line(format_args!("info size-sampler {} {size}", run.name));
    }
    if let Some(bytes) = deepest_plain {
        host.line(format_args!("info stack-sample-plain {} {bytes}", run.name));
    }
}

/// Most steps of one run, so that the draws with a report can be kept for
/// the draws without one.
pub const MAX_STEPS: usize = 64;

/// Runs `run.steps` steps of a fresh sampler: `step` draws one token (or
/// writes an error line and returns `None`) and the window slides over the
/// tokens drawn. Returns the size of the sampler value, `None` when it
/// could not be made or a step failed.
fn draw<H: Host>(
    host: &mut H,
    run: &Vector<'_>,
    config: Config,
    scratch: &mut [Candidate],
    rotated: &mut [f32],
    mut step: impl FnMut(&mut H, &mut Sampler<'_>, Input<'_>, u32) -> Option<u32>,
) -> Option<usize> {
    let mut sampler = match Sampler::new(config, run.seed, scratch) {
        Ok(s) => s,
        Err(e) => {
            host.line(format_args!("error config {e:?}"));
            return None;
        }
    };
    let mut recent = [0u32; MAX_WINDOW];
    let mut held = 0;
    for at in 0..run.steps {
        let room = rotated.len();
        let Some(logits) = rotate(run.logits, run.shift, at, rotated) else {
            host.line(format_args!("error rotation-buffer {room}"));
            return None;
        };
        let input = Input {
            logits,
            recent: recent.get(..held).unwrap_or(&[]),
            bias: run.bias,
        };
        let id = step(host, &mut sampler, input, at)?;

        // Slide the window: the oldest id leaves once it is full.
        if run.window > 0 && held == run.window {
            recent.copy_within(1..held, 0);
            held -= 1;
        }
        if let Some(slot) = recent.get_mut(..run.window).and_then(|w| w.get_mut(held)) {
            *slot = id;
            held += 1;
        }
    }
    Some(core::mem::size_of_val(&sampler))
}

/// The logits of `step`: `logits` itself without a shift, else rotated
/// into `buf`; `None` when `buf` is too short.
fn rotate<'r>(logits: &'r [f32], shift: usize, step: u32, buf: &'r mut [f32]) -> Option<&'r [f32]> {
    let v = logits.len();
    if shift == 0 || v == 0 {
        return Some(logits);
    }
    // u64 so that step * shift cannot wrap on a 32-bit target.
    let start = (u64::from(step) * shift as u64 % v as u64) as usize;
    let (head, tail) = (logits.get(..start)?, logits.get(start..)?);
    let buf = buf.get_mut(..v)?;
    let (front, back) = buf.split_at_mut(tail.len());
    front.copy_from_slice(tail);
    back.copy_from_slice(head);
    Some(buf)
}

/// Alternatives as `ID:BITS` joined by commas, `-` for none.
struct Alts<'a>(&'a [Alternative]);

impl fmt::Display for Alts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, a) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{:08x}", a.id, a.logprob.to_bits())?;
        }
        Ok(())
    }
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
