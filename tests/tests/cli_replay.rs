//! Traces and replay on the real model: a recorded run replays exactly, a
//! tampered trace is caught at the step and field that differ, and a trace
//! from another model is refused.

// Helpers outside #[test] functions report failure by panicking too.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use serde_json::Value;
use talkback_tests::{ok, talkback, talkback_stdin, tb, TempFile};

/// Runs `args` with `--trace` and `--format json`; returns the trace file
/// and the JSON output.
fn record(args: &[&str]) -> (TempFile, Value) {
    let trace = TempFile::new("trace.json");
    let run = tb(&[args, &["--format", "json", "--trace", trace.arg()]].concat());
    ok(&run);
    (trace, run.json())
}

/// Replays a trace and expects it to match.
fn replays(trace: &TempFile, generated: usize) {
    let run = tb(&["replay", trace.arg()]);
    ok(&run);
    let out = run.text();
    assert!(out.starts_with("replay ok: "), "{out}");
    assert!(
        out.contains(&format!(" {generated} generated tokens match")),
        "{out}"
    );
}

/// Replays a trace and expects a divergence naming `what`.
fn diverges(trace: &TempFile, what: &str) {
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.text(), run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    let e = &run.stderr;
    assert!(e.starts_with("talkback: replay diverged: "), "{e}");
    assert!(e.contains(what), "expected {what:?} in: {e}");
}

/// Replays a trace and expects it refused as a runtime error naming `what`.
fn refused(trace: &TempFile, what: &str) {
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(what),
        "expected {what:?} in: {}",
        run.stderr
    );
}

/// Compares settings field by field; numbers as the f32 they stand for,
/// since the trace writes an f32's shortest text ("0.8") and the JSON output
/// the f64 it widens to ("0.800000011920929").
fn same_settings(trace: &Value, json: &Value) {
    let (t, j) = (
        trace.as_object().expect("settings"),
        json.as_object().expect("settings"),
    );
    assert_eq!(t.keys().collect::<Vec<_>>(), j.keys().collect::<Vec<_>>());
    for (key, tv) in t {
        let jv = &j[key];
        match (tv.as_f64(), jv.as_f64()) {
            (Some(x), Some(y)) => assert_eq!(x as f32, y as f32, "settings.{key}"),
            _ => assert_eq!(tv, jv, "settings.{key}"),
        }
    }
}

/// Checks that the trace holds what the run printed.
fn check_trace(trace: &Value, json: &Value) {
    assert_eq!(trace["version"], 1);
    let sha = trace["model_sha256"].as_str().expect("sha");
    assert_eq!(sha.len(), 64, "{sha}");
    assert!(sha
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    same_settings(&trace["settings"], &json["settings"]);
    assert_eq!(trace["finish_reason"], json["finish_reason"]);
    let steps = trace["steps"].as_array().expect("steps");
    let ids: Vec<&Value> = steps.iter().map(|s| &s["id"]).collect();
    let logprobs: Vec<&Value> = steps.iter().map(|s| &s["logprob"]).collect();
    let json_ids: Vec<&Value> = json["tokens"].as_array().expect("tokens").iter().collect();
    assert_eq!(ids, json_ids);
    // The trace keeps f32 text and the JSON output f64 text of the same f32.
    for (t, j) in logprobs
        .iter()
        .zip(json["logprobs"].as_array().expect("logprobs"))
    {
        let (t, j) = (t.as_f64().expect("logprob"), j.as_f64().expect("logprob"));
        assert_eq!(t as f32, j as f32);
    }
    assert_eq!(
        trace["prompt_tokens"].as_array().map(Vec::len),
        json["prompt_tokens"].as_u64().map(|n| n as usize)
    );
}

const STORY: &str = "Once upon a time, in a forest";

#[test]
fn a_complete_trace_replays() {
    let (trace, json) = record(&["complete", STORY, "-n", "16", "--seed", "21"]);
    let t = trace.read_json();
    check_trace(&t, &json);
    assert_eq!(t["prompt"]["mode"], "complete");
    assert_eq!(t["prompt"]["text"], STORY);
    assert_eq!(t["prompt"]["parse_special"], false);
    replays(&trace, json["tokens"].as_array().map_or(0, Vec::len));
}

#[test]
fn a_trace_on_stdin_replays_and_is_named_so_in_errors() {
    let (trace, _) = record(&["complete", STORY, "-n", "4", "--seed", "3"]);
    let bytes = std::fs::read(&trace.0).expect("trace written");
    let run = talkback_stdin(&["replay", "-", "--threads", "1"], Some(&bytes));
    ok(&run);
    assert!(
        run.text()
            .ends_with(" and 4 generated tokens match (finish: length)\n"),
        "{}",
        run.text()
    );
    let run = talkback_stdin(&["replay", "-"], Some(b"{\"version\": 1}"));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("talkback: trace <stdin> is not a valid trace: "),
        "{}",
        run.stderr
    );
}

#[test]
fn a_one_token_run_replays_in_the_singular() {
    let (trace, _) = record(&["complete", STORY, "-n", "1", "--seed", "5"]);
    let run = tb(&["replay", trace.arg()]);
    ok(&run);
    assert!(
        run.text()
            .ends_with(" and 1 generated token match (finish: length)\n"),
        "{}",
        run.text()
    );
}

#[test]
fn a_chat_trace_with_stops_and_penalties_replays() {
    let (trace, json) = record(&[
        "chat",
        "Write a haiku about snow.",
        "--system",
        "You are a poet.",
        "-n",
        "20",
        "--seed",
        "77",
        "--temp",
        "1.2",
        "--repeat-penalty",
        "1.3",
        "--presence-penalty",
        "-0.2",
        "--stop",
        "zzz",
    ]);
    let t = trace.read_json();
    check_trace(&t, &json);
    assert_eq!(t["prompt"]["mode"], "chat");
    let messages = t["prompt"]["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[1]["content"], "Write a haiku about snow.");
    assert!(t["prompt"]["chat_template"]
        .as_str()
        .is_some_and(|s| s.contains("<|im_start|>")));
    replays(&trace, json["tokens"].as_array().map_or(0, Vec::len));
}

#[test]
fn verbose_replay_prints_the_recorded_settings() {
    let (trace, json) = record(&[
        "complete", STORY, "-n", "6", "--seed", "31", "--temp", "1.3", "--top-k", "7",
    ]);
    let run = tb(&["-v", "replay", trace.arg()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.text().starts_with("replay ok: "), "{}", run.text());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].starts_with("talkback: model "), "{}", run.stderr);
    let settings = lines[1];
    for part in [
        "seed 31 |",
        "| temp 1.3 |",
        "| top-k 7 |",
        "| top-p 0.95 |",
        "| n 6 |",
        "| sampler talkback",
    ] {
        assert!(settings.contains(part), "{part:?} missing from {settings}");
    }
    assert_eq!(json["settings"]["seed"], 31);
}

/// Records a 12-token run for tampering.
fn recorded() -> (TempFile, Value) {
    let (trace, _) = record(&["complete", STORY, "-n", "12", "--ignore-eos", "--seed", "5"]);
    let t = trace.read_json();
    assert_eq!(t["steps"].as_array().map(Vec::len), Some(12));
    (trace, t)
}

#[test]
fn a_changed_token_id_is_reported_at_its_step() {
    let (trace, mut t) = recorded();
    let id = t["steps"][4]["id"].as_u64().expect("id");
    let other = if id == 100 { 101 } else { 100 };
    t["steps"][4]["id"] = other.into();
    trace.write_json(&t);
    diverges(
        &trace,
        &format!("step 4: field `id` expected token {other}, got token {id}"),
    );
}

#[test]
fn a_changed_text_or_stop_string_is_reported_though_every_token_matches() {
    let (trace, t) = recorded();
    let text = t["text"]
        .as_str()
        .expect("the trace records the text")
        .to_owned();
    assert!(text.chars().count() >= 2, "{text:?}");
    let mut changed = t.clone();
    changed["text"] = format!("{text}!").into();
    trace.write_json(&changed);
    let at = text.len();
    diverges(
        &trace,
        &format!("field `text` differs from byte {at}: expected \"!\", got \"\""),
    );
    diverges(
        &trace,
        "every token matched, so the trace's `text` or `stops`",
    );

    // The shortest ending found nowhere earlier in the text, and the one a
    // character longer: as stop strings both end the run at its last
    // token, with texts a character apart.
    let chars: Vec<char> = text.chars().collect();
    let ending = |k: usize| chars[chars.len() - k..].iter().collect::<String>();
    let k = (1..chars.len())
        .find(|&k| text.find(&ending(k)) == Some(text.len() - ending(k).len()))
        .expect("the whole text is found only at its start");
    let (short, long) = (ending(k), ending(k + 1));
    let (trace, json) = record(&[
        "complete",
        STORY,
        "-n",
        "12",
        "--ignore-eos",
        "--seed",
        "5",
        "--stop",
        &long,
    ]);
    assert_eq!(json["finish_reason"], "stop_string", "{json}");
    assert_eq!(
        json["tokens"],
        t["steps"].as_array().map_or(Value::Null, |s| {
            s.iter().map(|step| step["id"].clone()).collect()
        })
    );
    replays(&trace, 12);
    let mut t = trace.read_json();
    t["settings"]["stops"] = serde_json::json!([short]);
    trace.write_json(&t);
    let kept = chars.len() - k - 1;
    let at = chars[..kept].iter().map(|c| c.len_utf8()).sum::<usize>();
    let first: String = chars[kept].escape_debug().collect();
    diverges(
        &trace,
        &format!("field `text` differs from byte {at}: expected \"\", got \"{first}\""),
    );
}

#[test]
fn a_trace_without_text_from_an_older_version_still_replays() {
    let (trace, mut t) = recorded();
    t.as_object_mut().expect("trace").remove("text");
    trace.write_json(&t);
    replays(&trace, 12);
}

#[test]
fn a_prompt_holding_the_other_modes_fields_is_refused() {
    let (trace, t) = recorded();
    let mut mixed = t.clone();
    mixed["prompt"]["messages"] = serde_json::json!([{"role": "user", "content": "x"}]);
    trace.write_json(&mixed);
    refused(
        &trace,
        "its `complete` prompt holds `messages`, a field of `chat` prompts",
    );

    let (trace, _) = record(&["chat", "Hi", "-n", "2", "--seed", "1"]);
    let mut mixed = trace.read_json();
    mixed["prompt"]["parse_special"] = true.into();
    trace.write_json(&mixed);
    refused(
        &trace,
        "its `chat` prompt holds `parse_special`, a field of `complete`",
    );
    // Ahead of `mode`, as well as after it.
    let prompt = mixed["prompt"].as_object_mut().expect("prompt");
    let mut ahead = serde_json::Map::new();
    ahead.insert("text".into(), "Hi".into());
    ahead.extend(
        prompt
            .clone()
            .into_iter()
            .filter(|(k, _)| k != "parse_special"),
    );
    *prompt = ahead;
    trace.write_json(&mixed);
    refused(
        &trace,
        "its `chat` prompt holds `text`, a field of `complete` prompts",
    );
}

#[test]
fn a_changed_logprob_is_reported_at_its_step() {
    let (trace, mut t) = recorded();
    let lp = t["steps"][7]["logprob"].as_f64().expect("logprob");
    t["steps"][7]["logprob"] = (lp - 0.25).into();
    trace.write_json(&t);
    diverges(&trace, "step 7: field `logprob` expected ");
}

#[test]
fn a_changed_prompt_token_or_seed_is_reported() {
    let (trace, t) = recorded();

    let mut changed = t.clone();
    changed["prompt_tokens"][1] = 5.into();
    trace.write_json(&changed);
    diverges(
        &trace,
        "prompt token 1: field `prompt_tokens` expected 5, got ",
    );

    // Another seed draws other tokens from some step on.
    let mut reseeded = t.clone();
    reseeded["settings"]["seed"] = 6.into();
    trace.write_json(&reseeded);
    diverges(&trace, ": field `id` expected token ");

    // Ending on `length` short of the cap is an edit, not a divergence.
    let mut shorter = t.clone();
    shorter["steps"].as_array_mut().expect("steps").pop();
    trace.write_json(&shorter);
    refused(
        &trace,
        "ends on `length` after 11 steps, but its n_predict is 12",
    );
    let mut uncapped = t;
    uncapped["settings"]["n_predict"] = Value::Null;
    trace.write_json(&uncapped);
    refused(
        &trace,
        "ends on `length` after 12 steps, but its n_predict is unlimited",
    );
}

/// A change made to a trace by hand.
type Edit<'a> = &'a dyn Fn(&mut Value);

/// Makes each edit to `t` in turn and expects replay to refuse the trace
/// with the one line `talkback: {message}`.
fn refused_after_edits(trace: &TempFile, t: &Value, cases: Vec<(Edit, String)>) {
    for (edit, message) in cases {
        let mut changed = t.clone();
        edit(&mut changed);
        trace.write_json(&changed);
        let run = tb(&["replay", trace.arg()]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_eq!(run.stderr, format!("talkback: {message}\n"));
    }
}

#[test]
fn a_trace_holding_what_no_run_records_is_refused_as_a_trace() {
    let (trace, _) = record(&["chat", "Hi", "-n", "3", "--seed", "1"]);
    let t = trace.read_json();
    let path = trace.arg().to_owned();
    let cases: Vec<(Edit, String)> = vec![
        (
            &|t| t["prompt"]["messages"] = Value::Array(Vec::new()),
            format!("trace {path}: its messages hold no \"user\" or \"assistant\" turn (roles are matched exactly)"),
        ),
        (
            &|t| t["prompt"]["messages"][0]["role"] = "system".into(),
            format!("trace {path}: its messages hold no \"user\" or \"assistant\" turn (roles are matched exactly)"),
        ),
        (
            &|t| t["prompt"]["messages"][0]["content"] = " ".into(),
            format!("trace {path}: turn 1 (user) is empty"),
        ),
        (
            &|t| t["steps"][1]["id"] = 49_152.into(),
            format!(
                "trace {path}: step 1 records token 49152, but the model's vocabulary \
                 holds 49152 tokens"
            ),
        ),
    ];
    refused_after_edits(&trace, &t, cases);

    let (trace, t) = recorded();
    let path = trace.arg().to_owned();
    let cases: Vec<(Edit, String)> = vec![
        (
            &|t| t["prompt"]["text"] = "".into(),
            format!("trace {path}: its prompt is empty"),
        ),
        (
            &|t| t["prompt_tokens"][0] = 49_152.into(),
            format!(
                "trace {path}: prompt token 0 is 49152, but the model's vocabulary holds \
                 49152 tokens"
            ),
        ),
        // A run makes no more steps than its context holds, and ends on
        // `context_full` only when they fill it.
        (
            &|t| {
                t["finish_reason"] = "context_full".into();
                t["settings"]["n_predict"] = Value::Null;
            },
            format!(
                "trace {path} ends on `context_full` after 12 steps, but after 8 prompt tokens \
                 its context of 4096 fills only at step 4089"
            ),
        ),
        (
            &|t| {
                t["finish_reason"] = "end_of_turn".into();
                t["settings"]["ignore_eos"] = false.into();
                t["settings"]["n_predict"] = Value::Null;
                t["settings"]["ctx_size"] = 19.into();
            },
            format!(
                "trace {path} ends on `end_of_turn` after 12 steps, but after 8 prompt tokens \
                 its context of 19 is full at step 12"
            ),
        ),
        (
            &|t| t["settings"]["ctx_size"] = 16.into(),
            format!(
                "trace {path} records 12 steps after 8 prompt tokens, but its context of 16 \
                 has room for 9 steps at most"
            ),
        ),
        (
            &|t| {
                t["finish_reason"] = "end_of_turn".into();
                t["settings"]["ignore_eos"] = true.into();
                t["settings"]["n_predict"] = Value::Null;
            },
            format!("trace {path} ends on `end_of_turn`, which its ignore_eos setting rules out"),
        ),
        (
            &|t| {
                t["finish_reason"] = "stop_string".into();
                t["settings"]["n_predict"] = Value::Null;
            },
            format!("trace {path} ends on `stop_string`, but it has no stop strings"),
        ),
        // At its cap a run ends on `length`.
        (
            &|t| t["finish_reason"] = "end_of_turn".into(),
            format!(
                "trace {path} ends on `end_of_turn` after 12 steps, its n_predict, where a \
                 run ends on `length`"
            ),
        ),
    ];
    refused_after_edits(&trace, &t, cases);
}

#[test]
fn a_trace_stopped_before_its_first_token_replays_without_decoding() {
    let (trace, mut t) = recorded();
    t["steps"] = Value::Array(Vec::new());
    t["finish_reason"] = "interrupted".into();
    trace.write_json(&t);
    let run = tb(&["replay", trace.arg()]);
    ok(&run);
    assert_eq!(
        run.text(),
        "replay ok: 8 prompt tokens and 0 generated tokens match (finish: interrupted)\n"
    );
    // The prompt must still fit the context it names.
    let long = STORY.repeat(4);
    let (trace, _) = record(&["complete", &long, "-n", "1", "-c", "64", "--seed", "1"]);
    let mut t = trace.read_json();
    t["steps"] = Value::Array(Vec::new());
    t["finish_reason"] = "interrupted".into();
    t["settings"]["ctx_size"] = 16.into();
    trace.write_json(&t);
    refused(
        &trace,
        "its prompt is 32 tokens but its context holds only 16",
    );
}

#[test]
fn a_trace_interrupted_at_a_step_that_ends_the_run_replays() {
    // Each crab is three tokens, so a run cut after 40 steps ends inside
    // a character, whose U+FFFD completes the stop: `stop_string`.
    let (trace, _) = record(&[
        "complete",
        "🦀🦀🦀",
        "-n",
        "40",
        "--temp",
        "0",
        "--stop",
        "\u{fffd}",
    ]);
    let t = trace.read_json();
    assert_eq!(t["finish_reason"], "stop_string");
    // A run stopped from outside at such a step (a reader that left
    // before the text ahead of the stop was written, or Ctrl-C after a
    // step that ends inside a character) records `interrupted`; its
    // replay must match whether or not the last step ends the run too.
    for kept in [40, 39, 38] {
        let mut cut = t.clone();
        cut["steps"].as_array_mut().expect("steps").truncate(kept);
        cut["finish_reason"] = "interrupted".into();
        trace.write_json(&cut);
        let run = tb(&["replay", trace.arg()]);
        ok(&run);
        assert_eq!(
            run.text(),
            format!(
                "replay ok: 9 prompt tokens and {kept} generated tokens match (finish: \
                 interrupted)\n"
            )
        );
    }
}

#[test]
fn replay_uses_the_recorded_thread_count() {
    let (trace, mut t) = recorded();
    assert_eq!(t["settings"]["threads"], 1, "tb records one thread");

    // Without --threads, the replay takes the recorded count.
    let run = talkback(&["-v", "replay", trace.arg()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("| threads 1\n"), "{}", run.stderr);

    t["steps"][3]["id"] = 100.into();
    trace.write_json(&t);
    let run = talkback(&["replay", trace.arg()]);
    assert!(
        !run.stderr.contains("recorded by talkback"),
        "{}",
        run.stderr
    );
    // A trace from another version says so too.
    let mut older = t.clone();
    older["talkback_version"] = "0.0.1".into();
    trace.write_json(&older);
    let run = talkback(&["replay", trace.arg()]);
    assert!(
        run.stderr.ends_with(&format!(
            "; the trace was recorded by talkback 0.0.1, and this is {})\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        run.stderr
    );
    trace.write_json(&t);
    for (extra, hint) in [
        (
            &[][..],
            "(recorded and replayed with 1 thread; either the trace was changed ",
        ),
        (
            &["--threads", "2"],
            "(recorded with 1 thread, replayed with 2 threads; ",
        ),
    ] {
        let run = talkback(&[&["replay", trace.arg()], extra].concat());
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(hint), "{}", run.stderr);
    }

    // Traces of older versions have no count.
    t["settings"]
        .as_object_mut()
        .expect("settings")
        .remove("threads");
    trace.write_json(&t);
    let run = tb(&["replay", trace.arg()]);
    assert!(
        run.stderr
            .contains("the trace does not record its thread count, and this replay used 1 thread"),
        "{}",
        run.stderr
    );

    t["settings"]["threads"] = 0.into();
    trace.write_json(&t);
    refused(&trace, "0 decoding threads is outside 1..=1024");

    // More threads than cores: replayed as recorded, with a warning. A
    // trace stopped before its first token decodes nothing, so it is quick.
    t["settings"]["threads"] = 1024.into();
    t["steps"] = Value::Array(Vec::new());
    t["finish_reason"] = "interrupted".into();
    trace.write_json(&t);
    let run = talkback(&["replay", trace.arg()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(
            "talkback: warning: the trace was recorded with 1024 threads, more than this \
             machine's "
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn seeds_chosen_for_the_run_survive_json_tools() {
    // jq and JavaScript read numbers as doubles: integers above 2^53 round.
    for _ in 0..3 {
        let run = tb(&["complete", STORY, "-n", "1", "--format", "json"]);
        ok(&run);
        let seed = run.json()["settings"]["seed"].as_u64().expect("seed");
        assert!(seed < 1 << 53, "{seed}");
    }
}

#[test]
fn a_trace_of_another_model_is_refused() {
    let (trace, mut t) = recorded();
    let real = t["model_sha256"].as_str().expect("sha").to_owned();
    let fake = "0123456789abcdef".repeat(4);
    t["model_sha256"] = fake.clone().into();
    trace.write_json(&t);

    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    let e = &run.stderr;
    assert!(e.contains(&fake) && e.contains(&real), "{e}");
    assert!(e.contains(trace.arg()), "{e}");
    assert!(!e.contains("diverged"), "refused before generating: {e}");
}

#[test]
fn a_trace_whose_context_does_not_fit_names_the_trace_not_a_flag() {
    // Only an edited trace gets here: the run that recorded it had its
    // context accepted. Replay has no --ctx-size, so the error must not
    // ask for one.
    let long = [STORY; 3].join(", ");
    let (trace, _) = record(&[
        "complete",
        &long,
        "-n",
        "2",
        "--seed",
        "5",
        "--ctx-size",
        "64",
    ]);
    let t = trace.read_json();
    let prompt = t["prompt_tokens"].as_array().map_or(0, Vec::len);
    assert!(prompt > 16, "{prompt} prompt tokens");

    let mut beyond = t.clone();
    beyond["settings"]["ctx_size"] = 20_000.into();
    trace.write_json(&beyond);
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    assert!(
        run.stderr.starts_with(&format!(
            "talkback: trace {} asks for a context of 20000 tokens, more than the 8192 \
             that model ",
            trace.arg()
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("--ctx-size"), "{}", run.stderr);

    let mut short = t.clone();
    short["settings"]["ctx_size"] = 16.into();
    trace.write_json(&short);
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!(
            "talkback: trace {}: its prompt is {prompt} tokens but its context holds \
             only 16\n",
            trace.arg()
        )
    );

    // A text refused before it is tokenized, by a lower bound on its
    // tokens or by its size, is the trace's too.
    for (text, says) in [
        ("7".repeat(500_000), "its prompt is at least "),
        (
            "7".repeat(1_500_000),
            "its prompt is 1500000 bytes of text, more than the ",
        ),
    ] {
        let mut edited = t.clone();
        edited["prompt"]["text"] = text.into();
        trace.write_json(&edited);
        let e = refused_naming_it(&trace, says);
        assert!(!e.contains("--ctx-size") && !e.contains("shorten"), "{e}");
    }
}

#[test]
fn a_trace_whose_template_fails_names_the_trace() {
    let (trace, _) = record(&["chat", "Hi", "-n", "2", "--seed", "3"]);
    let t = trace.read_json();
    for (template, says) in [
        ("{% for %}", "the chat template does not parse: "),
        (
            "{{ raise_exception('no') }}",
            "the chat template failed to render: ",
        ),
    ] {
        let mut edited = t.clone();
        edited["prompt"]["chat_template"] = template.into();
        trace.write_json(&edited);
        refused_naming_it(&trace, says);
    }
}

/// Replays a trace and expects it refused with exit 1 by a message that
/// names it and goes on with `says`; returns the message.
fn refused_naming_it(trace: &TempFile, says: &str) -> String {
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let e = run.stderr;
    assert!(
        e.starts_with(&format!("talkback: trace {}: {says}", trace.arg())),
        "{e}"
    );
    e
}

#[test]
fn a_trace_whose_role_is_not_a_name_is_refused() {
    let (trace, _) = record(&["chat", "Hi", "-n", "2", "--seed", "3"]);
    let mut t = trace.read_json();
    t["prompt"]["messages"][0]["role"] = "<|im_start|>".into();
    trace.write_json(&t);
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    let e = &run.stderr;
    assert!(
        e.contains(trace.arg()) && e.contains("turn 1 has the role"),
        "{e}"
    );
    assert!(!e.contains("diverged"), "refused before generating: {e}");
}

#[test]
fn an_unreadable_trace_is_a_runtime_error() {
    let trace = TempFile::new("broken.json");
    std::fs::write(&trace.0, "{\"version\": 1, \"steps\": [").expect("write");
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains(trace.arg()), "{}", run.stderr);
    assert!(run.stderr.contains("not a valid trace"), "{}", run.stderr);

    let missing = TempFile::new("missing.json");
    let run = tb(&["replay", missing.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(missing.arg()), "{}", run.stderr);
}

#[test]
fn the_llama_cpp_sampler_refuses_to_trace() {
    let trace = TempFile::new("refused.json");
    let run = tb(&[
        "complete",
        STORY,
        "-n",
        "4",
        "--sampler",
        "llama.cpp",
        "--trace",
        trace.arg(),
    ]);
    assert_eq!(run.code, 2, "a usage error: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    assert!(run.stderr.contains("--trace"), "{}", run.stderr);
    assert!(run.stderr.contains("--sampler"), "{}", run.stderr);
    assert!(!trace.0.exists(), "no trace is written");
}

#[test]
fn a_trace_that_cannot_be_written_fails_before_generating() {
    let folder = TempFile::new("no-such-folder");
    let inside = folder.0.join("run.json");
    let inside = inside.to_str().expect("UTF-8 temp path");
    let run = tb(&["complete", STORY, "-n", "4", "--trace", inside]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "generated first: {}", run.text());
    assert_eq!(
        run.stderr,
        format!("talkback: cannot write trace {inside}: No such file or directory (os error 2)\n")
    );

    // A run that fails after the trace is opened leaves no empty file behind.
    let unused = TempFile::new("unused.json");
    let long = STORY.repeat(4);
    let run = tb(&[
        "complete",
        &long,
        "--ctx-size",
        "16",
        "--trace",
        unused.arg(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("the context holds only 16"),
        "{}",
        run.stderr
    );
    assert!(!unused.0.exists(), "an empty trace was left");

    // An older, longer trace is replaced whole.
    let old = TempFile::with("old.json", &" ".repeat(1 << 16));
    ok(&tb(&["complete", STORY, "-n", "4", "--trace", old.arg()]));
    replays(&old, 4);
}

#[test]
fn a_trace_with_more_steps_than_its_cap_is_refused() {
    let (trace, mut t) = recorded();
    t["settings"]["n_predict"] = 2.into();
    t["finish_reason"] = "interrupted".into();
    trace.write_json(&t);
    refused(
        &trace,
        "records 12 steps, more than its n_predict of 2 lets a run make",
    );
}

#[test]
fn a_replay_stops_one_step_past_the_recorded_ones() {
    // With no cap the run this trace claims would have gone on to the end
    // of its context; the replay stops at the thirteenth token instead.
    let (trace, mut t) = recorded();
    t["settings"]["n_predict"] = Value::Null;
    // Uncapped, a run ends on `length` never; this one ignores the end of
    // the turn, so a stop string it never meets stands in.
    t["finish_reason"] = "stop_string".into();
    t["settings"]["stops"] = serde_json::json!(["\u{1}never"]);
    trace.write_json(&t);
    diverges(
        &trace,
        "step 12: field `steps` expected 12 tokens, ending on `stop_string`, but the replay \
         went on (every token matched until one run met a stop string where the other did not, \
         so the trace's `steps` or `stops` was changed after it was recorded)",
    );
}

#[test]
fn a_stop_string_added_to_a_trace_is_named_where_the_replay_meets_it() {
    let (trace, mut t) = recorded();
    let text = t["text"].as_str().expect("text").to_owned();
    // The text's start, so the replay meets it well before its twelfth
    // token (`length`).
    let start: String = text.chars().take(4).collect();
    t["settings"]["stops"] = serde_json::json!([start]);
    trace.write_json(&t);
    let run = tb(&["replay", trace.arg()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let e = &run.stderr;
    assert!(
        e.contains(
            "the replay ended there on `stop_string`; the recorded run went on, to end on \
             `length` (every token matched until one run met a stop string where the other \
             did not, so the trace's `steps` or `stops` was changed after it was recorded)"
        ),
        "{e}"
    );
    let got = e
        .split(", got ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok())
        .expect("the replay's step count");
    assert!(got < 12, "{e}");
    assert!(
        e.starts_with(&format!(
            "talkback: replay diverged: step {got}: field `steps` expected 12 tokens, got {got}:"
        )),
        "{e}"
    );
}

#[test]
fn the_model_hash_is_read_in_either_case_and_must_be_one() {
    let (trace, mut t) = recorded();
    let sha = t["model_sha256"]
        .as_str()
        .expect("sha")
        .to_ascii_uppercase();
    t["model_sha256"] = sha.into();
    trace.write_json(&t);
    replays(&trace, 12);
    t["model_sha256"] = "b179c9".into();
    trace.write_json(&t);
    refused(
        &trace,
        "`model_sha256` is not a SHA-256 (64 hexadecimal digits): \"b179c9\"",
    );
}
