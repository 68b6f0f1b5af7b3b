//! The first promises: the model answers, stops on its own end-of-turn
//! token, repeats itself for a seed, and honours `-n`.
//!
//! The capital question carries a system message of its own. SmolLM2's
//! template adds a default system turn when none is given, and with that
//! turn the quantized 135M model answers this question greedily in French
//! ("L'Étoile, la Marseillaise, ...") without naming Paris; any system
//! message replaces the default turn.

use talkback_tests::talkback;

const SYSTEM: &str = "Answer in English.";

#[test]
fn greedy_chat_knows_the_capital_and_ends_its_turn() {
    let run = talkback(&[
        "chat",
        "What's the capital of France?",
        "--system",
        SYSTEM,
        "--temp",
        "0",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v = run.json();
    let text = v["text"].as_str().expect("text");
    assert!(text.contains("Paris"), "reply: {text}");
    assert_eq!(v["finish_reason"], "end_of_turn", "{v}");
    assert!(
        !text.contains("<|im_end|>") && !text.contains("<|im_start|>"),
        "{text}"
    );
}

#[test]
fn greedy_chat_text_output_has_no_template_markers() {
    let run = talkback(&[
        "chat",
        "What's the capital of France?",
        "--system",
        SYSTEM,
        "--temp",
        "0",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let text = run.text();
    assert!(text.contains("Paris"), "reply: {text}");
    assert!(!text.contains("<|im_end|>"), "{text}");
    assert!(!text.contains("<|im_start|>"), "{text}");
    assert!(!text.contains("assistant\n"), "{text}");
}

#[test]
fn same_seed_gives_identical_bytes() {
    let args = [
        "complete",
        "Once upon a time, in a forest",
        "--temp",
        "0.8",
        "--seed",
        "1234",
        "-n",
        "40",
    ];
    let a = talkback(&args);
    let b = talkback(&args);
    assert_eq!(a.code, 0, "stderr: {}", a.stderr);
    assert_eq!(b.code, 0, "stderr: {}", b.stderr);
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);

    let other = talkback(&[
        "complete",
        "Once upon a time, in a forest",
        "--temp",
        "0.8",
        "--seed",
        "99",
        "-n",
        "40",
    ]);
    assert_ne!(
        a.stdout, other.stdout,
        "a different seed should change a 40-token story"
    );
}

#[test]
fn complete_stops_at_exactly_n_tokens() {
    let run = talkback(&[
        "complete",
        "Once upon a time, in a forest",
        "-n",
        "20",
        "--seed",
        "7",
        "--ignore-eos",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v = run.json();
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(20), "{v}");
    assert_eq!(v["generated_tokens"], 20);
    assert_eq!(v["finish_reason"], "length");
}
