//! The generation loop makes no heap allocation per token once warmed up.
//!
//! A counting global allocator wraps the system one, and a sink notes the
//! running count at every generated token, so the difference between two
//! tokens covers one whole turn of the loop: sampling, the token's text,
//! the stop-string stream, the sink, and decoding the token. It runs a real
//! 64-token generation with the default model. llama.cpp's own C++
//! allocations do not go through Rust's allocator and are not counted.

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
use talkback::output::TextSink;
use talkback::settings::Settings;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Tokens generated per run.
const TOKENS: usize = 64;

/// Tokens after which the loop's buffers must have reached their size.
const WARM_UP: usize = 2;

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

/// Runs one generation through `sink`; returns the allocations between tokens.
fn allocations_per_token<S: Sink>(model: &Model, args: &CompleteArgs, sink: S) -> Vec<usize> {
    let settings = Settings::new(&args.sampling, &args.generation, &args.model);
    let req = Request {
        config: settings.config().expect("valid settings"),
        seed: settings.seed,
        n_predict: settings.n_predict,
        stops: &settings.stops,
        ignore_eos: settings.ignore_eos,
        repeat_last_n: settings.repeat_last_n as usize,
        alternatives: 0,
        engine: settings.sampler,
    };
    let prompt: Vec<LlamaToken> = model.tokenize(
        args.prompt.as_deref().unwrap_or_default(),
        model.wants_bos(),
        false,
    );
    let mut session = model.session(&args.model).expect("a context");
    let mut generator = Generator::new(model);
    let mut probe = Probe {
        inner: sink,
        marks: Vec::with_capacity(TOKENS + 1),
    };
    let outcome = generator
        .run(model, &mut session, &prompt, &req, &mut probe)
        .expect("the generation runs");

    assert_eq!(outcome.finish, Finish::Length);
    assert_eq!(outcome.tokens.len(), TOKENS);
    assert_eq!(probe.marks.len(), TOKENS);
    probe.marks.windows(2).map(|w| w[1] - w[0]).collect()
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

#[test]
fn text_output_allocates_nothing_per_token_with_either_sampler() {
    // A single test in this file, so no other test allocates while it counts.
    // First make sure the counter moves at all, or a zero would prove nothing.
    let before = allocations();
    let probe: Vec<u8> = Vec::with_capacity(std::hint::black_box(32));
    assert_eq!(allocations(), before + 1);
    drop(probe);

    for engine in ["talkback", "llama.cpp"] {
        let args = complete_args(&["--sampler", engine]);
        let model = load_model(&args);
        let out = TextSink::new(Vec::with_capacity(1 << 16));
        let per_token = allocations_per_token(&model, &args, out);
        assert_eq!(per_token.len(), TOKENS - 1);
        assert_eq!(
            allocating_steps(&per_token),
            [],
            "--sampler {engine}: (token, allocations) after warm-up; all: {per_token:?}"
        );
    }
}
