//! End to end: the `talkback` binary with each sampler, alternating run by run.
//!
//! Each run is `talkback complete PROMPT -n N --ignore-eos --format json` with
//! the same model, settings, seed and threads; only `--sampler` changes. The
//! JSON timings give tokens per second (generation only, the prompt and model
//! load left out) and the time spent inside the sampler.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use serde_json::Value;

use crate::cases::machine;
use crate::input::{workspace_root, PROMPT};
use crate::measure::median;

/// Most of a decode step's time the sampler may take, in percent.
const TARGET_SHARE_PCT: f64 = 0.1;

/// Arguments of `e2e`.
#[derive(Debug, Args)]
pub struct E2eArgs {
    /// Runs per sampler (1..=100).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// Tokens generated per run (2..=4096): the first comes from the prompt's
    /// step, so speed needs a second.
    #[arg(short = 'n', long, default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(2..=4096))]
    n_predict: u32,

    /// Decoding threads, the same for every run [default: all cores].
    #[arg(short = 't', long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,

    /// The talkback binary [default: the one built beside this program,
    /// else target/release/talkback].
    #[arg(long, value_name = "PATH")]
    talkback: Option<PathBuf>,

    /// GGUF model passed to talkback [default: talkback's own default].
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
}

/// One run's numbers.
struct Run {
    tokens_per_s: f64,
    sampling_ms_per_token: f64,
    share: f64,
}

/// Runs both samplers alternately; returns tokens per second and the sampler's share.
///
/// # Errors
///
/// - the binary is missing or a run fails or prints no timings.
pub fn run(args: &E2eArgs) -> Result<String> {
    let bin = args.talkback.clone().unwrap_or_else(|| {
        let here = std::env::current_exe().ok();
        default_binary(here.as_deref().and_then(Path::parent), &workspace_root())
    });
    if !bin.is_file() {
        bail!(
            "no talkback binary at {}: build it with cargo build --release -p talkback",
            bin.display()
        );
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    });
    let engines = ["talkback", "llama.cpp"];
    let mut results: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for i in 0..args.runs as usize {
        // Alternate which sampler goes first, so drift hits both alike.
        for j in 0..2 {
            let e = (i + j) % 2;
            let engine = engines.get(e).copied().unwrap_or("talkback");
            note!(
                "talkback-bench: run {} of {}, --sampler {engine}",
                i + 1,
                args.runs
            );
            let r = one_run(&bin, args, threads, engine)?;
            if let Some(list) = results.get_mut(e) {
                list.push(r);
            }
        }
    }

    let mut out = String::new();
    writeln!(out, "talkback-bench e2e")?;
    writeln!(out, "machine: {}", machine())?;
    writeln!(
        out,
        "runs:    {} per sampler, alternating; complete {PROMPT:?} -n {} --ignore-eos, \
         seed 1, default settings, --threads {threads}",
        args.runs, args.n_predict
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<12} {:>14} {:>22} {:>26}",
        "sampler", "tokens/s", "sampling ms/token", "sampler share of a step"
    )?;
    let mut medians = [(0.0f64, 0.0f64); 2];
    for ((name, runs), m) in engines.iter().zip(&results).zip(medians.iter_mut()) {
        let tps: Vec<f64> = runs.iter().map(|r| r.tokens_per_s).collect();
        let ms: Vec<f64> = runs.iter().map(|r| r.sampling_ms_per_token).collect();
        let share: Vec<f64> = runs.iter().map(|r| r.share).collect();
        *m = (median(&tps), median(&share));
        writeln!(
            out,
            "{name:<12} {:>14.2} {:>22.4} {:>25.3}%",
            median(&tps),
            median(&ms),
            median(&share) * 100.0
        )?;
    }
    let [(ours, our_share), (theirs, their_share)] = medians;
    let [our_runs, their_runs] = &results;
    let speed = paired_ratio(our_runs, their_runs);
    writeln!(out)?;
    writeln!(
        out,
        "tokens/s, talkback / llama.cpp: {:.3}x (medians); {speed:.3}x \
         (median of the {} run-by-run ratios)",
        ours / theirs,
        our_runs.len().min(their_runs.len())
    )?;
    writeln!(out)?;
    writeln!(out, "targets")?;
    let checks = [
        (
            "tokens/s with talkback >= with llama.cpp".to_string(),
            format!("{speed:.3}x (run by run)"),
            speed >= 1.0,
        ),
        (
            format!("sampler share of a step < {TARGET_SHARE_PCT}%"),
            format!(
                "{:.3}% (llama.cpp's chain {:.3}%)",
                our_share * 100.0,
                their_share * 100.0
            ),
            our_share * 100.0 < TARGET_SHARE_PCT,
        ),
    ];
    for (what, value, met) in checks {
        let mark = if met { "met   " } else { "MISSED" };
        writeln!(out, "  {mark} {what:<46} {value}")?;
    }
    Ok(out)
}

/// The median over `i` of `ours[i] / theirs[i]` in tokens per second.
///
/// Run `i` of each sampler ran back to back with the other's, so a pair
/// shares the machine's state at the time; a slow spell on this shared
/// machine moves both runs of a pair and leaves their ratio, where it
/// would move one sampler's median more than the other's.
fn paired_ratio(ours: &[Run], theirs: &[Run]) -> f64 {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a.tokens_per_s / b.tokens_per_s)
        .collect();
    median(&ratios)
}

/// The talkback binary cargo built beside this one in `folder`, wherever
/// `CARGO_TARGET_DIR` put them both; else `target/release/talkback` under
/// the checkout `root`.
fn default_binary(folder: Option<&Path>, root: &Path) -> PathBuf {
    let name = format!("talkback{}", std::env::consts::EXE_SUFFIX);
    folder
        .map(|f| f.join(&name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| root.join("target").join("release").join(name))
}

fn one_run(bin: &PathBuf, args: &E2eArgs, threads: u32, engine: &str) -> Result<Run> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "complete",
        PROMPT,
        "--ignore-eos",
        "--format",
        "json",
        "--seed",
        "1",
    ])
    .args(["-n", &args.n_predict.to_string()])
    .args(["--threads", &threads.to_string()])
    .args(["--sampler", engine]);
    if let Some(model) = &args.model {
        cmd.arg("--model").arg(model);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "talkback --sampler {engine} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("talkback printed no JSON")?;
    let num = |ptr: &str| {
        v.pointer(ptr)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("talkback's JSON has no {ptr}"))
    };
    let tokens = num("/generated_tokens")?;
    let generation_ms = num("/timings/generation_ms")?;
    let sampling_ms = num("/timings/sampling_ms")?;
    if tokens < 2.0 || generation_ms <= 0.0 {
        bail!("talkback --sampler {engine} decoded no generated token");
    }
    Ok(Run {
        tokens_per_s: num("/timings/tokens_per_second")?,
        sampling_ms_per_token: sampling_ms / tokens,
        share: sampling_ms / generation_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_at(tokens_per_s: f64) -> Run {
        Run {
            tokens_per_s,
            sampling_ms_per_token: 0.0,
            share: 0.0,
        }
    }

    #[test]
    fn paired_ratio_is_the_median_of_the_pairs() {
        // Slow spells halve llama.cpp's second run and both runs of the
        // third pair: the medians' ratio reads 100 / 50 = 2.0, the pairs
        // 1.05, 2.0 and 1.04, whose median is 1.05.
        let ours = [100.0, 100.0, 50.0].map(run_at);
        let theirs = [95.0, 50.0, 48.0].map(run_at);
        let r = paired_ratio(&ours, &theirs);
        assert!((r - 100.0 / 95.0).abs() < 1e-12, "{r}");
        assert!(paired_ratio(&[], &[]).is_nan());
    }

    #[test]
    fn the_default_binary_is_the_one_built_beside_the_bench() {
        let dir = std::env::temp_dir().join(format!("bench-e2e-{}", std::process::id()));
        let beside = dir.join("elsewhere").join("release");
        std::fs::create_dir_all(&beside).unwrap();
        let root = dir.join("checkout");
        let fallback = root.join("target").join("release").join("talkback");
        assert_eq!(default_binary(Some(&beside), &root), fallback);
        assert_eq!(default_binary(None, &root), fallback);
        std::fs::write(beside.join("talkback"), b"").unwrap();
        assert_eq!(
            default_binary(Some(&beside), &root),
            beside.join("talkback")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
