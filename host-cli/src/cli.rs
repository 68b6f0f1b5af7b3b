//! Command-line interface: every flag, its default and its valid range.
//!
//! Values are checked here, at parse time, so a bad setting is a usage error
//! (exit 2) before any model is loaded.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};
use sampler_core::{Order, Stage};

use crate::generate::Engine;
use crate::settings::{BATCH_SIZES, CTX_SIZES, THREADS};

/// Text shown after `--help`: exit codes and the model default.
const AFTER_HELP: &str = "\
Exit codes:
  0    success (also when stdout is closed early, e.g. piped into `head`)
  1    runtime failure (model, context, template, trace, I/O)
  2    usage error (unknown flag, value out of range, flags that do not go together,
       an empty message or prompt)
  129  hung up (SIGHUP, or the terminal closed); taken as SIGTERM is
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM); as for Ctrl-C, what was generated is printed first

The default model is the SmolLM2-135M-Instruct GGUF installed by
fixtures/fetch-model.sh; TALKBACK_MODEL or --model chooses another.";

/// Chat with GGUF models through llama.cpp, sampled by sampler-core.
#[derive(Debug, Parser)]
#[command(name = "talkback", bin_name = "talkback", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Raise verbosity: the model, settings and seed where a command has them, and
    /// the finish; then llama.cpp's own logs (-vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat with the model through its own chat template.
    ///
    /// With a message (an argument, stdin or --messages) it prints one reply.
    /// With none, on a terminal, it starts an interactive chat: type a turn
    /// and press Enter; /help lists the commands, and /exit, /quit or Ctrl-D
    /// at an empty prompt leaves.
    Chat(ChatArgs),
    /// Continue raw text, with no template.
    Complete(CompleteArgs),
    /// Regenerate a run from its trace and check it token by token.
    Replay(ReplayArgs),
    /// Chart how many tokens are left to draw from at each step, for several settings, as SVG.
    ///
    /// Every combination of the listed --temp, --top-k, --top-p and --min-p
    /// values generates from the prompt with the same seed, and draws one
    /// line: at each step, the number of tokens left after every stage (the
    /// distribution the token is drawn from). A line ends early when its
    /// reply ends, so `-n 8` may give fewer than 8 points.
    Plot(PlotArgs),
    /// Show the next-token distribution stage by stage.
    Shape(ShapeArgs),
}

/// Arguments of `talkback shape`.
#[derive(Debug, Args)]
#[group(id = "input", required = true, args = ["prompt", "logits"])]
pub struct ShapeArgs {
    /// Raw text whose next token is shaped (or use --logits).
    #[arg(conflicts_with = "logits")]
    pub prompt: Option<String>,

    /// Logits given directly, comma-separated (given again, the lists are
    /// joined); no model is loaded, so the model and context flags are
    /// refused with it.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_parser = parse_logit,
          conflicts_with_all = ["model", "ctx_size", "batch_size", "threads", "gpu_layers",
                                "mmap"])]
    pub logits: Option<Vec<f32>>,

    /// Apply the model's chat template to the prompt (as `chat` does).
    #[arg(long, conflicts_with = "logits")]
    pub chat: bool,

    /// How many tokens to list, most likely first.
    #[arg(long, default_value_t = 10, value_parser = rows, allow_hyphen_values = true)]
    pub rows: usize,

    /// Output format: a table for people or JSON data.
    #[arg(long, value_enum, default_value_t = ShapeFormat::Text)]
    pub format: ShapeFormat,

    // Penalties look only at generated tokens, of which one next token has
    // none; the seed and the sampler choice only matter to a draw. So shape
    // takes the stages alone, and any other sampling flag is a usage error.
    /// The stages and their order.
    #[command(flatten)]
    pub stages: StageArgs,

    /// Model and context settings.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What `talkback shape` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShapeFormat {
    /// A table.
    Text,
    /// One JSON object.
    Json,
}

/// A logit: any number, NaN and infinities included (the sampler rules on them).
fn parse_logit(s: &str) -> Result<f32, String> {
    parse_f32(s)
}

/// Arguments of `talkback plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The prompt to generate from.
    pub prompt: String,

    /// Apply the model's chat template to the prompt (as `chat` does).
    #[arg(long)]
    pub chat: bool,

    /// Temperatures to compare, comma-separated (each >= 0).
    #[arg(long, value_delimiter = ',', default_value = "0.8", value_parser = non_negative,
          allow_hyphen_values = true)]
    pub temp: Vec<f32>,

    /// Top-k values to compare, comma-separated; 0 is off.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0",
        value_parser = count,
        allow_hyphen_values = true
    )]
    pub top_k: Vec<u32>,

    /// Top-p values to compare, comma-separated (each 0..=1).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9",
          value_parser = unit_interval, allow_hyphen_values = true)]
    pub top_p: Vec<f32>,

    /// Min-p values to compare, comma-separated (each 0..=1).
    #[arg(long, value_delimiter = ',', default_value = "0", value_parser = unit_interval,
          allow_hyphen_values = true)]
    pub min_p: Vec<f32>,

    /// Tokens to generate per setting (>= 1).
    #[arg(short = 'n', long = "n-predict", default_value_t = 64, value_parser = token_cap,
          allow_hyphen_values = true)]
    pub n_predict: u32,

    /// Seed shared by every setting.
    #[arg(short, long, default_value_t = 0, value_parser = seed, allow_hyphen_values = true)]
    pub seed: u64,

    /// SVG file to write, relative to the current folder; `-` writes the
    /// chart to stdout.
    #[arg(short, long, value_name = "PATH", default_value = "talkback-plot.svg")]
    pub out: PathBuf,

    /// Model and context settings.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Arguments of `talkback replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Trace written by `--trace`; `-` reads it from stdin.
    pub trace: PathBuf,

    /// GGUF model file; its SHA-256 must match the trace's
    /// [default: $TALKBACK_MODEL, else the fetched SmolLM2 model].
    #[arg(short, long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// CPU threads for decoding, 1..=1024 [default: the count the trace
    /// records, else all cores].
    #[arg(short = 't', long, value_parser = threads, allow_hyphen_values = true)]
    pub threads: Option<u32>,
}

/// Arguments of `talkback chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The user's message; read from stdin when omitted and stdin is not a
    /// terminal (after `--messages`, an empty stdin adds no turn).
    pub prompt: Option<String>,

    /// A system message placed before the conversation; it replaces any
    /// system message of `--messages`.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Jinja chat template to use instead of the model's own; `-` reads it
    /// from stdin (the message is then an argument).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,

    /// Earlier turns as a JSON array of {"role", "content"} objects; the
    /// message, from the argument or stdin, is appended as the last user
    /// turn. Without one, the file's turns get one reply (no interactive
    /// chat), so it must hold a "user" or "assistant" turn. `-` reads the
    /// array from stdin (the message is then an argument).
    #[arg(long, value_name = "FILE")]
    pub messages: Option<PathBuf>,

    /// Print the rendered prompt exactly as the model would see it (with the
    /// BOS its vocabulary adds, if it adds one), and exit (as text: not with
    /// --format, --trace or --dump-logits). Sampling flags are accepted and
    /// unused, so that a run's own command line shows its prompt.
    #[arg(long)]
    pub render_only: bool,

    /// Model and context settings.
    #[command(flatten)]
    pub model: ModelArgs,

    /// Sampling settings.
    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Generation and output settings.
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Arguments of `talkback complete`.
#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// The text to continue; read from stdin when omitted.
    pub prompt: Option<String>,

    /// Parse special-token text such as `<|im_start|>` in the prompt as
    /// control tokens instead of plain text (a prompt that opens with the
    /// model's BOS gets no second one).
    #[arg(long)]
    pub parse_special: bool,

    /// Model and context settings.
    #[command(flatten)]
    pub model: ModelArgs,

    /// Sampling settings.
    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Generation and output settings.
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Which model to load and how large a context to give it.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// GGUF model file [default: $TALKBACK_MODEL, else the fetched SmolLM2 model].
    #[arg(short, long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Context size in tokens, prompt included (16..=1048576, and no more than
    /// the model was trained on) [default: 4096, or the model's trained
    /// context if that is shorter].
    #[arg(short = 'c', long, value_parser = ctx_size, allow_hyphen_values = true)]
    pub ctx_size: Option<u32>,

    /// Prompt tokens decoded per batch (1..=65536).
    #[arg(short = 'b', long, default_value_t = 512, value_parser = batch_size,
          allow_hyphen_values = true)]
    pub batch_size: u32,

    /// CPU threads for decoding, 1..=1024 [default: all cores].
    #[arg(short = 't', long, value_parser = threads, allow_hyphen_values = true)]
    pub threads: Option<u32>,

    /// Layers to offload to the GPU; above 0 needs a build with `--features cuda`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        value_parser = gpu_layers,
        allow_hyphen_values = true
    )]
    pub gpu_layers: u32,

    /// Map the model file into memory instead of reading it: quicker to
    /// start with a large model, but the file must not be written to while
    /// talkback runs (a copy over it stops talkback with SIGBUS).
    #[arg(long)]
    pub mmap: bool,
}

impl ModelArgs {
    /// The decoding threads in force: `--threads`, or one per core.
    pub fn threads(&self) -> u32 {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .min(*THREADS.end())
        })
    }
}

// Numeric flags accept a leading minus (`--temp -1`), so that an
// out-of-range value is reported as such instead of as an unknown flag, and
// negative penalties need no `=`. Float flags take any value that starts
// with a minus, `-inf` and `-nan` included, so that those are reported by
// the value's own check too. Every whole-number flag reads its value
// through `whole`, so a spelling such as `-0` or `+5` means the same to all.

/// The truncation stages and their order: all that shapes one distribution.
#[derive(Debug, Args, Clone)]
pub struct StageArgs {
    /// Temperature (>= 0, finite); 0 keeps only the most likely token (greedy).
    #[arg(long, default_value_t = 0.8, value_parser = non_negative, allow_hyphen_values = true)]
    pub temp: f32,

    /// Keep only the K most likely tokens; 0 turns it off.
    #[arg(long, default_value_t = 40, value_parser = count, allow_hyphen_values = true)]
    pub top_k: u32,

    /// Keep the smallest set of tokens whose probability reaches P (0..=1); 1 is off.
    #[arg(long, default_value_t = 0.95, value_parser = unit_interval,
          allow_hyphen_values = true)]
    pub top_p: f32,

    /// Drop tokens less likely than P times the most likely one (0..=1); 0 is off.
    #[arg(long, default_value_t = 0.05, value_parser = unit_interval,
          allow_hyphen_values = true)]
    pub min_p: f32,

    /// Stage order: `talkback` (temperature first), `llama.cpp` (temperature
    /// last), or a comma list naming temp and any of top-k, top-p, min-p,
    /// each once; a stage left out of the list does not run, and a flag
    /// given for it is refused.
    #[arg(long, default_value = "talkback", value_parser = parse_order)]
    pub sampler_order: Order,
}

/// Sampling settings, named as llama.cpp names them.
#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// The stages and their order.
    #[command(flatten)]
    pub stages: StageArgs,

    /// Repetition penalty over the last tokens (> 0); 1 is off.
    #[arg(long, default_value_t = 1.0, value_parser = positive, allow_hyphen_values = true)]
    pub repeat_penalty: f32,

    /// How many recent generated tokens the penalties look at (0..=1024).
    #[arg(long, default_value_t = 64, value_parser = penalty_window,
          allow_hyphen_values = true)]
    pub repeat_last_n: u32,

    /// Subtracted once from the logit of every token in the window; 0 is off.
    #[arg(long, default_value_t = 0.0, value_parser = finite, allow_hyphen_values = true)]
    pub presence_penalty: f32,

    /// Subtracted from a token's logit per occurrence in the window; 0 is off.
    #[arg(long, default_value_t = 0.0, value_parser = finite, allow_hyphen_values = true)]
    pub frequency_penalty: f32,

    /// Seed for the random draw [default: random, shown with -v].
    #[arg(short, long, value_parser = seed, allow_hyphen_values = true)]
    pub seed: Option<u64>,

    /// Which sampler picks tokens; `llama.cpp` is for speed comparisons and
    /// reports no log-probabilities.
    #[arg(long, value_enum, default_value_t = Engine::Talkback)]
    pub sampler: Engine,
}

/// How much to generate, when to stop, and how to print it.
#[derive(Debug, Args, Clone)]
pub struct GenerationArgs {
    /// Stop after N generated tokens (>= 1) [default: until end of turn or full context].
    #[arg(short = 'n', long = "n-predict", value_name = "N", value_parser = token_cap,
          allow_hyphen_values = true)]
    pub n_predict: Option<u32>,

    // Stop strings may start with a hyphen (`--stop "---"`, a Markdown rule).
    /// Stop when the output would contain TEXT (repeatable, up to 16 strings
    /// of up to 256 bytes); TEXT is not printed.
    #[arg(long = "stop", value_name = "TEXT", value_parser = non_empty,
          allow_hyphen_values = true)]
    pub stops: Vec<String>,

    /// Keep generating past end-of-generation tokens (they are never drawn).
    #[arg(long)]
    pub ignore_eos: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Record the run (model hash, prompt, settings, seed, tokens) to FILE
    /// for `talkback replay`.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// Write every step's logits to FILE as little-endian f32, one
    /// vocabulary-sized record per step (input for benchmarks).
    #[arg(long, value_name = "FILE")]
    pub dump_logits: Option<PathBuf>,
}

/// What stdout carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The generated text, streamed as it is produced.
    Text,
    /// One JSON object at the end: text, token ids, finish reason, settings, timings.
    Json,
    /// One JSON event per token, then a summary event.
    Jsonl,
}

/// A decimal whole number in `range`, with an optional sign: `-0` is 0, and
/// a number outside the range, negative or beyond 64 bits included, is
/// reported with the range. Spaces around it are allowed, as they are
/// around decimal numbers.
fn whole<T: TryFrom<u64>>(raw: &str, range: RangeInclusive<u64>) -> Result<T, String> {
    let s = raw.trim();
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        // As given: a blank value trimmed would show as nothing at all.
        return Err(format!("`{raw}` is not a whole number"));
    }
    let outside = || format!("{s} is not in {}..={}", range.start(), range.end());
    // All digits, so the only failure left is a number beyond u64.
    let n: u64 = digits.parse().map_err(|_| outside())?;
    if (s.starts_with('-') && n != 0) || !range.contains(&n) {
        return Err(outside());
    }
    T::try_from(n).map_err(|_| outside())
}

/// A count that may be 0 (off), such as `--top-k`.
fn count(s: &str) -> Result<u32, String> {
    whole(s, 0..=u64::from(u32::MAX))
}

/// A token cap, `-n`: at least one token.
fn token_cap(s: &str) -> Result<u32, String> {
    whole(s, 1..=u64::from(u32::MAX))
}

fn seed(s: &str) -> Result<u64, String> {
    whole(s, 0..=u64::MAX)
}

fn threads(s: &str) -> Result<u32, String> {
    whole(s, widen(THREADS))
}

fn ctx_size(s: &str) -> Result<u32, String> {
    whole(s, widen(CTX_SIZES))
}

fn batch_size(s: &str) -> Result<u32, String> {
    whole(s, widen(BATCH_SIZES))
}

fn penalty_window(s: &str) -> Result<u32, String> {
    whole(s, 0..=sampler_core::MAX_RECENT as u64)
}

fn rows(s: &str) -> Result<usize, String> {
    whole(s, 0..=usize::MAX as u64)
}

fn widen(range: RangeInclusive<u32>) -> RangeInclusive<u64> {
    u64::from(*range.start())..=u64::from(*range.end())
}

/// A number as a 32-bit float; an infinity only when the text names one.
///
/// Decimal text beyond the range of f32 (`1e39`) parses as an infinity,
/// which would turn a typo into a token forced or banned; it is refused.
/// So is text that is not zero but rounds to zero (`1e-50`), which would
/// turn a setting off, or make a temperature greedy, unsaid.
fn parse_f32(s: &str) -> Result<f32, String> {
    parse_exact(s).map(|(v, _)| v)
}

/// What decimal text says, in exact arithmetic: no float rounding, which
/// turns `1e-400` into 0 and `1.0000000000000001` into 1 even in 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exact {
    /// Below zero.
    negative: bool,
    /// Zero (of either sign).
    zero: bool,
    /// Above one in magnitude.
    above_one: bool,
}

impl Exact {
    /// Reads text that Rust parses as a float and that is not `inf` or
    /// `nan`: a sign, digits with at most one point, and an exponent.
    fn of(t: &str) -> Self {
        let negative_sign = t.starts_with('-');
        let t = t.trim_start_matches(['+', '-']);
        let (mantissa, exponent) = t.split_once(['e', 'E']).unwrap_or((t, "0"));
        // An exponent beyond i64 saturates, which keeps its sign.
        let exponent: i64 = exponent.parse().unwrap_or_else(|_| {
            if exponent.starts_with('-') {
                i64::MIN / 2
            } else {
                i64::MAX / 2
            }
        });
        let whole = mantissa.split('.').next().unwrap_or_default().len() as i64;
        let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
        let lead = digits.iter().take_while(|&&d| d == b'0').count();
        let significant = digits.get(lead..).unwrap_or_default();
        // The value is 0.(significant) times ten to the power `point`.
        let point = (whole - lead as i64).saturating_add(exponent);
        let zero = significant.is_empty();
        let above_one = !zero
            && (point > 1
                || (point == 1
                    && (significant.first() > Some(&b'1')
                        || significant.iter().skip(1).any(|&d| d != b'0'))));
        Exact {
            negative: negative_sign && !zero,
            zero,
            above_one,
        }
    }
}

/// [`parse_f32`], with what the text says in exact arithmetic (`None`
/// for a named infinity or NaN), for range checks that rounding must not
/// pass.
fn parse_exact(s: &str) -> Result<(f32, Option<Exact>), String> {
    parse_exact_or(s, "write 0 if 0 is meant")
}

/// [`parse_exact`], with `advice` for a number that would round to 0.
fn parse_exact_or(s: &str, advice: &str) -> Result<(f32, Option<Exact>), String> {
    let t = s.trim();
    let Ok(v) = t.parse::<f32>() else {
        return Err(format!("`{s}` is not a number"));
    };
    if v.is_nan() || v.is_infinite() {
        let word = t.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if v.is_infinite() && word != "inf" && word != "infinity" {
            return Err(format!(
                "`{s}` is out of range: a 32-bit float holds at most about 3.4e38"
            ));
        }
        return Ok((v, None));
    }
    let exact = Exact::of(t);
    if v == 0.0 && !exact.zero {
        return Err(format!(
            "`{s}` is too small for a 32-bit float, which would make it 0; {advice}"
        ));
    }
    Ok((v, Some(exact)))
}

/// A finite number, as the 32-bit float and what the text says exactly.
///
/// `-0` is 0: a sign on zero changes no setting, and would show in the
/// settings that JSON output, traces and `-v` print as `-0.0`.
fn finite_exact(s: &str) -> Result<(f32, Exact), String> {
    finite_exact_or(s, "write 0 if 0 is meant")
}

/// [`finite_exact`], with `advice` for a number that would round to 0.
fn finite_exact_or(s: &str, advice: &str) -> Result<(f32, Exact), String> {
    match parse_exact_or(s, advice)? {
        (0.0, Some(exact)) => Ok((0.0, exact)),
        (v, Some(exact)) => Ok((v, exact)),
        (_, None) => Err(format!("`{s}` must be a finite number")),
    }
}

/// A finite number (`-0` is 0), as a flag or a trace gives it.
pub fn finite(s: &str) -> Result<f32, String> {
    finite_exact(s).map(|(v, _)| v)
}

/// [`finite`], and not below zero.
pub fn non_negative(s: &str) -> Result<f32, String> {
    let (v, exact) = finite_exact(s)?;
    if exact.negative {
        Err(format!("`{s}` must be zero or more"))
    } else {
        Ok(v)
    }
}

/// [`finite`], and above zero.
pub fn positive(s: &str) -> Result<f32, String> {
    // 0 is refused here, so it is no way out of a number that rounds to it.
    let (v, exact) = finite_exact_or(s, "it must be more than zero, and at least about 1.4e-45")?;
    if exact.negative || exact.zero {
        Err(format!("`{s}` must be more than zero"))
    } else {
        Ok(v)
    }
}

/// [`finite`], from 0 to 1.
pub fn unit_interval(s: &str) -> Result<f32, String> {
    let (v, exact) = finite_exact(s)?;
    if exact.negative || exact.above_one {
        Err(format!("`{s}` must be between 0 and 1"))
    } else {
        Ok(v)
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    use crate::generate::MAX_STOP_LEN;
    if s.is_empty() {
        Err("a stop string cannot be empty".to_owned())
    } else if s.len() > MAX_STOP_LEN {
        Err(format!(
            "a stop string of {} bytes exceeds the limit of {MAX_STOP_LEN} bytes",
            s.len()
        ))
    } else {
        Ok(s.to_owned())
    }
}

/// Refuses a stage flag given on the command line when `--sampler-order`
/// leaves that stage out, where it would have no effect.
///
/// Only flags the user typed count: a default value for a stage the order
/// does not run is nobody's request.
///
/// # Errors
///
/// - the first such flag, named with the stage it sets.
pub fn check_stage_flags(matches: &ArgMatches) -> Result<(), String> {
    let Some((_, sub)) = matches.subcommand() else {
        return Ok(());
    };
    // Only the subcommands that take an order have stage flags to check.
    let Ok(Some(order)) = sub.try_get_one::<Order>("sampler_order") else {
        return Ok(());
    };
    let flags = [
        ("temp", Stage::Temperature),
        ("top_k", Stage::TopK),
        ("top_p", Stage::TopP),
        ("min_p", Stage::MinP),
    ];
    for (id, stage) in flags {
        let typed = sub.value_source(id) == Some(ValueSource::CommandLine);
        if typed && !order.stages().contains(&stage) {
            return Err(format!(
                "--{} has no effect: --sampler-order leaves out the {stage} stage; \
                 add it to the order or drop the flag",
                id.replace('_', "-")
            ));
        }
    }
    Ok(())
}

/// A clearer error for a flag of another subcommand, which clap reports
/// as unknown with a tip (about `--`, or a flag of a similar name) that
/// does not apply.
///
/// `args` is the command line after the program name; `None` when `error`
/// is about something else, or no other subcommand takes the flag.
pub fn explain_unknown(error: &clap::Error, args: &[String]) -> Option<clap::Error> {
    if error.kind() != clap::error::ErrorKind::UnknownArgument {
        return None;
    }
    let given = match error.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(flag)) => flag.clone(),
        _ => return None,
    };
    // The first word that is not a flag names the subcommand.
    let at = args.iter().position(|a| !a.starts_with('-'))?;
    let sub = args.get(at)?.as_str();
    let name = given.split('=').next().unwrap_or(&given);
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Built, so that the usage line names the program before the subcommand.
    cmd.build();
    // After `--` every word is an argument, so a flag there is one too
    // many, whichever subcommand takes it. The copy refused is the one
    // after `--` when the subcommand takes the flag, or when no copy
    // comes before `--`; otherwise it is the one before, refused as what
    // it is.
    let owned = cmd
        .find_subcommand(sub)
        .is_some_and(|c| c.get_arguments().any(|a| names(a, name)));
    let rest = args.get(at + 1..).unwrap_or_default();
    let after_dashes = rest.iter().position(|a| a == "--").is_some_and(|d| {
        let (before, after) = rest.split_at(d);
        after.get(1..).unwrap_or_default().contains(&given) && (owned || !before.contains(&given))
    });
    if after_dashes && given.starts_with('-') && given != "--" {
        let command = cmd.find_subcommand_mut(sub)?;
        return Some(command.error(
            clap::error::ErrorKind::UnknownArgument,
            format!(
                "`{given}` after `--` is read as an argument, not a flag, and {sub} takes \
                 one: put flags before `--`"
            ),
        ));
    }
    let owners: Vec<&str> = cmd
        .get_subcommands()
        .filter(|c| c.get_name() != sub && c.get_arguments().any(|a| names(a, name)))
        .map(clap::Command::get_name)
        .collect();
    let why = match (sub, name) {
        (_, _) if owners.is_empty() => return None,
        ("shape", "--seed" | "-s" | "--sampler") => "it draws no token".to_owned(),
        (
            "shape",
            "--repeat-penalty" | "--repeat-last-n" | "--presence-penalty" | "--frequency-penalty",
        ) => "penalties look at generated tokens, and it generates none".to_owned(),
        (
            "shape",
            "-n" | "--n-predict" | "--stop" | "--ignore-eos" | "--trace" | "--dump-logits",
        ) => "it generates no text".to_owned(),
        (
            "replay",
            "--seed"
            | "-s"
            | "--temp"
            | "--top-k"
            | "--top-p"
            | "--min-p"
            | "--repeat-penalty"
            | "--repeat-last-n"
            | "--presence-penalty"
            | "--frequency-penalty"
            | "-n"
            | "--n-predict"
            | "--stop"
            | "--ignore-eos"
            | "--sampler"
            | "--sampler-order"
            | "--ctx-size"
            | "-c"
            | "--batch-size"
            | "-b"
            | "--system",
        ) => "a replay runs with the settings its trace recorded".to_owned(),
        ("plot", "--format" | "--trace" | "--dump-logits") => {
            "it writes a chart of each setting's run, not the run itself".to_owned()
        }
        ("complete", "--render-only" | "--system" | "--messages" | "--chat-template") => {
            "it continues the text as given, with no chat template".to_owned()
        }
        ("chat", "--parse-special") => {
            "message text is never read as control tokens (only `complete` can)".to_owned()
        }
        _ if owners.len() == 1 => format!("{} takes it", and_list(&owners)),
        _ => format!("{} take it", and_list(&owners)),
    };
    let tail = if sub == "shape" && !why.ends_with(" it") {
        "; it shows the next-token distribution after each stage"
    } else {
        ""
    };
    let command = cmd.find_subcommand_mut(sub)?;
    Some(command.error(
        clap::error::ErrorKind::UnknownArgument,
        format!("{sub} takes no {name}: {why}{tail}"),
    ))
}

/// Whether `arg` is spelled `name` (`--long` or `-s`).
fn names(arg: &clap::Arg, name: &str) -> bool {
    match name.strip_prefix("--") {
        Some(long) => arg.get_long() == Some(long),
        None => {
            let mut short = name.strip_prefix('-').unwrap_or("").chars();
            match (short.next(), short.next()) {
                (Some(c), None) => arg.get_short() == Some(c),
                _ => false,
            }
        }
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Parses a preset name or a comma-separated list of stages.
pub fn parse_order(s: &str) -> Result<Order, String> {
    // Spaces around a preset's name are passed over, as around a stage's.
    if let Some(order) = Order::from_name(s.trim()) {
        return Ok(order);
    }
    if s.trim().is_empty() {
        return Err(
            "the order names no stage: use talkback, llama.cpp, or a comma list \
             of temp, top-k, top-p, min-p"
                .to_owned(),
        );
    }
    let mut stages = Vec::new();
    for name in s.split(',').map(str::trim) {
        if let Some(stage) = stage_of(name) {
            stages.push(stage);
        } else if name.is_empty() {
            return Err(format!("`{s}` has an empty stage name (a comma too many?)"));
        } else if Order::from_name(name).is_some() {
            return Err(format!(
                "`{name}` is a whole order, not a stage, so it stands alone; a list names \
                 stages: temp, top-k, top-p, min-p"
            ));
        } else {
            return Err(format!(
                "unknown stage `{name}`: use talkback, llama.cpp, or a comma list of temp, \
                 top-k, top-p, min-p"
            ));
        }
    }
    Order::new(&stages).map_err(|e| format!("invalid order `{s}`: {e}"))
}

/// The stage a name stands for: `temp`, `top-k`, `top-p`, `min-p`, or the
/// same with `temperature` or an underscore.
pub fn stage_of(name: &str) -> Option<Stage> {
    match name {
        "temp" | "temperature" => Some(Stage::Temperature),
        "top-k" | "top_k" => Some(Stage::TopK),
        "top-p" | "top_p" => Some(Stage::TopP),
        "min-p" | "min_p" => Some(Stage::MinP),
        _ => None,
    }
}

/// Parses `--gpu-layers`, refusing offload in a build without a GPU backend.
fn gpu_layers(s: &str) -> Result<u32, String> {
    let n = count(s)?;
    if n > 0 && !cfg!(feature = "cuda") {
        return Err("this build has no GPU backend; build with \
             `cargo build --release -p talkback --features cuda`"
            .into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ranges_are_enforced() {
        assert!(unit_interval("1.5").is_err());
        assert!(unit_interval("NaN").is_err());
        assert_eq!(unit_interval("0.25"), Ok(0.25));
        assert!(non_negative("-0.1").is_err());
        assert!(non_negative("inf").is_err());
        assert!(positive("0").is_err());
        assert!(non_empty("").is_err());
        assert!(non_empty(&"x".repeat(256)).is_ok());
        assert!(non_empty(&"x".repeat(257)).is_err());
    }

    #[test]
    fn lists_take_spaces_after_their_commas_for_every_kind_of_number() {
        let cli = Cli::try_parse_from([
            "talkback", "plot", "x", "--top-k", "10, 20", "--temp", "0.5, 1",
        ])
        .unwrap();
        let Command::Plot(plot) = cli.command else {
            panic!("not plot");
        };
        assert_eq!(plot.top_k, [10, 20]);
        assert_eq!(plot.temp, [0.5, 1.0]);
        for bad in ["-1", "1.5", "x", "4294967296"] {
            assert!(count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_beyond_a_float_are_refused_but_named_infinities_are_not() {
        assert_eq!(parse_logit("3.4e38"), Ok(3.4e38));
        assert_eq!(parse_logit("-inf"), Ok(f32::NEG_INFINITY));
        assert_eq!(parse_logit("+Infinity"), Ok(f32::INFINITY));
        assert!(parse_logit("NaN").is_ok_and(f32::is_nan));
        for bad in ["1e39", "-3.5e38", "1e400"] {
            let e = parse_logit(bad).unwrap_err();
            assert!(e.contains("out of range"), "{bad}: {e}");
        }
        assert_eq!(
            finite("1e39"),
            Err("`1e39` is out of range: a 32-bit float holds at most about 3.4e38".into())
        );
        assert_eq!(finite("inf"), Err("`inf` must be a finite number".into()));
    }

    #[test]
    fn a_zero_with_a_sign_reads_as_zero() {
        for zero in ["-0", "-0.0", "-0e5", "+0", "-.0"] {
            for (what, v) in [
                ("finite", finite(zero)),
                ("non_negative", non_negative(zero)),
                ("unit_interval", unit_interval(zero)),
            ] {
                let v = v.unwrap_or_else(|e| panic!("{what}({zero}): {e}"));
                assert_eq!(v.to_bits(), 0, "{what}({zero}) = {v:?}");
            }
        }
    }

    #[test]
    fn rounding_to_a_float_never_passes_a_check_the_text_fails() {
        // Not zero, yet zero as an f32: min-p off, a temperature greedy.
        for tiny in ["1e-50", "-1e-50", "1e-46"] {
            let e = non_negative(tiny).unwrap_err();
            assert!(e.contains("too small for a 32-bit float"), "{tiny}: {e}");
        }
        // A flag that refuses 0 does not offer it as the way out.
        for tiny in ["1e-50", "-1e-50"] {
            assert_eq!(
                positive(tiny).unwrap_err(),
                format!(
                    "`{tiny}` is too small for a 32-bit float, which would make it 0; it \
                     must be more than zero, and at least about 1.4e-45"
                )
            );
        }
        assert!(non_negative("1e-50")
            .unwrap_err()
            .ends_with("; write 0 if 0 is meant"));
        assert_eq!(non_negative("0"), Ok(0.0));
        assert_eq!(non_negative("-0"), Ok(-0.0));
        // The smallest f32 above zero is kept.
        assert_eq!(non_negative("1e-45"), Ok(f32::from_bits(1)));
        // 1 as an f32, but above 1 as written.
        assert_eq!(
            unit_interval("1.00000001"),
            Err("`1.00000001` must be between 0 and 1".into())
        );
        assert_eq!(unit_interval(" 1 "), Ok(1.0));
        assert!(positive("-1e-40").is_err());
        // Past what even 64 bits hold.
        for tiny in ["1e-400", "-1e-400", "0.0000001e-99999999999999999999"] {
            assert!(non_negative(tiny).is_err(), "{tiny}");
        }
        for above in [
            "1.0000000000000001",
            "1.00000000000000000001",
            "0.10000000001e1",
        ] {
            assert!(unit_interval(above).is_err(), "{above}");
        }
        for one in [
            "1",
            "1.",
            "1e0",
            "10e-1",
            "0.1e1",
            "00001.0000",
            "0.99999999999999999999",
        ] {
            assert!(unit_interval(one).is_ok(), "{one}");
        }
        let exact = |t: &str| Exact::of(t);
        let (z, n, a) = (true, true, true);
        assert_eq!(
            exact("-0.000e5"),
            Exact {
                negative: !n,
                zero: z,
                above_one: !a
            }
        );
        assert_eq!(
            exact("-.5"),
            Exact {
                negative: n,
                zero: !z,
                above_one: !a
            }
        );
        assert_eq!(
            exact("+2"),
            Exact {
                negative: !n,
                zero: !z,
                above_one: a
            }
        );
        assert_eq!(
            exact("1e99999999999999999999"),
            Exact {
                negative: !n,
                zero: !z,
                above_one: a
            }
        );
        // Whole numbers take spaces around them, as decimals do.
        assert_eq!(count(" 7 "), Ok(7));
        assert_eq!(token_cap("\t2"), Ok(2));
        assert!(count("7 7").is_err());
    }

    #[test]
    fn a_negative_count_is_a_bad_value_not_an_unknown_flag() {
        use clap::error::ErrorKind;
        for flag in [
            "--top-k",
            "-n",
            "--seed",
            "--ctx-size",
            "--threads",
            "--repeat-last-n",
        ] {
            let err = Cli::try_parse_from(["talkback", "complete", "x", flag, "-1"])
                .err()
                .map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::ValueValidation), "{flag}");
        }
    }

    #[test]
    fn generation_flags_given_to_shape_are_explained() {
        let explain = |argv: &[&str]| {
            let args: Vec<String> = argv.iter().skip(1).map(|a| (*a).to_owned()).collect();
            let e = Cli::try_parse_from(argv).expect_err("refused");
            explain_unknown(&e, &args).map(|e| e.to_string())
        };
        for (flag, why) in [
            ("--seed", "it draws no token"),
            ("--sampler", "it draws no token"),
            ("--repeat-last-n", "it generates none"),
            ("--frequency-penalty", "it generates none"),
            ("-n", "it generates no text"),
            ("--stop", "it generates no text"),
        ] {
            let text = explain(&["talkback", "-v", "shape", "x", flag, "1"])
                .unwrap_or_else(|| panic!("{flag} not explained"));
            assert!(
                text.starts_with(&format!("error: shape takes no {flag}: ")),
                "{text}"
            );
            assert!(text.contains(why), "{text}");
            assert!(text.contains("Usage: talkback shape"), "{text}");
            assert!(!text.contains("tip:"), "{text}");
        }
        // After `--` a flag is a word of text, whoever takes it.
        for argv in [
            &["talkback", "complete", "--", "hi", "--threads", "1"][..],
            &["talkback", "chat", "hi", "--", "-n", "5"],
            &["talkback", "-v", "shape", "--", "hi", "--stop", "x"],
        ] {
            let text = explain(argv).expect("explained");
            let flag = argv.iter().rev().nth(1).expect("flag");
            let sub = argv
                .iter()
                .find(|a| !a.starts_with('-') && **a != "talkback");
            assert!(
                text.starts_with(&format!(
                    "error: `{flag}` after `--` is read as an argument, not a flag, and {} \
                     takes one: put flags before `--`\n",
                    sub.expect("subcommand")
                )),
                "{text}"
            );
        }
        // A word refused before `--` is not blamed on its copy after it,
        // and a flag taken before `--` is refused in its copy after it.
        let typo = explain(&["talkback", "complete", "--treads", "1", "--", "--treads"]);
        assert_eq!(typo, None);
        for argv in [
            &["talkback", "complete", "--seed", "3", "x", "--", "--seed"][..],
            &["talkback", "chat", "-v", "x", "--", "-v"],
            &[
                "talkback",
                "complete",
                "--parse-special",
                "x",
                "--",
                "--parse-special",
            ],
        ] {
            let text = explain(argv).expect("explained");
            assert!(
                text.contains("after `--` is read as an argument"),
                "{argv:?}: {text}"
            );
        }
        let text = explain(&["talkback", "shape", "x", "--seed=3"]).expect("explained");
        assert!(text.starts_with("error: shape takes no --seed: "), "{text}");
        // A flag no subcommand takes keeps clap's own report.
        assert_eq!(explain(&["talkback", "shape", "x", "--bogus"]), None);
        assert_eq!(explain(&["talkback", "plot", "x", "--bogus"]), None);
    }

    #[test]
    fn flags_of_other_subcommands_are_explained() {
        let explain = |argv: &[&str]| {
            let args: Vec<String> = argv.iter().skip(1).map(|a| (*a).to_owned()).collect();
            let e = Cli::try_parse_from(argv).expect_err("refused");
            explain_unknown(&e, &args).map(|e| e.to_string())
        };
        for (argv, want, usage) in [
            (
                &["talkback", "plot", "x", "--format", "json"][..],
                "error: plot takes no --format: it writes a chart of each setting's run",
                "Usage: talkback plot",
            ),
            (
                &["talkback", "plot", "x", "--stop", "y"],
                "error: plot takes no --stop: chat and complete take it\n",
                "Usage: talkback plot",
            ),
            (
                &["talkback", "complete", "x", "--render-only"],
                "error: complete takes no --render-only: it continues the text as given",
                "Usage: talkback complete",
            ),
            (
                &["talkback", "replay", "t.json", "--seed", "1"],
                "error: replay takes no --seed: a replay runs with the settings its trace",
                "Usage: talkback replay",
            ),
            (
                &["talkback", "chat", "x", "--parse-special"],
                "error: chat takes no --parse-special: message text is never read",
                "Usage: talkback chat",
            ),
            (
                &["talkback", "replay", "t.json", "-s", "1"],
                "error: replay takes no -s: a replay runs with the settings its trace",
                "Usage: talkback replay",
            ),
            (
                &["talkback", "replay", "t.json", "--format", "json"],
                "error: replay takes no --format: chat, complete and shape take it\n",
                "Usage: talkback replay",
            ),
            (
                &["talkback", "chat", "x", "-o", "a.svg"],
                "error: chat takes no -o: plot takes it\n",
                "Usage: talkback chat",
            ),
        ] {
            let text = explain(argv).unwrap_or_else(|| panic!("{argv:?} not explained"));
            assert!(text.starts_with(want), "{text}");
            assert!(text.contains(usage), "{text}");
            assert!(!text.contains("tip:"), "{text}");
        }
    }

    #[test]
    fn every_whole_number_flag_reads_a_spelling_alike() {
        let flags: [(&[&str], &str, u64); 13] = [
            (&["complete", "x"], "--top-k", 0),
            (&["complete", "x"], "--repeat-last-n", 0),
            (&["complete", "x"], "--gpu-layers", 0),
            (&["complete", "x"], "--seed", 0),
            (&["complete", "x"], "-n", 1),
            (&["complete", "x"], "--ctx-size", 16),
            (&["complete", "x"], "--batch-size", 1),
            (&["complete", "x"], "--threads", 1),
            (&["plot", "x"], "--top-k", 0),
            (&["plot", "x"], "-n", 1),
            (&["plot", "x"], "--seed", 0),
            (&["shape", "--logits", "1"], "--rows", 0),
            (&["replay", "t.json"], "--threads", 1),
        ];
        for (args, flag, lowest) in flags {
            let parse = |value: &str| {
                let mut argv = vec!["talkback"];
                argv.extend_from_slice(args);
                argv.extend_from_slice(&[flag, value]);
                Cli::try_parse_from(argv)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            let range = |value: &str| format!("{value} is not in {lowest}..=");
            for zero in ["-0", "+0"] {
                if lowest == 0 {
                    assert_eq!(parse(zero), Ok(()), "{args:?} {flag} {zero}");
                } else {
                    let e = parse(zero).unwrap_err();
                    assert!(e.contains(&range(zero)), "{flag}: {e}");
                }
            }
            for outside in ["-5", "99999999999999999999"] {
                let e = parse(outside).unwrap_err();
                assert!(e.contains(&range(outside)), "{flag}: {e}");
            }
            let e = parse("5x").unwrap_err();
            assert!(e.contains("`5x` is not a whole number"), "{flag}: {e}");
            let e = parse(" ").unwrap_err();
            assert!(e.contains("` ` is not a whole number"), "{flag}: {e}");
        }
    }

    #[test]
    fn orders_parse_by_name_and_list() {
        assert_eq!(parse_order("llama.cpp"), Ok(Order::LLAMA_CPP));
        assert_eq!(parse_order("talkback"), Ok(Order::TALKBACK));
        // The unknown stage ` talkback` was named `talkback` in the error.
        assert_eq!(parse_order(" talkback "), Ok(Order::TALKBACK));
        // Errors that do not contradict themselves.
        assert_eq!(
            parse_order("temp,talkback"),
            Err(
                "`talkback` is a whole order, not a stage, so it stands alone; a list names \
                 stages: temp, top-k, top-p, min-p"
                    .into()
            )
        );
        assert_eq!(
            parse_order("temp,"),
            Err("`temp,` has an empty stage name (a comma too many?)".into())
        );
        assert!(parse_order(" ").is_err_and(|e| e.starts_with("the order names no stage")));
        let list = parse_order("top-k,temp").map(|o| o.stages().to_vec());
        assert_eq!(list, Ok(vec![Stage::TopK, Stage::Temperature]));
        assert!(parse_order("top-q").is_err());
    }
}
