//! The generation loop makes no heap allocation per token once warmed up,
//! whichever output format it feeds.
//!
//! A counting global allocator wraps the system one, and a sink notes the
//! running count at every generated token, so the difference between two
//! tokens covers one whole turn of the loop: sampling, the token's text,
//! the stop-string stream, the sink, and decoding the token. It runs a real
//! 64-token generation with the default model, once per sampler and output
//! format. llama.cpp's own C++ allocations do not go through Rust's
//! allocator and are not counted.
//!
//! It runs without libtest (`harness = false`): the count covers every
//! thread, and libtest's would allocate when a slow machine makes the run
//! pass a minute. A failed check panics, which fails `cargo test`.

// Helpers outside #[test] functions stop the test the same way.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use std::alloc::System;
use std::io;

use clap::Parser;
use llama_cpp_2::token::LlamaToken;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use talkback::cli::{Cli, Command, CompleteArgs};
use talkback::generate::{Finish, Generator, Request, Sink, Step};
use talkback::model::{resolve_path, Model};
use talkback::output::{CollectSink, JsonlSink, TextSink};
use talkback::settings::Settings;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Tokens generated per run.
const TOKENS: usize = 64;

/// Tokens after which the loop's buffers must have reached their size.
const WARM_UP: usize = 2;

/// Alternatives per token event, as `--format jsonl` asks for.
const ALTERNATIVES: usize = 5;

/// Allocations and reallocations so far, in every thread.
fn allocations() -> usize {
    let s = GLOBAL.stats();
    s.allocations + s.reallocations
}

/// Passes everything to `inner` and notes the allocation count at each token.
struct Probe<S> {
    inner: S,
    marks: Vec<usize>,
}

impl<S: Sink> Sink for Probe<S> {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.text(bytes)
    }

    fn token(&mut self, step: &Step<'_>) -> io::Result<()> {
        // `marks` was given room for every token, so this push never allocates.
        self.marks.push(allocations());
        self.inner.token(step)
    }

    fn statistics(&self) -> bool {
        self.inner.statistics()
    }
}

/// The parsed arguments of `talkback complete` with `extra` flags.
fn complete_args(extra: &[&str]) -> CompleteArgs {
    let mut argv = vec![
        "talkback",
        "complete",
        "Once upon a time, in a small village",
    ];
    argv.extend([
        "-n",
        "64",
        "--ignore-eos",
        "--seed",
        "1",
        "--repeat-penalty",
        "1.1",
    ]);
    argv.extend(extra);
    match Cli::try_parse_from(argv).map(|cli| cli.command) {
        Ok(Command::Complete(args)) => args,
        other => panic!("not a complete command: {other:?}"),
    }
}

fn load_model(args: &CompleteArgs) -> Model {
    let path = resolve_path(args.model.model.as_deref());
    assert!(
        path.is_file(),
        "the model {} is missing: run fixtures/fetch-model.sh (or scripts/setup.sh) first",
        path.display()
    );
    Model::load(&args.model, 0).expect("the model loads")
}

/// Runs one generation with `alternatives` per step through the sink that
/// `sink` makes for the request and the context size, as the program does;
/// returns the allocations between tokens and the sink.
fn allocations_per_token<S: Sink>(
    model: &Model,
    args: &CompleteArgs,
    alternatives: usize,
    sink: impl FnOnce(&Request<'_>, usize) -> S,
) -> (Vec<usize>, S) {
    let settings = Settings::new(&args.sampling, &args.generation, &args.model);
    let req = Request {
        config: settings.config().expect("valid settings"),
        seed: settings.seed,
        n_predict: settings.n_predict,
        stops: &settings.stops,
        ignore_eos: settings.ignore_eos,
        repeat_last_n: settings.repeat_last_n as usize,
        alternatives,
        engine: settings.sampler,
    };
    let prompt: Vec<LlamaToken> = model
        .tokenize_prompt(args.prompt.as_deref().unwrap_or_default(), false)
        .expect("the prompt tokenizes");
    let mut session = model.session(&args.model).expect("a context");
    let mut generator = Generator::new(model);
    let mut probe = Probe {
        inner: sink(&req, session.n_ctx()),
        marks: Vec::with_capacity(TOKENS + 1),
    };
    let outcome = generator
        .run(model, &mut session, &prompt, &req, &mut probe)
        .expect("the generation runs");

    assert_eq!(outcome.finish, Finish::Length);
    assert_eq!(outcome.tokens.len(), TOKENS);
    assert_eq!(probe.marks.len(), TOKENS);
    let per_token = probe.marks.windows(2).map(|w| w[1] - w[0]).collect();
    (per_token, probe.inner)
}

/// The steps after warm-up that allocated, with their counts.
fn allocating_steps(per_token: &[usize]) -> Vec<(usize, usize)> {
    per_token
        .iter()
        .enumerate()
        .skip(WARM_UP)
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| (i + 1, n))
        .collect()
}

fn main() {
    every_output_format_allocates_nothing_per_token_with_either_sampler();
    println!("alloc: no allocation per token after warm-up, for every format and sampler");
}

fn every_output_format_allocates_nothing_per_token_with_either_sampler() {
    // First make sure the counter moves at all, or a zero would prove nothing.
    let before = allocations();
    let probe: Vec<u8> = Vec::with_capacity(std::hint::black_box(32));
    assert_eq!(allocations(), before + 1);
    drop(probe);

    let model = load_model(&complete_args(&[]));
    let mut failures = Vec::new();
    let mut check = |what: String, per_token: &[usize]| {
        assert_eq!(per_token.len(), TOKENS - 1, "{what}");
        let steps = allocating_steps(per_token);
        if !steps.is_empty() {
            failures.push(format!(
                "{what}: (token, allocations) after warm-up {steps:?}; all: {per_token:?}"
            ));
        }
    };
    for engine in ["talkback", "llama.cpp"] {
        let args = complete_args(&["--sampler", engine]);

        let text = |_: &Request<'_>, _| TextSink::new(Vec::with_capacity(1 << 16));
        let (per_token, _) = allocations_per_token(&model, &args, 0, text);
        check(format!("--sampler {engine} --format text"), &per_token);

        let json = |req: &Request<'_>, n_ctx| CollectSink::new(&model, req, n_ctx);
        let (per_token, sink) = allocations_per_token(&model, &args, 0, json);
        check(format!("--sampler {engine} --format json"), &per_token);
        assert!(!sink.text.is_empty(), "--format json kept no text");

        // Room for every line, so that the output itself never grows.
        let jsonl = |req: &Request<'_>, n_ctx| {
            JsonlSink::new(Vec::with_capacity(1 << 20), &model, req, n_ctx)
        };
        let (per_token, mut sink) = allocations_per_token(&model, &args, ALTERNATIVES, jsonl);
        check(format!("--sampler {engine} --format jsonl"), &per_token);
        sink.flush_pending().expect("a Vec takes every write");
        check_events(&sink.into_inner(), engine == "talkback");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Checks that `out` holds one token event per token, each listing as many
/// alternatives as were asked for and survived (none without statistics),
/// so the counts above came from a sink that did its whole job.
fn check_events(out: &[u8], stats: bool) {
    let lines: Vec<&str> = std::str::from_utf8(out).expect("UTF-8").lines().collect();
    assert_eq!(lines.len(), TOKENS);
    for (i, line) in lines.iter().enumerate() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(event["event"], "token", "{line}");
        assert_eq!(event["index"], i, "{line}");
        let alternatives = event["alternatives"].as_array().map(Vec::len);
        let expected = stats.then(|| {
            let survivors = event["survivors"]["final"].as_u64().expect("a count");
            ALTERNATIVES.min(survivors as usize)
        });
        assert_eq!(alternatives, expected, "{line}");
    }
}
