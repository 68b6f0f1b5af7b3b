//! `chat` and `complete` on the real model: the three output formats agree
//! with each other, and stop strings, `-n`, `--ignore-eos`, the context
//! size, `-v` and piped stdin do what their help says.

// Helpers outside #[test] functions report failure by panicking too.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use serde_json::Value;
use talkback_tests::{ok, tb, tb_stdin, Run, TempFile};

/// The default model's vocabulary size.
const VOCAB: u64 = 49_152;

const STORY: &str = "Once upon a time, in a forest";

/// stdout as JSON lines.
fn events(run: &Run) -> Vec<Value> {
    run.text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn string(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(int)
        .collect()
}

/// Checks one token event's fields and their internal consistency.
fn check_token_event(e: &Value, index: usize) {
    assert_eq!(e["event"], "token", "{e}");
    assert_eq!(int(&e["index"]), index as u64, "{e}");
    let id = int(&e["id"]);
    assert!(id < VOCAB, "{e}");
    let piece = string(&e["piece"]);
    let bytes: Vec<u8> = ids(&e["piece_bytes"])
        .into_iter()
        .map(|b| u8::try_from(b).expect("a byte"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), piece, "{e}");

    let logprob = num(&e["logprob"]);
    assert!(logprob <= 0.0 && logprob.is_finite(), "{e}");
    let entropy = num(&e["entropy"]);
    assert!(entropy >= 0.0 && entropy.is_finite(), "{e}");

    // Every stage can only remove tokens, and the drawn token survived all.
    let s = &e["survivors"];
    let counts: Vec<u64> = ["vocab", "top_k", "top_p", "min_p", "final"]
        .iter()
        .map(|k| int(&s[*k]))
        .collect();
    assert_eq!(counts[0], VOCAB, "{e}");
    assert!(counts[1] <= 40, "default top-k is 40: {e}");
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{e}");
    assert!(counts[4] >= 1, "{e}");
    if counts[4] == 1 {
        assert_eq!(logprob, 0.0, "a lone survivor is certain: {e}");
        assert_eq!(entropy, 0.0, "{e}");
    }

    let alts = e["alternatives"].as_array().expect("alternatives");
    assert!(!alts.is_empty() && alts.len() <= 5, "{e}");
    assert!(alts.len() as u64 <= counts[4], "{e}");
    let alt_logprobs: Vec<f64> = alts.iter().map(|a| num(&a["logprob"])).collect();
    assert!(alt_logprobs.windows(2).all(|w| w[0] >= w[1]), "{e}");
    assert!(
        alt_logprobs[0] >= logprob,
        "the top alternative is the likeliest: {e}"
    );
    for a in alts {
        string(&a["piece"]);
        if int(&a["id"]) == id {
            assert_eq!(num(&a["logprob"]), logprob, "{e}");
        }
    }
}

/// Checks that JSON-lines output matches the JSON object of the same run:
/// one event per token, then a summary equal to the object but for timings.
fn check_jsonl_against_json(jsonl: &Run, json: &Value, text: &[u8]) {
    let events = events(jsonl);
    let (summary, tokens) = events.split_last().expect("a summary event");
    assert_eq!(summary["event"], "summary", "{summary}");
    let n = tokens.len();
    assert_eq!(int(&summary["generated_tokens"]), n as u64);
    for (i, e) in tokens.iter().enumerate() {
        check_token_event(e, i);
    }

    let event_ids: Vec<u64> = tokens.iter().map(|e| int(&e["id"])).collect();
    assert_eq!(
        event_ids,
        ids(&json["tokens"]),
        "ids differ from --format json"
    );
    assert_eq!(ids(&summary["tokens"]), ids(&json["tokens"]));
    let event_logprobs: Vec<&Value> = tokens.iter().map(|e| &e["logprob"]).collect();
    let json_logprobs: Vec<&Value> = json["logprobs"]
        .as_array()
        .expect("logprobs")
        .iter()
        .collect();
    assert_eq!(event_logprobs, json_logprobs);
    for key in [
        "text",
        "finish_reason",
        "prompt_tokens",
        "settings",
        "logprobs",
    ] {
        assert_eq!(summary[key], json[key], "summary field {key}");
    }

    // The released text, event by event, is the whole text; with no stop
    // string it is also every token's bytes in order.
    let released: String = tokens.iter().map(|e| string(&e["text"])).collect();
    assert_eq!(released.as_bytes(), text);
    if json["finish_reason"] != "stop_string" {
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|e| ids(&e["piece_bytes"]))
            .map(|b| u8::try_from(b).expect("a byte"))
            .collect();
        assert_eq!(bytes, text, "pieces do not add up to the text");
        if text.is_ascii() {
            let pieces: String = tokens.iter().map(|e| string(&e["piece"])).collect();
            assert_eq!(pieces.as_bytes(), text);
        }
    }
}

/// Checks the fields of `--format json`.
fn check_json_fields(v: &Value, seed: u64) {
    string(&v["text"]);
    let tokens = ids(&v["tokens"]);
    assert!(tokens.iter().all(|&t| t < VOCAB), "{v}");
    assert_eq!(v["logprobs"].as_array().map(Vec::len), Some(tokens.len()));
    assert_eq!(int(&v["generated_tokens"]), tokens.len() as u64);
    assert!(int(&v["prompt_tokens"]) > 0);
    let s = &v["settings"];
    assert_eq!(int(&s["seed"]), seed, "{s}");
    assert_eq!(s["sampler"], "talkback");
    assert_eq!(num(&s["temperature"]) as f32, 0.8);
    assert_eq!(int(&s["top_k"]), 40);
    assert_eq!(num(&s["top_p"]) as f32, 0.95);
    assert_eq!(num(&s["min_p"]) as f32, 0.05);
    assert_eq!(int(&s["ctx_size"]), 4096);
    assert_eq!(
        s["sampler_order"],
        serde_json::json!(["temp", "top-k", "top-p", "min-p"])
    );
    let t = &v["timings"];
    for key in ["prompt_ms", "generation_ms", "sampling_ms"] {
        let x = num(&t[key]);
        assert!(x >= 0.0 && x.is_finite(), "timings.{key} = {x}");
    }
    assert!(num(&t["generation_ms"]) >= num(&t["sampling_ms"]), "{t}");
    check_speed(v);
}

/// Checks that `tokens_per_second` counts the generated tokens decoded.
fn check_speed(v: &Value) {
    let t = &v["timings"];
    let n = int(&v["generated_tokens"]);
    // The first token comes from the prompt's step; the last is decoded
    // only when another (the end of the turn) was sampled after it. A
    // character cut off at the end of the turn can still complete a stop
    // string, and a run stopped from outside stops between two steps.
    let fewer = n.saturating_sub(1);
    let allowed = match v["finish_reason"].as_str() {
        Some("end_of_turn") => vec![n],
        Some("length" | "context_full") => vec![fewer],
        _ => vec![fewer, n],
    };
    if t["tokens_per_second"].is_null() {
        assert!(allowed.contains(&0), "no speed for {n} tokens: {v}");
        return;
    }
    let decoded = num(&t["tokens_per_second"]) * num(&t["generation_ms"]) / 1e3;
    let whole = decoded.round();
    assert!(whole >= 1.0, "{decoded} decoded: {t}");
    assert!(
        (decoded - whole).abs() < 1e-6 * whole,
        "{decoded} decoded: {t}"
    );
    assert!(
        allowed.contains(&(whole as u64)),
        "{whole} decoded of {n}: {v}"
    );
}

/// Runs one request in all three formats and checks that they agree.
fn formats_agree(args: &[&str], seed: u64) -> Value {
    let text = tb(&[args, &["--format", "text"]].concat());
    ok(&text);
    let json = tb(&[args, &["--format", "json"]].concat());
    ok(&json);
    let v = json.json();
    check_json_fields(&v, seed);
    assert_eq!(string(&v["text"]).as_bytes(), text.stdout, "text vs json");
    let jsonl = tb(&[args, &["--format", "jsonl"]].concat());
    ok(&jsonl);
    check_jsonl_against_json(&jsonl, &v, &text.stdout);
    v
}

#[test]
fn complete_prints_the_same_run_as_text_json_and_jsonl() {
    let v = formats_agree(&["complete", STORY, "-n", "24", "--seed", "11"], 11);
    assert!(!string(&v["text"]).is_empty());
    assert!(int(&v["generated_tokens"]) <= 24);
}

#[test]
fn chat_prints_the_same_run_as_text_json_and_jsonl() {
    let args = [
        "chat",
        "Write a sentence about rivers.",
        "--system",
        "You are a poet.",
        "-n",
        "24",
        "--seed",
        "5",
    ];
    let v = formats_agree(&args, 5);
    let text = string(&v["text"]);
    assert!(!text.is_empty());
    assert!(!text.contains("<|im_"), "{text}");
}

#[test]
fn stop_strings_end_the_output_before_them() {
    let base = ["complete", STORY, "-n", "40", "--seed", "3", "--ignore-eos"];
    let free = tb(&[&base[..], &["--format", "json"]].concat());
    ok(&free);
    let full = string(&free.json()["text"]).to_owned();
    assert!(full.is_ascii() && full.len() > 60, "{full:?}");

    // Two stops taken from the free run: the earlier one must win, and
    // the text before it is the free run's text up to there, since stop
    // strings do not change sampling.
    let first = full.get(20..27).expect("ascii");
    let later = full.get(45..52).expect("ascii");
    let cut = full.find(first).expect("first stop");
    assert!(full.find(later).expect("later stop") > cut);

    let run = tb(&[
        &base[..],
        &["--stop", later, "--stop", "never appears", "--stop", first],
    ]
    .concat());
    ok(&run);
    assert_eq!(run.text(), &full[..cut]);
    assert!(!run.text().contains(first));

    let json = tb(&[&base[..], &["--stop", first, "--format", "json"]].concat());
    ok(&json);
    let v = json.json();
    assert_eq!(v["finish_reason"], "stop_string");
    assert_eq!(v["text"], &full[..cut]);
    assert_eq!(v["settings"]["stops"], serde_json::json!([first]));
    let generated = int(&v["generated_tokens"]);
    assert!(generated < 40, "{v}");

    let jsonl = tb(&[&base[..], &["--stop", first, "--format", "jsonl"]].concat());
    ok(&jsonl);
    check_jsonl_against_json(&jsonl, &v, &full.as_bytes()[..cut]);
}

#[test]
fn a_stop_string_may_start_with_a_hyphen() {
    let run = tb(&[
        "complete", "1-2-3-4", "-n", "4", "--seed", "1", "--stop", "-5", "--format", "json",
    ]);
    ok(&run);
    let v = run.json();
    assert_eq!(v["settings"]["stops"], serde_json::json!(["-5"]));
    assert!(!string(&v["text"]).contains("-5"), "{v}");
}

#[test]
fn a_stop_string_only_a_control_token_spells_is_warned_of() {
    // The model may end a turn with <|im_end|> or open one with
    // <|im_start|>; neither prints, so a stop string never sees them.
    for cmd in ["chat", "complete"] {
        let run = tb(&[
            cmd,
            "Hi",
            "-n",
            "2",
            "--seed",
            "1",
            "--stop",
            "<|im_start|>",
            "--stop",
            "<|im_",
            "--stop",
            "Hi",
            "--stop",
            "<|im_start|>",
            "--stop",
            "x<|im_end|>",
        ]);
        assert_eq!(run.code, 0, "stderr: {}", run.stderr);
        assert_eq!(
            run.stderr.lines().collect::<Vec<_>>(),
            [
                "talkback: warning: --stop \"<|im_start|>\" never matches where the model \
                 generates token 1 (\"<|im_start|>\"), a control token that prints nothing: \
                 stop strings see only printed text (end-of-generation tokens stop the run \
                 themselves, unless --ignore-eos)",
                "talkback: warning: --stop \"x<|im_end|>\" never matches where the model \
                 generates token 2 (\"<|im_end|>\"), a control token that prints nothing: \
                 stop strings see only printed text (end-of-generation tokens stop the run \
                 themselves, unless --ignore-eos)"
            ],
            "{cmd}"
        );
    }
}

#[test]
fn n_caps_chat_and_complete() {
    for cmd in ["chat", "complete"] {
        let run = tb(&[
            cmd,
            "Tell me a long story about a dragon.",
            "-n",
            "6",
            "--ignore-eos",
            "--seed",
            "2",
            "--format",
            "json",
        ]);
        ok(&run);
        let v = run.json();
        assert_eq!(int(&v["generated_tokens"]), 6, "{cmd}: {v}");
        assert_eq!(v["finish_reason"], "length", "{cmd}");
        assert_eq!(int(&v["settings"]["n_predict"]), 6);
    }
}

/// Runs `base` until its turn ends, then again with `--ignore-eos` and a cap
/// five tokens further; returns both JSON objects.
fn past_the_end_of_turn(base: &[&str]) -> (Value, Value) {
    let ended = tb(&[base, &["-n", "40", "--format", "json"]].concat());
    ok(&ended);
    let ended = ended.json();
    assert_eq!(ended["finish_reason"], "end_of_turn", "{ended}");
    let short = int(&ended["generated_tokens"]);
    assert!(short < 30, "{ended}");

    let n = (short + 5).to_string();
    let longer = tb(&[base, &["--ignore-eos", "-n", &n, "--format", "json"]].concat());
    ok(&longer);
    let longer = longer.json();
    assert_eq!(longer["finish_reason"], "length", "{longer}");
    assert_eq!(int(&longer["generated_tokens"]), short + 5, "{longer}");
    assert_eq!(longer["settings"]["ignore_eos"], true);
    (ended, longer)
}

const CAPITAL: [&str; 4] = [
    "chat",
    "What's the capital of France?",
    "--system",
    "Answer in English.",
];

#[test]
fn ignore_eos_keeps_going_where_the_turn_would_end() {
    past_the_end_of_turn(&[&CAPITAL[..], &["--temp", "0.7", "--seed", "3"]].concat());
}

/// Greedy with `--ignore-eos` biases the end-of-generation ids, which must
/// not change the tokens before the turn would have ended.
#[test]
fn greedy_ignore_eos_continues_the_same_greedy_reply() {
    let (ended, longer) = past_the_end_of_turn(&[&CAPITAL[..], &["--temp", "0"]].concat());
    let (short, long) = (ids(&ended["tokens"]), ids(&longer["tokens"]));
    assert_eq!(
        long[..short.len()],
        short[..],
        "greedy runs share their start"
    );
    assert!(string(&longer["text"]).starts_with(string(&ended["text"])));
}

#[test]
fn a_full_context_ends_the_run_with_exit_0() {
    let run = tb(&[
        "complete",
        STORY,
        "--ctx-size",
        "32",
        "--ignore-eos",
        "--seed",
        "9",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v = run.json();
    assert_eq!(v["finish_reason"], "context_full", "{v}");
    // The context holds the prompt and every generated token but the last,
    // which is drawn from the full context and never decoded.
    let total = int(&v["prompt_tokens"]) + int(&v["generated_tokens"]);
    assert_eq!(total, 33, "{v}");
    assert!(run.stderr.contains("context full"), "{}", run.stderr);
}

#[test]
fn a_prompt_longer_than_the_context_fails_with_both_lengths() {
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(5);
    for cmd in ["complete", "chat"] {
        let probe = tb(&[cmd, &prompt, "-n", "1", "--format", "json"]);
        ok(&probe);
        let len = int(&probe.json()["prompt_tokens"]);
        assert!(len > 40, "{cmd}: {len}");

        let run = tb(&[cmd, &prompt, "--ctx-size", "40", "-n", "4"]);
        assert_eq!(run.code, 1, "{cmd}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{cmd}: {}", run.text());
        assert!(run.stderr.starts_with("talkback: "), "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
        let e = &run.stderr;
        assert!(e.contains(&format!(" {len} tokens")), "{cmd}: {e}");
        assert!(e.contains(" 40"), "{cmd}: {e}");
    }
}

/// The seed out of `-v`'s settings line.
fn seed_in(stderr: &str) -> u64 {
    let at = stderr
        .find("seed ")
        .unwrap_or_else(|| panic!("no seed in: {stderr}"));
    stderr[at + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seed number in: {stderr}"))
}

#[test]
fn verbose_shows_the_settings_and_a_random_seed_that_repeats_the_run() {
    let args = [
        "complete", STORY, "-n", "30", "--temp", "1.1", "--stop", "zebra",
    ];
    let first = tb(&[&["-v"], &args[..]].concat());
    assert_eq!(first.code, 0, "stderr: {}", first.stderr);
    let e = &first.stderr;
    for part in [
        "temp 1.1",
        "top-k 40",
        "top-p 0.95",
        "min-p 0.05",
        "n 30",
        "zebra",
    ] {
        assert!(e.contains(part), "{part} missing from: {e}");
    }
    assert!(
        !first.text().contains("top-k 40"),
        "settings leaked to stdout"
    );
    let seed = seed_in(e);

    let again = tb(&[&args[..], &["--seed", &seed.to_string()]].concat());
    ok(&again);
    assert!(!again.stdout.is_empty());
    assert_eq!(
        again.stdout, first.stdout,
        "seed {seed} did not repeat the run"
    );

    let other = tb(&[&["-v"], &args[..]].concat());
    assert_eq!(other.code, 0, "stderr: {}", other.stderr);
    assert_ne!(seed_in(&other.stderr), seed, "two random seeds were equal");
}

#[test]
fn speed_counts_only_the_tokens_the_model_decoded() {
    // -n 1 takes its one token from the prompt's logits: no decode to time.
    let one = tb(&[
        "complete", STORY, "-n", "1", "--seed", "3", "-v", "--format", "json",
    ]);
    assert_eq!(one.code, 0, "stderr: {}", one.stderr);
    let v = one.json();
    assert_eq!(int(&v["generated_tokens"]), 1);
    assert!(v["timings"]["tokens_per_second"].is_null(), "{v}");
    let line = one.stderr.lines().find(|l| l.contains("finished: "));
    let line = line.unwrap_or_else(|| panic!("no finished line: {}", one.stderr));
    assert!(line.contains("1 generated, sampling "), "{line}");
    assert!(!line.contains("tokens/s"), "{line}");

    // Four tokens at -n: three decodes, whose time sets the speed.
    let four = tb(&[
        "complete",
        STORY,
        "-n",
        "4",
        "--ignore-eos",
        "--seed",
        "3",
        "-v",
        "--format",
        "json",
    ]);
    assert_eq!(four.code, 0, "stderr: {}", four.stderr);
    let v = four.json();
    assert_eq!(int(&v["generated_tokens"]), 4);
    assert_eq!(v["finish_reason"], "length");
    check_speed(&v);
    assert!(four.stderr.contains("4 generated, "), "{}", four.stderr);
    assert!(
        four.stderr.contains(" tokens/s, sampling "),
        "{}",
        four.stderr
    );
}

#[test]
fn verbose_shows_a_given_seed() {
    let run = tb(&[
        "chat", "Hi", "-v", "-n", "3", "--seed", "4242", "--format", "json",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(seed_in(&run.stderr), 4242);
    assert_eq!(int(&run.json()["settings"]["seed"]), 4242);
}

#[test]
fn very_verbose_logs_on_a_pipe_carry_no_colour_codes() {
    let run = tb(&["complete", "Hi", "-vv", "-n", "1", "--seed", "1"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    // llama.cpp's own logs show at -vv; escape codes would garble a log file.
    assert!(run.stderr.contains("llama_model_loader"), "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
}

#[test]
fn piped_stdin_is_the_text_for_complete() {
    let args = ["complete", "-n", "12", "--seed", "8", "--format", "json"];
    let piped = tb_stdin(&args, Some(STORY.as_bytes()));
    ok(&piped);
    let given = tb(&[&args[..1], &[STORY], &args[1..]].concat());
    ok(&given);
    let (p, g) = (piped.json(), given.json());
    assert_eq!(p["tokens"], g["tokens"]);
    assert_eq!(p["prompt_tokens"], g["prompt_tokens"]);
    assert_eq!(p["text"], g["text"]);
}

#[test]
fn a_byte_order_mark_starting_stdin_is_dropped() {
    let args = ["complete", "-n", "4", "--seed", "8", "--format", "json"];
    let marked = tb_stdin(&args, Some(format!("\u{feff}{STORY}").as_bytes()));
    ok(&marked);
    let plain = tb_stdin(&args, Some(STORY.as_bytes()));
    ok(&plain);
    let (m, p) = (marked.json(), plain.json());
    assert_eq!(m["prompt_tokens"], p["prompt_tokens"]);
    assert_eq!(m["tokens"], p["tokens"]);

    let chat = ["chat", "--render-only"];
    let marked = tb_stdin(&chat, Some("\u{feff}Hi there\n".as_bytes()));
    ok(&marked);
    assert!(
        marked.text().contains("user\nHi there<|im_end|>"),
        "{}",
        marked.text()
    );
    assert!(!marked.text().contains('\u{feff}'), "{}", marked.text());

    // Only the first mark goes, and offsets in errors count it.
    let bad = tb_stdin(&["complete", "-n", "1"], Some(b"\xef\xbb\xbfab\xff"));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("(invalid byte at offset 5)"),
        "{}",
        bad.stderr
    );
}

#[test]
fn piped_stdin_is_one_message_for_chat() {
    let message = "First line of the question.\nSecond line: what is this?";
    let args = [
        "chat",
        "--system",
        "Be brief.",
        "-n",
        "8",
        "--seed",
        "8",
        "--format",
        "json",
    ];
    let piped = tb_stdin(&args, Some(message.as_bytes()));
    ok(&piped);
    let given = tb(&[&args[..1], &[message], &args[1..]].concat());
    ok(&given);
    let (p, g) = (piped.json(), given.json());
    assert_eq!(p["tokens"], g["tokens"]);
    assert_eq!(p["prompt_tokens"], g["prompt_tokens"]);

    let rendered = tb_stdin(
        &["chat", "--system", "S", "--render-only"],
        Some(message.as_bytes()),
    );
    ok(&rendered);
    let want = format!(
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{message}<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(rendered.text(), want);
}

#[test]
fn empty_or_invalid_stdin_is_a_usage_error() {
    let empty = tb_stdin(&["complete", "-n", "2"], Some(b""));
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    assert!(empty.stdout.is_empty());
    assert!(empty.stderr.contains("empty"), "{}", empty.stderr);

    // As the same bytes given as an argument are.
    let bad = tb_stdin(&["complete", "-n", "2"], Some(b"ok \xff\xfe"));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stdout.is_empty());
    assert!(bad.stderr.contains("UTF-8"), "{}", bad.stderr);
    assert!(bad.stderr.contains("offset 3"), "{}", bad.stderr);
}

#[test]
fn llama_cpp_sampler_stops_at_n_and_reports_no_statistics() {
    let args = [
        "complete",
        STORY,
        "--sampler",
        "llama.cpp",
        "-n",
        "9",
        "--ignore-eos",
    ];
    let json = tb(&[&args[..], &["--seed", "4", "--format", "json"]].concat());
    ok(&json);
    let v = json.json();
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(ids(&v["tokens"]).len(), 9);
    assert_eq!(v["settings"]["sampler"], "llama.cpp");
    assert!(
        v["logprobs"]
            .as_array()
            .expect("logprobs")
            .iter()
            .all(Value::is_null),
        "{v}"
    );

    let jsonl = tb(&[&args[..], &["--seed", "4", "--format", "jsonl"]].concat());
    ok(&jsonl);
    let events = events(&jsonl);
    assert_eq!(events.len(), 10);
    for e in &events[..9] {
        for key in ["logprob", "entropy", "survivors", "alternatives"] {
            assert!(e[key].is_null(), "{key} should be null: {e}");
        }
        string(&e["piece"]);
    }
    let event_ids: Vec<u64> = events[..9].iter().map(|e| int(&e["id"])).collect();
    assert_eq!(event_ids, ids(&v["tokens"]), "same seed, same tokens");

    // Greedy picks are the same whichever sampler makes them.
    let greedy = |sampler: &str| {
        let run = tb(&[
            "complete",
            STORY,
            "--temp",
            "0",
            "-n",
            "8",
            "--sampler",
            sampler,
        ]);
        ok(&run);
        run.stdout
    };
    assert_eq!(greedy("llama.cpp"), greedy("talkback"));
}

#[test]
fn llama_cpp_sampler_refuses_a_step_its_divisions_overflow() {
    // llama.cpp divides each logit by the temperature: at 1e-45 every
    // logit became infinite and the text was noise (`......`).
    let args = ["complete", STORY, "--sampler", "llama.cpp", "-n", "4"];
    let tiny = tb(&[&args[..], &["--temp", "1e-45"]].concat());
    assert_eq!(tiny.code, 1, "{}", tiny.stderr);
    assert!(tiny.stdout.is_empty(), "{}", tiny.text());
    assert!(
        tiny.stderr.starts_with(
            "talkback: --sampler llama.cpp divides each logit by the temperature, and at \
             step 0 a logit of "
        ),
        "{}",
        tiny.stderr
    );
    // A small temperature that the division stands is sampled, and ours
    // takes the tiny one too.
    ok(&tb(&[&args[..], &["--temp", "1e-30"]].concat()));
    ok(&tb(&["complete", STORY, "-n", "4", "--temp", "1e-45"]));

    // Its penalties run first: a repetition penalty of 1e-45 divides a
    // repeated token's logit past the float range.
    let penalty = [
        "--repeat-penalty",
        "1e-45",
        "--top-k",
        "0",
        "--top-p",
        "1",
        "--min-p",
        "0",
    ];
    // Seeded: the fault shows only once a generated token comes again.
    let seeded = ["--temp", "1", "--seed", "1"];
    let run = tb(&[&args[..], &penalty[..], &seeded[..]].concat());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the penalties take the logit of token ")
            && run
                .stderr
                .contains(" to inf, which its chain cannot sample"),
        "{}",
        run.stderr
    );
    // Greedy takes that +inf as the largest logit, as ours does.
    let greedy = |sampler: &str| {
        let run = tb(&[
            "complete",
            STORY,
            "--sampler",
            sampler,
            "--temp",
            "0",
            "-n",
            "8",
            penalty[0],
            penalty[1],
        ]);
        ok(&run);
        run.stdout
    };
    assert_eq!(greedy("llama.cpp"), greedy("talkback"));
}

#[test]
fn json_settings_read_as_they_were_typed() {
    for format in ["json", "jsonl"] {
        let run = tb(&[
            "complete", STORY, "-n", "1", "--temp", "0.8", "--top-p", "0.95", "--min-p", "0.05",
            "--format", format,
        ]);
        ok(&run);
        let text = run.text();
        for field in [
            r#""temperature":0.8,"#,
            r#""top_p":0.95"#,
            r#""min_p":0.05,"#,
        ] {
            assert!(text.contains(field), "{format}: {field} not in {text}");
        }
    }
}

#[test]
fn stages_the_order_leaves_out_show_null_not_a_count_or_a_setting() {
    let args = [
        "complete",
        STORY,
        "-n",
        "2",
        "--seed",
        "3",
        "--sampler-order",
        "top-p,temp",
    ];
    let run = tb(&[&args[..], &["--format", "jsonl"]].concat());
    ok(&run);
    let all = events(&run);
    let summary = all.last().expect("a summary event");
    let settings = &summary["settings"];
    for e in all.iter().filter(|e| e["event"] == "token") {
        let s = &e["survivors"];
        assert!(s["top_k"].is_null() && s["min_p"].is_null(), "{e}");
        assert_eq!(int(&s["vocab"]), VOCAB, "{e}");
        assert!(
            int(&s["top_p"]) >= int(&s["final"]) && int(&s["final"]) >= 1,
            "{e}"
        );
    }
    let json = tb(&[&args[..], &["--format", "json"]].concat());
    ok(&json);
    let v: Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    for s in [settings, &v["settings"]] {
        assert!(s["top_k"].is_null() && s["min_p"].is_null(), "{s}");
        assert_eq!(num(&s["top_p"]), 0.95, "{s}");
    }
    // A trace keeps every value, for the replay.
    let trace = TempFile::new("order-trace.json");
    ok(&tb(&[&args[..], &["--trace", trace.arg()]].concat()));
    let t = trace.read_json();
    assert_eq!(int(&t["settings"]["top_k"]), 40, "{t}");
}

#[test]
fn verbose_settings_show_a_dash_for_stages_the_order_leaves_out() {
    let run = tb(&[
        "complete",
        STORY,
        "-n",
        "1",
        "--sampler-order",
        "temp,top-p",
        "-v",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("| top-k - | top-p 0.95 | min-p - | repeat-penalty"),
        "{}",
        run.stderr
    );
}
