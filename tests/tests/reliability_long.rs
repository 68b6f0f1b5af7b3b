//! Long runs: asking for far more tokens than a small context holds ends
//! with `context_full`, not an error or a crash.
//!
//! Memory over long runs is measured by a benchmark, not a test:
//! `scripts/bench-rss.sh` prints the peak RSS of a 200-token and a
//! 2000-token generation.

mod reliability_support;

use reliability_support::{no_crash, talkback};

#[test]
fn a_generation_longer_than_the_context_ends_context_full() {
    // A prompt of about a hundred tokens leaves room for about 150 more.
    let prompt = "The lighthouse keeper wrote in his log every night. ".repeat(10);
    let run = talkback(&[
        "complete",
        &prompt,
        "--ctx-size",
        "256",
        "-n",
        "100000",
        "--ignore-eos",
        "--seed",
        "11",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    no_crash(&run.stderr);
    let v = run.json();
    assert_eq!(v["finish_reason"], "context_full", "{v}");
    let prompt_tokens = v["prompt_tokens"].as_u64().expect("prompt_tokens");
    let generated = v["generated_tokens"].as_u64().expect("generated_tokens");
    assert!(generated >= 100, "only {generated} generated");
    // The context holds the prompt and every generated token but the
    // last, which is sampled and never decoded.
    assert_eq!(prompt_tokens + generated, 257, "{v}");
    // The finish is also reported on stderr, as one line.
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with("talkback: finished: context full"),
        "{}",
        run.stderr
    );
}
