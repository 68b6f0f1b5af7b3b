//! The firmware's replay as an ordinary program: reads `fixtures/` at run
//! time and prints the same lines the firmware prints, without the stack
//! figures. `check.sh` runs it on x86-64 and on wasm32-wasip1 and compares.
//!
//! Usage: `talkback-replay-wasi FIXTURES_DIR`; exit status 0 on success,
//! 1 when the fixtures cannot be read, 2 on a usage error.

#[path = "../../fixtures.rs"]
mod fixtures;
#[path = "../../src/replay.rs"]
mod replay;

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use sampler_core::{Candidate, Config, Order};

/// Lines to stdout; no stack figures.
struct Stdout(io::StdoutLock<'static>);

impl replay::Host for Stdout {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        // A closed stdout ends the comparison anyway; nothing to report here.
        let _ = writeln!(self.0, "{args}");
    }

    fn measure<R>(&mut self, f: impl FnOnce() -> R) -> (R, Option<usize>) {
        (f(), None)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir] = args.as_slice() else {
        eprintln!("usage: talkback-replay-wasi FIXTURES_DIR");
        return ExitCode::from(2);
    };
    match run(Path::new(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("talkback-replay-wasi: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path) -> Result<(), fixtures::Error> {
    let runs = fixtures::all_runs(dir)?;
    let cases = fixtures::all_cases(dir)?;

    let vectors: Vec<replay::Vector<'_>> = runs
        .iter()
        .map(|r| {
            let s = r.settings;
            replay::Vector {
                name: &r.name,
                logits: &r.logits,
                shift: r.shift,
                config: Config {
                    temperature: s.temperature,
                    top_k: s.top_k,
                    top_p: s.top_p,
                    min_p: s.min_p,
                    repeat_penalty: s.repeat_penalty,
                    presence_penalty: s.presence_penalty,
                    frequency_penalty: s.frequency_penalty,
                    order: Order::TALKBACK,
                },
                order: &r.order,
                seed: r.seed,
                steps: r.steps,
                window: r.window,
                bias: &r.bias,
            }
        })
        .collect();
    let stops: Vec<Vec<&[u8]>> = cases
        .iter()
        .map(|c| c.stops.iter().map(Vec::as_slice).collect())
        .collect();
    let pieces: Vec<Vec<&[u8]>> = cases
        .iter()
        .map(|c| c.pieces.iter().map(Vec::as_slice).collect())
        .collect();
    let cases: Vec<replay::Case<'_>> = cases
        .iter()
        .zip(stops.iter().zip(&pieces))
        .map(|(c, (stops, pieces))| replay::Case {
            name: &c.name,
            stops,
            pieces,
        })
        .collect();

    let vocab = runs.iter().map(|r| r.logits.len()).max().unwrap_or(1);
    let buffers = replay::Buffers {
        scratch: &mut vec![Candidate::default(); vocab],
        rotated: &mut vec![0.0; vocab],
    };
    let mut out = Stdout(io::stdout().lock());
    replay::all(&mut out, &vectors, &cases, buffers);
    out.0.flush().map_err(|e| format!("stdout: {e}"))
}
