//! `talkback-bench`: sampler-core against llama.cpp's sampler chain, on the same real logits.
//!
//! Two modes:
//!
//! - `kernels` (the default): feeds the same logit vectors, one sampling step
//!   at a time, to sampler-core and to llama.cpp's chain (through
//!   `llama-cpp-2`'s `LlamaSampler`), interleaved call by call so that machine
//!   noise hits both, and prints the median time per token and the ratio
//!   llama.cpp / ours for each case. llama.cpp's time includes building its
//!   candidate array, which its users pay every token.
//! - `e2e`: runs the `talkback` binary with `--sampler talkback` and
//!   `--sampler llama.cpp`, alternating, and prints tokens per second and the
//!   sampler's share of a decode step.
//!
//! Results go to stdout, all at once when the measurement ends; progress
//! and notes go to stderr. Exit codes: 0 success (also when stdout is
//! closed early), 1 failure, 2 usage error.

/// Writes a line to stderr; a stderr that cannot be written loses the
/// line, not the measurement.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cases;
mod e2e;
mod floor;
mod input;
mod measure;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Time sampler-core against llama.cpp's sampler chain.
#[derive(Debug, Parser)]
#[command(name = "talkback-bench")]
struct Cli {
    /// What to measure [default: kernels].
    #[command(subcommand)]
    command: Option<Command>,
}

/// The modes.
#[derive(Debug, Subcommand)]
enum Command {
    /// Time one sampling step of each sampler on the same real logits.
    Kernels(KernelArgs),
    /// Time whole generations with the talkback binary, both samplers.
    E2e(e2e::E2eArgs),
    /// Write the logits of a fresh generation to a file (used by `kernels`).
    #[command(hide = true)]
    DumpLogits(DumpArgs),
}

/// Arguments of the hidden `dump-logits`.
#[derive(Debug, Args)]
struct DumpArgs {
    /// GGUF model.
    #[arg(long)]
    model: PathBuf,
    /// Steps to generate.
    #[arg(long)]
    steps: usize,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `kernels`.
#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Logits from `talkback ... --dump-logits FILE` (little-endian f32
    /// records of one vocabulary each) instead of a fresh generation.
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,

    /// Logits per record of the `--logits` file (its model's vocabulary
    /// size, 1..=1048576).
    #[arg(long, value_name = "N", default_value_t = 49152, value_parser = vocab_size)]
    logits_vocab: usize,

    /// GGUF model that generates the logits [default: $TALKBACK_MODEL, else
    /// the fetched SmolLM2 model]. A model named here or in $TALKBACK_MODEL
    /// must exist; the committed fixtures stand in only when no model is
    /// named and the default one has not been fetched.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// Sampling steps of logits to generate with the model (1..=512).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=512))]
    steps: u32,

    /// Timed passes over every step, per case (1..=1000).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,

    /// Vocabulary sizes, comma-separated, each in 1..=1048576 and listed
    /// once; larger ones tile the real logits, smaller ones take a prefix.
    #[arg(long, value_delimiter = ',', default_value = "49152,151936,262144",
          value_parser = vocab_size)]
    vocab: Vec<usize>,

    /// Run only the groups of cases where some case name contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,

    /// Start every timed call with cold caches, as after a decode step:
    /// 64 MiB are streamed through them first, then the step's logits are
    /// read once. Each call then costs a few milliseconds more to set up,
    /// so use few rounds.
    #[arg(long)]
    cold: bool,
}

/// Most logits per vector: four times the largest vocabulary the bench
/// times by default. 512 steps of it take 2 GiB, and far larger sizes
/// would run out of memory before the first call.
const MAX_VOCAB: usize = 1 << 20;

fn vocab_size(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (1..=MAX_VOCAB).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in 1..={MAX_VOCAB}"))
    }
}

impl Default for KernelArgs {
    fn default() -> Self {
        KernelArgs {
            logits: None,
            logits_vocab: 49152,
            model: None,
            steps: 64,
            rounds: 6,
            vocab: vec![49152, 151_936, 262_144],
            filter: None,
            cold: false,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Some(Command::Kernels(args)) = &cli.command {
        if let Err(e) = cases::check(args) {
            note!("talkback-bench: {e}");
            return ExitCode::from(2);
        }
    }
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    let result = match cli.command {
        None => cases::run(&KernelArgs::default()),
        Some(Command::Kernels(args)) => cases::run(&args),
        Some(Command::E2e(args)) => e2e::run(&args),
        Some(Command::DumpLogits(args)) => input::dump(&args.model, args.steps, &args.out),
    };
    match result.map(|text| emit(&mut io::stdout().lock(), &text)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            note!("talkback-bench: cannot write the results: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            note!("talkback-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the results; a reader that left early (`| head`) is no failure.
fn emit(out: &mut impl io::Write, text: &str) -> io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernels(args: &[&str]) -> Result<KernelArgs, clap::Error> {
        let argv = ["talkback-bench", "kernels"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Some(Command::Kernels(k)) => Ok(k),
            other => panic!("not kernels: {other:?}"),
        }
    }

    #[test]
    fn vocabulary_sizes_are_bounded_at_parse_time() {
        for bad in ["0", "1048577", "100000000000", "18446744073709551615"] {
            for flag in ["--vocab", "--logits-vocab"] {
                let e = kernels(&[flag, bad]).unwrap_err();
                assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "{flag} {bad}"
                );
                assert!(e.to_string().contains("is not in 1..=1048576"), "{e}");
            }
        }
        let k = kernels(&["--vocab", "1,1048576", "--logits-vocab", "1048576"]).unwrap();
        assert_eq!(k.vocab, [1, 1 << 20]);
        assert_eq!(k.logits_vocab, 1 << 20);
    }

    #[test]
    fn a_repeated_size_or_a_filter_matching_no_case_is_refused() {
        let k = kernels(&["--vocab", "1000,2000,1000"]).unwrap();
        assert_eq!(cases::check(&k).unwrap_err(), "--vocab lists 1000 twice");

        let k = kernels(&["--vocab", "1000", "--filter", "nothing"]).unwrap();
        let e = cases::check(&k).unwrap_err();
        assert!(
            e.starts_with(
                "--filter \"nothing\" matches no case; the cases are default_chain_v1000, "
            ),
            "{e}"
        );
        assert!(e.ends_with("floor_max_sumexp_libm_v1000"), "{e}");

        // Every name the table prints picks its group.
        for name in [
            "default_chain_penalties_w64_rp1.1_v1000",
            "floor_max_sumexp_poly",
            "greedy",
            "top_p_p0.95_t2_v1000",
        ] {
            let k = kernels(&["--vocab", "1000", "--filter", name]).unwrap();
            assert_eq!(cases::check(&k), Ok(()), "{name}");
        }
    }

    /// A writer whose reader has gone, as stdout is under `| head -1`.
    struct Closed;

    impl io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_is_no_failure_but_a_full_disk_is() {
        assert!(emit(&mut Closed, "table\n").is_ok());
        let mut full = io::Cursor::new([0u8; 2]);
        let e = emit(&mut full, "table\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        let mut out = Vec::new();
        emit(&mut out, "table\n").unwrap();
        assert_eq!(out, b"table\n");
    }
}
