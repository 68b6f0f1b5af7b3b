//! The generation loop: logits in, one token out, until something stops it.
//!
//! Each step asks `sampler-core` for the next token, streams its text through
//! the core's stop-string and UTF-8 guard, and hands both the token and the
//! released text to a [`Sink`]. The loop allocates nothing per token once
//! its buffers have grown to fit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use sampler_core::{
    Alternative, Candidate, Choice, Config, Input, Report, Sampler, Stage, StopSet, Survivors,
    TextStream,
};

use crate::infile::named;
use crate::model::{Model, Session};

/// Most stop strings one run may have.
pub const MAX_STOPS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Bytes the text stream may hold back while a stop string could still match.
const HELD: usize = MAX_STOP_LEN + 8;

type Stream = TextStream<MAX_STOPS, MAX_STOP_LEN, HELD>;

/// The stop strings as the text stream holds them.
///
/// # Errors
///
/// - a stop string is empty or longer than [`MAX_STOP_LEN`] bytes, or there
///   are more than [`MAX_STOPS`] of them.
pub fn stop_set(stops: &[String]) -> Result<StopSet<MAX_STOPS, MAX_STOP_LEN>> {
    let mut set = StopSet::new();
    for stop in stops {
        set.push(stop.as_bytes())
            .map_err(|e| anyhow!("stop string {stop:?}: {e}"))?;
    }
    Ok(set)
}

/// Set on Ctrl-C or SIGTERM (see [`crate::signals`]); the loop ends the
/// current reply when it sees it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model emitted an end-of-generation token.
    EndOfTurn,
    /// The output reached one of the stop strings.
    StopString,
    /// `-n` tokens were generated.
    Length,
    /// The context has no room for another token.
    ContextFull,
    /// Ctrl-C.
    Interrupted,
    /// A step failed (logits with NaN, a dump that cannot be written, a
    /// decode llama.cpp refuses); the run's error says why.
    Failed,
}

impl Finish {
    /// The name used in JSON output and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndOfTurn => "end_of_turn",
            Self::StopString => "stop_string",
            Self::Length => "length",
            Self::ContextFull => "context_full",
            Self::Interrupted => "interrupted",
            Self::Failed => "error",
        }
    }

    /// Parses the name written by [`Finish::as_str`]; a failed run has no
    /// trace, so `error` is none of them.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::EndOfTurn,
            Self::StopString,
            Self::Length,
            Self::ContextFull,
            Self::Interrupted,
        ]
        .into_iter()
        .find(|f| f.as_str() == name)
    }
}

/// What one run should do.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Sampling settings.
    pub config: Config,
    /// Seed of the random draw.
    pub seed: u64,
    /// Token cap; `None` runs until another reason stops it.
    pub n_predict: Option<u32>,
    /// Stop strings.
    pub stops: &'a [String],
    /// Mask end-of-generation tokens instead of stopping on them.
    pub ignore_eos: bool,
    /// How many recent generated tokens the penalties see.
    pub repeat_last_n: usize,
    /// How many top alternatives each step reports.
    pub alternatives: usize,
    /// Which sampler picks the tokens.
    pub engine: Engine,
}

impl Request<'_> {
    /// Most tokens this request generates in a context of `n_ctx` tokens.
    pub fn max_tokens(&self, n_ctx: usize) -> usize {
        self.n_predict.map_or(n_ctx, |n| (n as usize).min(n_ctx))
    }

    /// Most bytes of text one run of this request releases with `model`, in
    /// a context of `n_ctx` tokens.
    ///
    /// The released text is the lossy UTF-8 decoding of the pieces, cut at a
    /// stop string, and lossy decoding writes at most three bytes (U+FFFD)
    /// for each byte it reads.
    pub fn text_bound(&self, model: &Model, n_ctx: usize) -> usize {
        self.max_tokens(n_ctx)
            .saturating_mul(model.longest_piece())
            .saturating_mul(3)
    }
}

/// Most bytes of text the loop hands a sink after one token, up to the next
/// token or the end of the run, when no piece is longer than `longest_piece`.
pub const fn step_text_bound(longest_piece: usize) -> usize {
    Stream::output_bound(longest_piece).saturating_add(Stream::finish_bound())
}

/// Which sampler picks the tokens.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// sampler-core: exact, reproducible, with log-probabilities and statistics.
    #[default]
    Talkback,
    /// llama.cpp's own sampler chain with the same settings, for comparison
    /// only: no log-probabilities, statistics, traces or reproducibility
    /// across versions.
    #[value(name = "llama.cpp")]
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
}

/// llama.cpp's sampler chain for the same settings: penalties, then the
/// stages in `config`'s order, then the draw.
fn llama_chain(req: &Request<'_>, model: &Model) -> LlamaSampler {
    let c = req.config;
    let n_vocab = i32::try_from(model.vocab_size()).unwrap_or(i32::MAX);
    let mut chain = Vec::new();
    if req.ignore_eos {
        let bias: Vec<LlamaLogitBias> = model
            .eog_tokens()
            .iter()
            .map(|&id| LlamaLogitBias::new(LlamaToken(id as i32), f32::NEG_INFINITY))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &bias));
    }
    if c.repeat_penalty != 1.0 || c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            i32::try_from(req.repeat_last_n).unwrap_or(0),
            c.repeat_penalty,
            c.frequency_penalty,
            c.presence_penalty,
        ));
    }
    if c.temperature == 0.0 {
        chain.push(LlamaSampler::greedy());
        return LlamaSampler::chain_simple(chain);
    }
    for &stage in c.order.stages() {
        chain.push(match stage {
            Stage::TopK => LlamaSampler::top_k(i32::try_from(c.top_k).unwrap_or(i32::MAX)),
            Stage::TopP => LlamaSampler::top_p(c.top_p, 1),
            Stage::MinP => LlamaSampler::min_p(c.min_p, 1),
            _ => LlamaSampler::temp(c.temperature),
        });
    }
    // llama.cpp seeds its generator with 32 bits.
    chain.push(LlamaSampler::dist(req.seed as u32));
    LlamaSampler::chain_simple(chain)
}

/// Refuses a step that llama.cpp's chain would sample as noise.
///
/// Its penalties divide or multiply a recent token's logit by the
/// repetition penalty and subtract the others, and its temperature stage
/// divides each logit by the temperature. A logit that either takes past
/// the float range becomes infinite (or NaN), and the draw's softmax then
/// gives NaN probabilities. `sampler-core` works on differences from the
/// top logit instead, and samples such steps as their limits.
///
/// What decides is the largest logit after the penalties: a +inf there
/// breaks the softmax, and so does one that the division by a temperature
/// below 1 takes past the range (every other logit is at most as large,
/// and one that becomes -inf only drops out). The largest is bounded from
/// above by the largest raw logit and the penalised values, computed as
/// llama.cpp computes them, in f32; a pass over the logits each step.
///
/// # Errors
///
/// - a penalised logit is NaN or +inf, a raw logit is +inf, or the
///   largest divided by `temperature` is beyond the f32 range.
fn check_llama_step(logits: &[f32], recent: &[u32], req: &Request<'_>, step: usize) -> Result<()> {
    let c = req.config;
    if c.temperature == 0.0 && !c.penalties_active() {
        // Greedy takes the largest as it is.
        return Ok(());
    }
    let mut top = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if top == f32::INFINITY && c.temperature > 0.0 {
        let id = logits
            .iter()
            .position(|&x| x == f32::INFINITY)
            .unwrap_or_default();
        bail!(
            "--sampler llama.cpp cannot sample a logit of +inf (token {id} at step {step}); \
             sample with --sampler talkback"
        );
    }
    if c.penalties_active() && !recent.is_empty() {
        // The window's ids in order, on the stack: no allocation per token.
        let mut ids = [0u32; sampler_core::MAX_RECENT];
        let n = recent.len().min(ids.len());
        let ids = ids.get_mut(..n).unwrap_or_default();
        ids.copy_from_slice(recent.get(..n).unwrap_or_default());
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            let Some(&id) = run.first() else { continue };
            let Some(&x) = logits.get(id as usize) else {
                continue;
            };
            let count = run.len() as f32;
            let mut v = if x > 0.0 {
                x / c.repeat_penalty
            } else {
                x * c.repeat_penalty
            };
            v -= count * c.frequency_penalty + c.presence_penalty;
            // Greedy takes a +inf as the largest, as it is; NaN it cannot.
            let infinite = v == f32::INFINITY && c.temperature > 0.0;
            if v.is_nan() || (infinite && x != f32::INFINITY) {
                bail!(
                    "--sampler llama.cpp: at step {step} the penalties take the logit of \
                     token {id} from {} to {}, which its chain cannot sample; use milder \
                     penalties, or sample with --sampler talkback",
                    crate::settings::number(x),
                    crate::settings::number(v)
                );
            }
            top = top.max(v);
        }
    }
    let t = c.temperature;
    if t > 0.0 && t < 1.0 && f64::from(top.abs()) > f64::from(f32::MAX) * f64::from(t) {
        bail!(
            "--sampler llama.cpp divides each logit by the temperature, and at step {step} \
             a logit of {} divided by {} is beyond a 32-bit float, which would make its \
             probabilities NaN; raise --temp{}, or sample with --sampler talkback",
            crate::settings::number(top),
            crate::settings::number(t),
            if c.penalties_active() {
                " or soften the penalties"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// One generated token, as a sink sees it.
pub struct Step<'a> {
    /// Position in the reply, from 0.
    pub index: usize,
    /// Token id.
    pub id: u32,
    /// The token's own bytes (may be part of a UTF-8 character).
    pub piece: &'a [u8],
    /// Log-probability of the token under the final distribution.
    pub logprob: f32,
    /// The most likely tokens of the final distribution.
    pub alternatives: &'a [Alternative],
    /// Entropy of the final distribution, in nats.
    pub entropy: f32,
    /// Survivors after each stage.
    ///
    /// This and the two fields above are empty and zero for a sink that
    /// reads no statistics ([`Sink::statistics`]).
    pub survivors: Survivors,
}

/// Receives what the loop produces.
pub trait Sink {
    /// Text that is safe to show: valid UTF-8, no part of a stop string.
    ///
    /// # Errors
    ///
    /// - the output cannot be written.
    fn text(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    /// One generated token and its statistics.
    ///
    /// # Errors
    ///
    /// - the output cannot be written.
    fn token(&mut self, step: &Step<'_>) -> std::io::Result<()>;

    /// Whether [`Sink::token`] reads a step's statistics (alternatives,
    /// entropy, survivors). When it does not, the sampler is asked for no
    /// report, which costs a little less per token and changes neither
    /// the token nor its log-probability; the step then carries none.
    fn statistics(&self) -> bool;
}

/// Timings of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Decoding the prompt.
    pub prompt: Duration,
    /// Everything after the prompt.
    pub generation: Duration,
    /// Time spent inside the sampler.
    pub sampling: Duration,
    /// Generated tokens the model decoded within `generation`. The first
    /// token comes from the prompt's logits, and a run that ends on a
    /// token it keeps (at `-n`, a stop string, a full context) never
    /// decodes that token.
    pub decoded: usize,
}

impl Timings {
    /// Decoded tokens per second of generation; `None` before any decode.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let secs = self.generation.as_secs_f64();
        (self.decoded > 0 && secs > 0.0).then(|| self.decoded as f64 / secs)
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Generated token ids with their log-probabilities.
    pub tokens: Vec<(u32, f32)>,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Timings.
    pub timings: Timings,
    /// Whether the run ended because stdout's reader left (the finish is
    /// then [`Finish::Interrupted`]).
    pub stdout_closed: bool,
    /// Why a [`Finish::Failed`] run failed, on one line.
    pub failure: Option<String>,
}

/// `Ok(true)` for a write that failed because stdout's reader left, the
/// error for any other failure.
fn closed(written: std::io::Result<()>) -> std::io::Result<bool> {
    match written {
        Err(e) if crate::output::closed(&e) => Ok(true),
        Err(e) => Err(e),
        Ok(()) => Ok(false),
    }
}

/// Reusable buffers for the loop, sized for one vocabulary.
pub struct Generator {
    scratch: Vec<Candidate>,
    alternatives: Vec<Alternative>,
    recent: Vec<u32>,
    bias: Vec<(u32, f32)>,
    piece: Vec<u8>,
    out: Vec<u8>,
    dump: Option<(Box<dyn Write>, PathBuf)>,
    /// One step's logits as the dump writes them.
    record: Vec<u8>,
}

impl Generator {
    /// Buffers for `model`'s vocabulary.
    pub fn new(model: &Model) -> Self {
        let longest = model.longest_piece();
        Self {
            scratch: vec![Candidate::default(); model.vocab_size()],
            alternatives: Vec::new(),
            recent: Vec::with_capacity(1024),
            bias: Vec::new(),
            piece: Vec::with_capacity(longest),
            out: Vec::with_capacity(Stream::output_bound(longest)),
            dump: None,
            record: Vec::new(),
        }
    }

    /// Writes every step's logits to `out` as little-endian f32, one
    /// vocabulary-sized record per step, each in one write and followed by
    /// a flush; `path` names it in errors.
    pub fn dump_logits(&mut self, out: Box<dyn Write>, path: &Path) {
        self.dump = Some((out, path.to_path_buf()));
        self.record = Vec::with_capacity(self.scratch.len() * 4);
    }

    /// Decodes `prompt` into `session`, then generates until a stop.
    ///
    /// # Errors
    ///
    /// - the prompt does not fit the context or cannot be decoded;
    /// - the settings or logits are rejected by the sampler;
    /// - the sink cannot write.
    pub fn run(
        &mut self,
        model: &Model,
        session: &mut Session<'_>,
        prompt: &[LlamaToken],
        req: &Request<'_>,
        sink: &mut dyn Sink,
    ) -> Result<Outcome> {
        match self.run_partial(model, session, prompt, req, sink)? {
            (_, Some(failure)) => Err(failure),
            (outcome, None) => Ok(outcome),
        }
    }

    /// [`Generator::run`], except that a step that fails ends the run
    /// with [`Finish::Failed`]: what was generated before it is kept (its
    /// held-back text released to the sink, as when a run is interrupted)
    /// and returned with the step's error.
    ///
    /// # Errors
    ///
    /// - the settings are rejected, or the prompt does not fit the
    ///   context or cannot be decoded: nothing was generated.
    pub fn run_partial(
        &mut self,
        model: &Model,
        session: &mut Session<'_>,
        prompt: &[LlamaToken],
        req: &Request<'_>,
        sink: &mut dyn Sink,
    ) -> Result<(Outcome, Option<anyhow::Error>)> {
        let mut stream = Stream::new(stop_set(req.stops)?);
        self.alternatives
            .resize(req.alternatives, Alternative::default());
        self.recent.clear();
        self.bias.clear();
        if req.ignore_eos {
            self.bias
                .extend(model.eog_tokens().iter().map(|&id| (id, f32::NEG_INFINITY)));
        }
        let mut sampler = Sampler::new(req.config, req.seed, &mut self.scratch)
            .map_err(|e| anyhow!("invalid sampling settings: {e}"))?;
        let mut llama = (req.engine == Engine::LlamaCpp).then(|| llama_chain(req, model));

        let started = Instant::now();
        let prefilled = session.set_prompt(prompt)?;
        let mut timings = Timings {
            prompt: started.elapsed(),
            ..Timings::default()
        };

        let generating = Instant::now();
        let cap = req.n_predict.map_or(usize::MAX, |n| n as usize);
        let statistics = sink.statistics();
        let mut tokens = Vec::with_capacity(req.max_tokens(session.n_ctx()));
        // The reader of stdout leaving ends the run as Ctrl-C does, so that
        // what was generated is still traced.
        let mut stdout_closed = false;
        let steps = (|| -> Result<Finish> {
            Ok(loop {
                // Without the whole prompt there are no logits to sample from;
                // looked at before the cap, which may be 0 (a replay of a run
                // interrupted before its first token).
                if !prefilled || INTERRUPTED.load(Ordering::Relaxed) {
                    break Finish::Interrupted;
                }
                if tokens.len() >= cap {
                    break Finish::Length;
                }

                if let Some((dump, path)) = self.dump.as_mut() {
                    // One write per record, so that a process ended at once
                    // leaves no record cut in two.
                    self.record.clear();
                    for x in session.logits() {
                        self.record.extend_from_slice(&x.to_le_bytes());
                    }
                    dump.write_all(&self.record)
                        .and_then(|()| dump.flush())
                        .with_context(|| format!("cannot write logits dump {}", named(path)))?;
                }
                // After the dump, which then holds the faulty vector.
                let logits = session.checked_logits(Some(tokens.len()))?;
                let mut report = Report::new(&mut self.alternatives);
                let t0 = Instant::now();
                let choice = if let Some(chain) = llama.as_mut() {
                    check_llama_step(logits, &self.recent, req, tokens.len())?;
                    let id = session.sample_with(chain);
                    Choice {
                        id: u32::try_from(id.0).context("llama.cpp chose no token")?,
                        logprob: f32::NAN,
                    }
                } else {
                    let input = Input {
                        logits,
                        recent: &self.recent,
                        bias: &self.bias,
                    };
                    sampler
                        .sample(input, statistics.then_some(&mut report))
                        .map_err(|e| anyhow!("sampling failed at step {}: {e}", tokens.len()))?
                };
                timings.sampling += t0.elapsed();

                if !req.ignore_eos && model.is_eog(choice.id) {
                    break Finish::EndOfTurn;
                }

                self.piece.clear();
                model.piece_into(choice.id, &mut self.piece);
                let written = sink.token(&Step {
                    index: tokens.len(),
                    id: choice.id,
                    piece: &self.piece,
                    logprob: choice.logprob,
                    alternatives: report
                        .alternatives
                        .get(..report.n_alternatives)
                        .unwrap_or(&[]),
                    entropy: report.entropy,
                    survivors: report.survivors,
                });
                if closed(written)? {
                    stdout_closed = true;
                    break Finish::Interrupted;
                }
                tokens.push((choice.id, choice.logprob));
                if req.repeat_last_n > 0 {
                    if self.recent.len() == req.repeat_last_n {
                        self.recent.remove(0);
                    }
                    self.recent.push(choice.id);
                }

                self.out.resize(Stream::output_bound(self.piece.len()), 0);
                let pushed = stream
                    .push(&self.piece, &mut self.out)
                    .map_err(|e| anyhow!("text stream: {e}"))?;
                if closed(sink.text(self.out.get(..pushed.written).unwrap_or(&[])))? {
                    stdout_closed = true;
                    break Finish::Interrupted;
                }
                if pushed.stop.is_some() {
                    break Finish::StopString;
                }

                if tokens.len() >= cap {
                    break Finish::Length;
                }
                if session.is_full() {
                    break Finish::ContextFull;
                }
                let id = i32::try_from(choice.id).context("token id out of range")?;
                session.push(LlamaToken(id))?;
                timings.decoded += 1;
            })
        })();
        let (finish, mut failure) = match steps {
            Ok(finish) => (finish, None),
            Err(e) => (Finish::Failed, Some(e)),
        };

        if finish != Finish::StopString && !stdout_closed {
            self.out.resize(Stream::finish_bound(), 0);
            let n = stream
                .finish(&mut self.out)
                .map_err(|e| anyhow!("text stream: {e}"))?;
            stdout_closed = closed(sink.text(self.out.get(..n).unwrap_or(&[])))?;
        }
        // The U+FFFD written for a character cut off at the end can still
        // complete a stop string; the text then ends there, as for a stop.
        let ended = matches!(
            finish,
            Finish::Length | Finish::ContextFull | Finish::EndOfTurn
        );
        let finish = if ended && stream.stopped().is_some() {
            Finish::StopString
        } else {
            finish
        };
        timings.generation = generating.elapsed();
        if let Some((dump, path)) = self.dump.as_mut() {
            let flushed = dump
                .flush()
                .with_context(|| format!("cannot write logits dump {}", named(path)));
            if let (Err(e), None) = (flushed, &failure) {
                failure = Some(e);
            }
        }
        let finish = if failure.is_some() {
            Finish::Failed
        } else {
            finish
        };
        let outcome = Outcome {
            tokens,
            finish,
            prompt_tokens: prompt.len(),
            timings,
            stdout_closed,
            failure: failure
                .as_ref()
                .map(|e| crate::output::one_line(&format!("{e:#}"))),
        };
        Ok((outcome, failure))
    }
}
