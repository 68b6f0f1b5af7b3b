//! Bad input, one case at a time: each run must end with the documented
//! exit code (1 for a runtime failure, 2 for a usage error) and one clear
//! line on stderr, never a panic, a backtrace or a hang.
//!
//! Unreadable model: the tests run as root in CI, and root reads a file
//! whatever its mode. So when the test runs as root, `talkback` is started
//! as `nobody` through `setpriv` (util-linux) on a file of mode 000; as any
//! other user the mode alone blocks it. Either way the open really fails
//! with "Permission denied".
//!
//! A FIFO as the model used to hang: opening one blocks until a writer
//! comes. It is now refused as "not a regular file" before it is opened.

// Helpers outside `#[test]` functions stop the test with a message on any
// surprise, as the tests themselves do.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

mod reliability_support;

use std::process::Command;

use reliability_support::{
    arg, binary, is_root, runtime_error, start, talkback, talkback_stdin, usage_error, Layout,
    Scratch,
};

/// A short completion with the given model file.
fn complete_with(model: &str) -> reliability_support::Run {
    talkback(&[
        "complete",
        "The cat sat",
        "-n",
        "2",
        "--seed",
        "1",
        "-m",
        model,
    ])
}

#[test]
fn missing_model() {
    let scratch = Scratch::new("missing");
    let path = scratch.join("no-such.gguf");
    let line = runtime_error(&complete_with(arg(&path)), "does not exist");
    assert!(line.contains(arg(&path)), "{line}");
}

#[test]
fn model_is_a_directory() {
    let scratch = Scratch::new("dir");
    let dir = scratch.join("models.gguf");
    std::fs::create_dir(&dir).expect("mkdir");
    runtime_error(&complete_with(arg(&dir)), "is a directory");
}

#[test]
fn model_is_a_fifo() {
    let scratch = Scratch::new("fifo");
    let fifo = scratch.join("model.gguf");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo failed");
    // Before the fix this blocked forever in open(); the deadline catches it.
    runtime_error(&complete_with(arg(&fifo)), "is not a regular file");
}

/// Runs `talkback args` as a user whom file modes apply to: `nobody`
/// through `setpriv` when the tests run as root, else the current user.
fn talkback_unprivileged(args: &[&str]) -> reliability_support::Run {
    if !is_root() {
        return talkback(args);
    }
    // nobody can still reach the binary and the scratch folders, which
    // are world-readable.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    through(cmd, args)
}

/// `talkback args` started by `cmd` (a program that runs the binary,
/// named after `cmd`'s own arguments), with the model set and the output
/// collected.
fn through(mut cmd: Command, args: &[&str]) -> reliability_support::Run {
    cmd.arg(binary())
        .args(args)
        .env("TALKBACK_MODEL", reliability_support::model())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    start(cmd, None).finish()
}

#[test]
fn model_is_unreadable() {
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("unreadable");
    let path = scratch.write("locked.gguf", b"GGUF\x03\0\0\0");
    std::fs::set_permissions(&path, Permissions::from_mode(0o000)).expect("chmod");
    let run = talkback_unprivileged(&["complete", "hi", "-n", "2", "-m", arg(&path)]);
    let line = runtime_error(&run, "Permission denied");
    assert!(line.contains("cannot open model"), "{line}");

    // Behind a folder that cannot be searched the file is not "missing".
    let dir = scratch.join("closed");
    std::fs::create_dir(&dir).expect("mkdir");
    let inside = scratch.write("closed/model.gguf", b"GGUF\x03\0\0\0");
    std::fs::set_permissions(&dir, Permissions::from_mode(0o000)).expect("chmod");
    let run = talkback_unprivileged(&["complete", "hi", "-n", "2", "-m", arg(&inside)]);
    std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("chmod back");
    let line = runtime_error(&run, "Permission denied");
    assert!(line.contains("cannot read model"), "{line}");
}

#[test]
fn model_is_empty() {
    let scratch = Scratch::new("empty");
    let path = scratch.write("empty.gguf", b"");
    runtime_error(&complete_with(arg(&path)), "is empty");
}

#[test]
fn model_is_not_gguf() {
    let scratch = Scratch::new("text");
    let path = scratch.write("notes.gguf", b"these are not the weights\n");
    runtime_error(&complete_with(arg(&path)), "no GGUF magic bytes");
}

#[test]
fn model_is_a_truncated_copy() {
    let scratch = Scratch::new("truncated");
    let layout = Layout::of_model();
    // Inside the magic, inside the vocabulary, inside the tensor
    // descriptions, and inside the tensor data.
    let cases = [
        (3, "too short to be GGUF"),
        (500_000, "tokenizer.ggml.tokens"),
        (layout.data_start - 10, "truncated at byte"),
        (layout.len / 2, "truncated: tensor"),
        (layout.len - 1, "truncated: tensor `output_norm.weight`"),
    ];
    for (len, needle) in cases {
        let path = scratch.model_prefix("cut.gguf", len);
        let line = runtime_error(&complete_with(arg(&path)), needle);
        assert!(line.contains("is not a usable GGUF file"), "{line}");
    }
}

#[test]
fn model_header_with_corrupt_counts_lengths_and_types() {
    use reliability_support::Patchable;
    let scratch = Scratch::new("header");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    let name_at = layout.value_at("general.name");
    let tokens_at = layout.value_at("tokenizer.ggml.tokens");
    let first = &layout.tensors[0];
    let cases: Vec<(u64, Vec<u8>, &str)> = vec![
        (
            4,
            4_u32.to_le_bytes().to_vec(),
            "GGUF version 4 is not supported",
        ),
        (8, u64::MAX.to_le_bytes().to_vec(), "cannot fit"),
        (16, (1_u64 << 40).to_le_bytes().to_vec(), "cannot fit"),
        // The first key's length.
        (
            24,
            (1_u64 << 40).to_le_bytes().to_vec(),
            "claims 1099511627776 bytes",
        ),
        // A string's length and a value's type.
        (
            name_at,
            (1_u64 << 50).to_le_bytes().to_vec(),
            "general.name",
        ),
        (
            layout.key_type_at("general.name"),
            77_u32.to_le_bytes().to_vec(),
            "unknown value type 77",
        ),
        // The vocabulary's item type and item count.
        (
            tokens_at,
            13_u32.to_le_bytes().to_vec(),
            "array of unknown type 13",
        ),
        (
            tokens_at + 4,
            (1_u64 << 40).to_le_bytes().to_vec(),
            "claims 1099511627776 items",
        ),
        // A tensor's dimension count and data offset.
        (
            first.n_dims_at,
            7_u32.to_le_bytes().to_vec(),
            "has 7 dimensions",
        ),
        (
            first.offset_at,
            (first.offset + 1).to_le_bytes().to_vec(),
            "is not aligned",
        ),
    ];
    for (at, bytes, needle) in cases {
        let run = copy.with(&[(at, bytes)], |path| complete_with(arg(path)));
        let line = runtime_error(&run, needle);
        assert!(line.contains("is not a usable GGUF file"), "{line}");
    }

    // A tensor type llama.cpp does not know passes the walk; llama.cpp
    // refuses it, and the message says where to see its reason.
    let run = copy.with(&[(first.type_at, 99_u32.to_le_bytes().to_vec())], |path| {
        complete_with(arg(path))
    });
    runtime_error(&run, "llama.cpp refused it (run with -vv to see why)");
}

#[test]
fn prompt_longer_than_the_context() {
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let run = talkback(&["complete", &prompt, "-c", "64", "-n", "4"]);
    let line = runtime_error(&run, "but the context holds only 64");
    assert!(
        line.contains("; raise --ctx-size (the model takes up to 8192) or shorten the prompt"),
        "{line}"
    );
    // At the model's whole context there is no larger one to ask for.
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(1000);
    let run = talkback(&["complete", &prompt, "-c", "8192", "-n", "4"]);
    let line = runtime_error(&run, "but the context holds only 8192");
    assert!(
        line.ends_with(", and the model takes at most 8192; shorten the prompt"),
        "{line}"
    );
    // Nor when the prompt is longer than any context the model takes.
    let run = talkback(&["complete", &prompt, "-n", "4"]);
    let line = runtime_error(&run, "but the context holds only 4096");
    assert!(
        line.ends_with(", and the model takes at most 8192; shorten the prompt"),
        "{line}"
    );
}

#[test]
fn a_huge_prompt_is_refused_before_it_is_tokenized() {
    // Sixteen megabytes of one letter took 11 s and 1.6 GB to tokenize
    // before the count refused them; no token of the vocabulary stands for
    // more than a few dozen bytes, so the size alone refuses them. (Above
    // a mebibyte a cap for every tokenizer comes first; this is the most
    // it lets through.)
    let prompt = vec![b'x'; 1 << 20];
    let run = talkback_stdin(&["complete", "-c", "64", "-n", "2"], &prompt);
    let line = runtime_error(&run, "the prompt is at least ");
    assert!(
        line.contains("tokens but the context holds only 64"),
        "{line}"
    );
    // A template that renders a million bytes, the same way.
    let scratch = Scratch::new("huge-template");
    let template = scratch.write(
        "big.j2",
        b"{{ 'x' * 1000000 }}{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    let run = talkback(&[
        "chat",
        "hi",
        "--chat-template",
        arg(&template),
        "-c",
        "64",
        "-n",
        "2",
    ]);
    runtime_error(&run, "the prompt is at least ");
    // Whitespace beside a special token could vanish into it only in a
    // vocabulary whose special tokens strip it, which this one's do not:
    // spaces count with special tokens parsed too.
    let spaces = vec![b' '; 1 << 20];
    let run = talkback_stdin(
        &["complete", "--parse-special", "-c", "64", "-n", "1"],
        &spaces,
    );
    runtime_error(&run, "the prompt is at least ");
    // A chat is bounded as a whole, not only part by part: 190 turns
    // that each fit.
    let turns: Vec<String> = (0..190)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            format!(r#"{{"role": "{role}", "content": "{}"}}"#, "a".repeat(5000))
        })
        .collect();
    let messages = scratch.write("turns.json", format!("[{}]", turns.join(",")).as_bytes());
    let run = talkback(&["chat", "--messages", arg(&messages), "-c", "64", "-n", "1"]);
    runtime_error(&run, "the prompt is at least ");
}

#[test]
fn empty_prompt() {
    for run in [
        talkback(&["complete", "", "-n", "2"]),
        talkback_stdin(&["complete", "-n", "2"], b""),
    ] {
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stdout.is_empty());
        assert_eq!(
            run.stderr,
            "talkback: the prompt is empty: nothing to continue from\n"
        );
    }
}

#[test]
fn empty_prompt_for_shape_and_plot() {
    let chart = std::env::temp_dir().join(format!("talkback-empty-{}.svg", std::process::id()));
    let chart = chart.to_str().expect("a UTF-8 path");
    // The model does not exist: the prompt is refused before it is looked for.
    let missing = ["--model", "/nonexistent/m.gguf"];
    for (args, want) in [
        (
            &["shape", ""][..],
            "the prompt is empty: nothing to continue from",
        ),
        (
            &["shape", "--chat", " "][..],
            "the message is empty: give some text to send",
        ),
        (
            &["plot", "", "-o", chart][..],
            "the prompt is empty: nothing to continue from",
        ),
        (
            &["plot", "--chat", "\n", "-o", chart][..],
            "the message is empty: give some text to send",
        ),
    ] {
        let run = talkback(&[args, &missing[..]].concat());
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
        assert_eq!(run.stderr, format!("talkback: {want}\n"), "{args:?}");
    }
    assert!(!std::path::Path::new(chart).exists(), "a chart was written");
}

#[test]
fn zero_tokens_requested() {
    usage_error(
        &talkback(&["complete", "hi", "-n", "0"]),
        "'0' for '--n-predict <N>'",
    );
}

#[test]
fn out_of_range_negative_and_nan_settings() {
    let cases: [(&[&str], &str); 11] = [
        (&["--temp", "-1"], "`-1` must be zero or more"),
        (&["--temp", "NaN"], "`NaN` must be a finite number"),
        (&["--temp", "inf"], "`inf` must be a finite number"),
        (&["--top-p", "1.5"], "`1.5` must be between 0 and 1"),
        (&["--top-p", "-0.1"], "`-0.1` must be between 0 and 1"),
        (&["--min-p", "nan"], "`nan` must be a finite number"),
        (&["--repeat-penalty", "0"], "`0` must be more than zero"),
        (
            &["--presence-penalty", "NaN"],
            "`NaN` must be a finite number",
        ),
        (&["--repeat-last-n", "5000"], "5000 is not in 0..=1024"),
        (&["--ctx-size", "8"], "8 is not in 16..=1048576"),
        (&["--top-k", "-1"], "'--top-k <TOP_K>'"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["complete", "hi", "-n", "2"];
        args.extend_from_slice(flags);
        usage_error(&talkback(&args), needle);
    }
}

#[test]
fn unknown_sampler_order_name() {
    usage_error(
        &talkback(&["complete", "hi", "--sampler-order", "temp,top-q"]),
        "unknown stage `top-q`",
    );
}

#[test]
fn empty_stop_string() {
    usage_error(
        &talkback(&["complete", "hi", "--stop", ""]),
        "a stop string cannot be empty",
    );
}

#[test]
fn prompt_on_stdin_is_not_utf8() {
    for (cmd, what) in [("complete", "prompt"), ("chat", "message")] {
        // Exit 2, as for the same text given as an argument.
        let run = talkback_stdin(&[cmd, "-n", "2"], b"caf\xe9 au lait");
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert_eq!(
            run.stderr,
            format!(
                "talkback: the {what} on stdin is not valid UTF-8 (invalid byte at offset 3)\n"
            )
        );
    }
}

#[test]
fn messages_file_is_not_utf8() {
    let scratch = Scratch::new("messages");
    let path = scratch.write("turns.json", b"[{\"role\":\"user\",\"content\":\"\xff\"}]");
    let run = talkback(&["chat", "hi", "-n", "2", "--messages", arg(&path)]);
    let line = runtime_error(&run, "cannot read messages");
    assert!(line.contains("valid UTF-8"), "{line}");
}

#[test]
fn chat_template_that_raises() {
    let scratch = Scratch::new("raise");
    let path = scratch.write("raise.jinja", b"{{ raise_exception('no system role') }}");
    let run = talkback(&["chat", "hi", "-n", "2", "--chat-template", arg(&path)]);
    // The file is named: a render fails only once the model has loaded,
    // long after the flag was read.
    let line = runtime_error(
        &run,
        &format!(
            "chat template {}: the chat template failed to render: ",
            arg(&path)
        ),
    );
    assert!(line.contains("no system role"), "{line}");
}

#[test]
fn chat_template_that_asks_for_the_clock() {
    let scratch = Scratch::new("clock");
    let each = b"{% for m in messages %}{{ m.content }}{% endfor %}";
    // A template that tests for `strftime_now` writes its own fallback; one
    // that calls it regardless is told why it is missing.
    let tests = scratch.write(
        "tests.jinja",
        &[
            &b"{% if strftime_now is defined %}{{ strftime_now('%Y') }}{% else %}then "[..],
            b"{% endif %}",
            each,
        ]
        .concat(),
    );
    let render = |template: &std::path::Path| {
        talkback(&[
            "chat",
            "hi",
            "--render-only",
            "--chat-template",
            arg(template),
        ])
    };
    let run = render(&tests);
    assert_eq!((run.code, run.text()), (0, "then hi"), "{}", run.stderr);
    let calls = scratch.write(
        "calls.jinja",
        &[&b"{{ strftime_now('%Y') }} "[..], each].concat(),
    );
    let run = render(&calls);
    let line = runtime_error(&run, "strftime_now");
    assert!(
        line.ends_with(
            "; talkback gives templates no `strftime_now`, so that a prompt renders the same \
             on any day and its trace replays"
        ),
        "{line}"
    );
    // Another unknown function is not explained as the clock.
    let other = scratch.write(
        "other.jinja",
        &[&b"{{ strftime_now_utc('%Y') }} "[..], each].concat(),
    );
    let run = render(&other);
    let line = runtime_error(&run, "strftime_now_utc is unknown");
    assert!(!line.contains("talkback gives"), "{line}");
}

#[test]
fn chat_template_of_another_family_is_warned_of() {
    let scratch = Scratch::new("family");
    let each = |open: &str, close: &str| {
        format!(
            "{{% for m in messages %}}{open}{{{{ m.role }}}}\n{{{{ m.content }}}}{close}\n\
             {{% endfor %}}{open}assistant\n"
        )
    };
    let warning = |name: &str, markers: &str| {
        format!(
            "talkback: warning: the chat template {name} writes {markers} after an assistant \
             turn, which this model reads as plain text, and no token it ends a reply on \
             (such as `<|im_end|>`): is the template for another model? Replies may run on \
             past their turn\n"
        )
    };
    let cases = [
        (
            "llama3.jinja",
            each("<|start_header_id|>", "<|eot_id|>"),
            "`<|eot_id|>`, `<|start_header_id|>`",
        ),
        (
            "gemma.jinja",
            each("<start_of_turn>", "<end_of_turn>"),
            "`<end_of_turn>`, `<start_of_turn>`",
        ),
        // This model's own markers, a plain layout, and another family's
        // layout that ends each turn with this model's EOS: no warning.
        ("chatml.jinja", each("<|im_start|>", "<|im_end|>"), ""),
        ("plain.jinja", each("", ""), ""),
        ("html.jinja", each("<b>", "</b><br>"), ""),
        ("zephyr.jinja", each("<|", "{{ eos_token }}"), ""),
    ];
    for (name, source, markers) in cases {
        let path = scratch.write(name, source.as_bytes());
        let run = talkback(&["chat", "hi", "--render-only", "--chat-template", arg(&path)]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let want = if markers.is_empty() {
            String::new()
        } else {
            warning(arg(&path), markers)
        };
        assert_eq!(run.stderr, want, "{name}");
    }
}

#[test]
fn chat_template_that_never_ends() {
    let scratch = Scratch::new("endless");
    let path = scratch.write(
        "endless.jinja",
        b"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    );
    let run = talkback(&["chat", "hi", "--render-only", "--chat-template", arg(&path)]);
    runtime_error(
        &run,
        &format!(
            "chat template {}: the chat template failed to render 1 message: it ran out of \
             its budget",
            arg(&path)
        ),
    );
}

#[test]
fn chat_template_with_a_syntax_error() {
    let scratch = Scratch::new("syntax");
    let path = scratch.write("broken.jinja", b"{% for m in messages %}\n{{ m.content }\n");
    let run = talkback(&["chat", "hi", "-n", "2", "--chat-template", arg(&path)]);
    let line = runtime_error(&run, "the chat template does not parse: syntax error");
    assert!(line.contains(arg(&path)), "{line}");
}

#[test]
fn chat_template_file_is_not_utf8() {
    let scratch = Scratch::new("template-bytes");
    let path = scratch.write("latin1.jinja", b"{{ '\xe9' }}");
    let run = talkback(&["chat", "hi", "-n", "2", "--chat-template", arg(&path)]);
    runtime_error(&run, "cannot read chat template");
}

/// Records a short trace with the real model and returns its text.
fn record(scratch: &Scratch) -> (std::path::PathBuf, String) {
    let path = scratch.join("run.trace.json");
    let run = talkback(&[
        "complete",
        "The cat sat",
        "-n",
        "3",
        "--seed",
        "5",
        "--trace",
        arg(&path),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let text = std::fs::read_to_string(&path).expect("the trace was written");
    (path, text)
}

#[test]
fn replay_of_missing_malformed_and_truncated_traces() {
    let scratch = Scratch::new("traces");
    let missing = scratch.join("none.json");
    runtime_error(&talkback(&["replay", arg(&missing)]), "cannot read trace");

    let malformed = scratch.write("malformed.json", b"{\"version\": 1, \"steps\": [}");
    runtime_error(
        &talkback(&["replay", arg(&malformed)]),
        "is not a valid trace",
    );

    let (_, text) = record(&scratch);
    // Cut anywhere, a place is named by the part of it known: never `?`.
    for cut in (1..12).map(|i| text.len() * i / 12) {
        let truncated = scratch.write("truncated.json", &text.as_bytes()[..cut]);
        let line = runtime_error(
            &talkback(&["replay", arg(&truncated)]),
            "is not a valid trace",
        );
        assert!(!line.contains('?'), "{cut}: {line}");
    }

    // A refused value is named by its place, not only by line and column
    // (a trace written by another tool may be all one line).
    let mut trace: serde_json::Value = serde_json::from_str(&text).expect("trace JSON");
    trace["steps"][1]["id"] = serde_json::json!("7");
    let edited = scratch.write("edited.json", trace.to_string().as_bytes());
    runtime_error(
        &talkback(&["replay", arg(&edited)]),
        "is not a valid trace: at `steps[1].id`: invalid type: string \"7\", expected u32",
    );
}

#[test]
fn replay_of_json_that_is_no_trace_says_so() {
    // A list was read as a trace's fields by position, and another
    // program's JSON was named by the first field that did not fit.
    let scratch = Scratch::new("not-traces");
    let cases: [(&str, &[u8], &str); 5] = [
        ("list.json", b"[1]", "it holds an array, not a JSON object"),
        (
            "output.jsonl",
            b"{\"event\": \"token\"}\n{\"event\": \"summary\"}\n",
            "it has no `version` field",
        ),
        (
            "messages.json",
            br#"[{"role": "user", "content": "Hi"}]"#,
            "it holds an array",
        ),
        (
            "number.json",
            b" 7\n",
            "it holds a number, not a JSON object",
        ),
        (
            "output.json",
            br#"{"text": "Hi", "tokens": [1]}"#,
            "it has no `version` field",
        ),
    ];
    for (name, bytes, what) in cases {
        let path = scratch.write(name, bytes);
        let line = runtime_error(&talkback(&["replay", arg(&path)]), what);
        assert!(line.contains("is not a talkback trace"), "{line}");
    }
    // Text that is not JSON, or is cut short, gets the parser's own words,
    // not a guess at what it holds.
    for (name, bytes) in [("words.txt", &b"no trace"[..]), ("cut.json", b"[1, 2")] {
        let path = scratch.write(name, bytes);
        runtime_error(&talkback(&["replay", arg(&path)]), "is not a valid trace: ");
    }
}

#[test]
fn a_trace_saved_with_a_byte_order_mark_replays() {
    let scratch = Scratch::new("bom-trace");
    let (_, text) = record(&scratch);
    let path = scratch.write("bom.json", format!("\u{feff}{text}").as_bytes());
    let run = talkback(&["replay", arg(&path)]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(run.text().starts_with("replay ok: "), "{}", run.text());
}

#[test]
fn replay_with_another_model_file() {
    let scratch = Scratch::new("other-model");
    let (trace, _) = record(&scratch);
    let layout = Layout::of_model();
    // One byte inside the token embeddings: the header stays valid, the
    // SHA-256 does not.
    let at = layout.data_start + 1000;
    let old = layout.bytes(at, 1)[0];
    let other = scratch.model_with("other.gguf", &[(at, &[old ^ 0x01])]);

    let line = runtime_error(
        &talkback(&["replay", arg(&trace), "-m", arg(&other)]),
        "was recorded with model",
    );
    assert!(line.contains(arg(&other)), "{line}");

    // The changed copy is itself a usable model.
    let run = complete_with(arg(&other));
    assert_eq!(run.code, 0, "the changed copy still loads: {}", run.stderr);
}

/// A copy of the model whose chat template has byte `'{'` at its start
/// turned into a space (so `minijinja` meets an `endfor` with no `for`),
/// and, with `hide_markers`, every `<` turned into `(` so that no
/// llama.cpp built-in template recognises it.
fn model_with_broken_template(scratch: &Scratch, hide_markers: bool) -> std::path::PathBuf {
    let layout = Layout::of_model();
    let at = layout.value_at("tokenizer.chat_template");
    let len = u64::from_le_bytes(layout.bytes(at, 8).try_into().expect("8 bytes"));
    let mut broken = layout.bytes(at + 8, len).to_vec();
    assert!(broken.starts_with(b"{% for message in messages %}"));
    broken[0] = b' ';
    if hide_markers {
        for b in broken.iter_mut().filter(|b| **b == b'<') {
            *b = b'(';
        }
    }
    scratch.model_with("template.gguf", &[(at + 8, &broken)])
}

#[test]
fn model_template_minijinja_cannot_parse_falls_back_to_llama_cpp() {
    let scratch = Scratch::new("template-fallback");
    let model = model_with_broken_template(&scratch, false);
    let run = talkback(&["chat", "--render-only", "--model", arg(&model), "Hi"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // llama.cpp's ChatML adds no default system turn.
    assert_eq!(
        run.stdout,
        b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with("talkback: warning: the chat template does not parse: ")
            && lines[0].contains("using llama.cpp's built-in template"),
        "{}",
        lines[0]
    );
}

#[test]
fn model_template_that_fails_only_on_replies_renders_a_first_turn_silently() {
    // The template's default system turn, rewritten in place (same length)
    // into a call that fails on an assistant turn only: a chat of one user
    // turn renders with it, and nothing may say that llama.cpp's built-in
    // template took over (the check for another family's markers renders
    // a conversation with a reply, which once did).
    let scratch = Scratch::new("template-replies");
    let layout = Layout::of_model();
    let at = layout.value_at("tokenizer.chat_template");
    let len = u64::from_le_bytes(layout.bytes(at, 8).try_into().expect("8 bytes"));
    let source = String::from_utf8(layout.bytes(at + 8, len).to_vec()).expect("UTF-8");
    let start = source
        .find("{% if loop.first")
        .expect("the system turn's test");
    let end = start + source[start..].find("{% endif %}").expect("its end") + "{% endif %}".len();
    let failing = "{% if message['role'] == 'assistant' %}{{ message.content.nosuch() }}{% endif";
    let padding = (end - start)
        .checked_sub(failing.len() + " %}".len())
        .expect("room for the call");
    let patched = format!("{failing}{} %}}", " ".repeat(padding));
    let model = scratch.model_with(
        "replies.gguf",
        &[(at + 8 + start as u64, patched.as_bytes())],
    );
    let run = talkback(&["chat", "--render-only", "--model", arg(&model), "Hi"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(run.stderr, "");
}

#[test]
fn model_template_nothing_can_render_is_an_error() {
    let scratch = Scratch::new("template-unknown");
    let model = model_with_broken_template(&scratch, true);
    let run = talkback(&["chat", "--render-only", "--model", arg(&model), "Hi"]);
    let line = runtime_error(&run, "the chat template does not parse: ");
    assert!(
        line.ends_with("and it matches no llama.cpp built-in template"),
        "{line}"
    );
}

#[test]
fn context_longer_than_the_model_was_trained_on() {
    // SmolLM2-135M was trained on 8192 tokens; a million would take tens of
    // gigabytes of cache before the first token.
    let run = talkback(&["complete", "hi", "-n", "2", "--ctx-size", "1048576"]);
    let line = runtime_error(&run, "a context of 1048576 tokens is more than the 8192");
    assert!(line.ends_with("pass --ctx-size 8192 or less"), "{line}");
    let at_limit = talkback(&["complete", "hi", "-n", "2", "--ctx-size", "8192", "-t", "1"]);
    assert_eq!(at_limit.code, 0, "{}", at_limit.stderr);
}

/// Asserts a usage error found after parsing: exit 2, nothing on stdout,
/// and the one line `line` on stderr.
fn late_usage_error(run: &reliability_support::Run, line: &str) {
    assert_eq!(run.code, 2, "exit code; stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.text());
    assert_eq!(run.stderr, format!("talkback: {line}\n"));
}

#[test]
fn an_output_that_names_the_model_or_an_input_is_refused() {
    // The logits dump was cut to nothing under the mapped model, and the
    // process died of SIGBUS; a trace or chart replaced the model whole.
    let scratch = Scratch::new("output-clash");
    let model = scratch.model_with("model.gguf", &[]);
    let link = scratch.join("link.gguf");
    std::os::unix::fs::symlink(&model, &link).expect("link the model");
    let size = std::fs::metadata(&model).expect("model").len();
    let (model, link) = (arg(&model), arg(&link));
    let same = |flag: &str, path: &str, other: &str| {
        format!("{flag} {path} is the same file as {other}; give it a path of its own")
    };
    for flag in ["--dump-logits", "--trace"] {
        let run = talkback(&["complete", "hi", "-n", "2", "-m", model, flag, link]);
        late_usage_error(&run, &same(flag, link, &format!("the model {model}")));
    }
    let run = talkback(&["plot", "hi", "-n", "2", "-m", link, "-o", model]);
    late_usage_error(&run, &same("-o", model, &format!("the model {link}")));
    let len = std::fs::metadata(model).expect("model").len();
    assert_eq!(len, size, "the model was written to");

    // The messages a chat is made from, and the other output.
    let messages = scratch.write("turns.json", br#"[{"role": "user", "content": "Hi"}]"#);
    let messages = arg(&messages);
    let run = talkback(&["chat", "--messages", messages, "--trace", messages]);
    late_usage_error(
        &run,
        &same("--trace", messages, &format!("--messages {messages}")),
    );
    let out = scratch.join("out.bin");
    let out = arg(&out);
    let args = [
        "complete",
        "hi",
        "-n",
        "2",
        "--trace",
        out,
        "--dump-logits",
        out,
    ];
    late_usage_error(
        &talkback(&args),
        &same("--dump-logits", out, &format!("--trace {out}")),
    );
    assert!(
        !scratch.join("out.bin").exists(),
        "a refused run left a file"
    );

    // A device takes both outputs.
    let null = "/dev/null";
    let args = [
        "complete",
        "hi",
        "-n",
        "2",
        "-t",
        "1",
        "--trace",
        null,
        "--dump-logits",
        null,
    ];
    let run = talkback(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // A link to a file not made yet names that file: a second output at
    // its end is the same file, and a run that fails removes the file it
    // made there, not the link.
    let target = scratch.join("target.json");
    let dangling = scratch.join("dangling.json");
    std::os::unix::fs::symlink("target.json", &dangling).expect("link to nowhere");
    let (target_arg, dangling_arg) = (arg(&target), arg(&dangling));
    let args = [
        "complete",
        "hi",
        "-n",
        "2",
        "--trace",
        dangling_arg,
        "--dump-logits",
        target_arg,
    ];
    late_usage_error(
        &talkback(&args),
        &same(
            "--dump-logits",
            target_arg,
            &format!("--trace {dangling_arg}"),
        ),
    );
    let long = "a ".repeat(40);
    let run = talkback(&[
        "complete",
        &long,
        "-c",
        "16",
        "-n",
        "2",
        "--trace",
        dangling_arg,
    ]);
    runtime_error(&run, "but the context holds only 16");
    assert!(!target.exists(), "the file made at the link's end was left");
    assert!(
        std::fs::symlink_metadata(&dangling).is_ok(),
        "the link itself was removed"
    );
}

#[test]
fn an_output_that_is_the_file_stdout_goes_to_is_refused() {
    // The trace replaced the generated text with exit 0.
    let scratch = Scratch::new("stdout-clash");
    let out = scratch.join("out.txt");
    let stdout_path = arg(&out);
    // A short run with an output flag, stdout redirected to `out`.
    let run_into_out = |flag: &str, path: &str| {
        let file = std::fs::File::create(&out).expect("create the output");
        let mut cmd =
            reliability_support::command(&["complete", "hi", "-n", "2", "-t", "1", flag, path]);
        cmd.stdin(std::process::Stdio::null()).stdout(file);
        let done = cmd.output().expect("run talkback");
        let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
        (done.status.code(), stderr)
    };
    for (flag, path) in [
        ("--trace", stdout_path),
        ("--dump-logits", stdout_path),
        ("--trace", "/dev/stdout"),
    ] {
        let (code, stderr) = run_into_out(flag, path);
        assert_eq!(code, Some(2), "{flag} {path}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "talkback: {flag} {path} is where stdout goes, and would write into the \
                 output; give it a path of its own\n"
            )
        );
    }

    for flag in ["--trace", "--dump-logits"] {
        let run = talkback(&["complete", "hi", "-n", "2", flag, "-"]);
        late_usage_error(
            &run,
            &format!(
                "{flag} takes a file path, and stdout carries the generated text; for a \
                 file named `-`, write ./-"
            ),
        );
    }
    assert!(
        !std::path::Path::new("-").exists(),
        "a file named - was made"
    );

    // A pipe too, and the file stdin reads.
    let run = talkback(&["complete", "hi", "-n", "2", "--trace", "/dev/stdout"]);
    late_usage_error(
        &run,
        "--trace /dev/stdout is where stdout goes, and would write into the output; give \
         it a path of its own",
    );
    let input = scratch.write("in.txt", b"Once upon a time");
    let mut cmd = reliability_support::command(&["complete", "-n", "2", "--trace", arg(&input)]);
    cmd.stdin(std::fs::File::open(&input).expect("open the input"));
    let done = cmd.output().expect("run talkback");
    assert_eq!(done.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&done.stderr),
        format!(
            "talkback: --trace {} is what stdin reads, and would overwrite the input; give \
             it a path of its own\n",
            arg(&input)
        )
    );
    assert_eq!(std::fs::read(&input).expect("input"), b"Once upon a time");

    // Another file is fine.
    let trace = scratch.join("trace.json");
    let (code, stderr) = run_into_out("--trace", arg(&trace));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(std::fs::metadata(&out).expect("output").len() > 0);
    assert!(std::fs::metadata(&trace).expect("trace").len() > 0);
}

#[test]
fn a_model_path_that_is_not_utf8_loads() {
    use std::os::unix::ffi::OsStrExt as _;
    // llama.cpp's loader takes UTF-8 text, and such a path was refused; it
    // is now given the kept file's own path under /proc.
    let scratch = Scratch::new("non-utf8-path");
    let link = scratch
        .join("placeholder")
        .with_file_name(std::ffi::OsStr::from_bytes(b"bad\xffname.gguf"));
    std::os::unix::fs::symlink(reliability_support::model(), &link).expect("link the model");
    let mut cmd = reliability_support::command(&[
        "complete", "hi", "-n", "2", "--seed", "1", "-t", "1", "-m",
    ]);
    cmd.arg(&link);
    let run = start(cmd, None).finish();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plain = talkback(&["complete", "hi", "-n", "2", "--seed", "1", "-t", "1"]);
    assert_eq!(run.stdout, plain.stdout);
}

#[test]
fn a_logits_dump_that_cannot_be_written_fails_before_the_model_loads() {
    // The model does not exist either: a dump opened only after the model
    // loads reported the model, and a bad dump path cost a whole load.
    let scratch = Scratch::new("dump-first");
    let missing = scratch.join("absent.gguf");
    let dump = scratch.join("no-such-folder").join("logits.f32");
    let (missing, dump) = (arg(&missing), arg(&dump));
    for command in ["complete", "chat"] {
        let run = talkback(&[
            command,
            "hi",
            "-n",
            "2",
            "-m",
            missing,
            "--dump-logits",
            dump,
        ]);
        let line = runtime_error(&run, "");
        assert_eq!(
            line,
            format!(
                "talkback: cannot write logits dump {dump}: No such file or directory (os error 2)"
            ),
            "{command}"
        );
    }

    // A run that fails before any logits leaves no empty file behind; one
    // that ends writes its records over an older, longer file.
    let fresh = scratch.join("fresh.f32");
    let run = talkback(&[
        "complete",
        "hi",
        "-m",
        missing,
        "--dump-logits",
        arg(&fresh),
    ]);
    runtime_error(&run, "does not exist");
    assert!(!fresh.exists(), "a refused run left a file");
    // A run that fails after the model has loaded but before the first
    // step's logits leaves an older file as it was.
    let kept = scratch.write("kept.bin", b"precious\n");
    let prompt = "a ".repeat(40);
    let run = talkback(&[
        "complete",
        &prompt,
        "-c",
        "16",
        "-n",
        "2",
        "--dump-logits",
        arg(&kept),
    ]);
    runtime_error(&run, "but the context holds only 16");
    let left = std::fs::read(&kept).expect("the older file");
    assert_eq!(left, b"precious\n", "a run with no logits emptied the file");
    let old = scratch.write("old.f32", &[7; 1 << 20]);
    let run = talkback(&[
        "complete",
        "hi",
        "-n",
        "2",
        "-t",
        "1",
        "--dump-logits",
        arg(&old),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let len = std::fs::metadata(&old).expect("the dump").len();
    assert_eq!(len, 2 * 49_152 * 4, "two records of the default vocabulary");
}

#[test]
fn model_without_a_chat_template_says_what_each_command_can_do() {
    // The key renamed by its last letter: the file stays valid, with no
    // template. `shape` and `plot` were told to use --chat-template, which
    // they do not take.
    let scratch = Scratch::new("no-template");
    let layout = Layout::of_model();
    let last = layout.key_type_at("tokenizer.chat_template") - 1;
    let model = scratch.model_with("plain.gguf", &[(last, b"E")]);
    let model = arg(&model);
    let without = format!("talkback: model {model} has no chat template; ");
    let run = talkback(&["chat", "Hi", "--render-only", "-m", model]);
    let line = runtime_error(&run, &without);
    assert!(
        line.ends_with("use `complete`, or give one with --chat-template FILE"),
        "{line}"
    );
    let chart = scratch.join("chart.svg");
    for args in [
        vec!["shape", "--chat", "Hi", "-m", model],
        vec![
            "plot",
            "--chat",
            "Hi",
            "-n",
            "1",
            "-m",
            model,
            "-o",
            arg(&chart),
        ],
    ] {
        let line = runtime_error(&talkback(&args), &without);
        assert!(
            line.ends_with("leave out --chat to give the prompt as raw text"),
            "{line}"
        );
    }
    let run = talkback(&["shape", "Hi", "-m", model, "-t", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn an_endless_input_is_refused_at_its_size_limit() {
    // Each used to be read to its end, which /dev/zero never reaches: the
    // process grew until the system killed it.
    let zero = "/dev/zero";
    for (args, line) in [
        (
            vec!["chat", "Hi", "--messages", zero],
            "talkback: cannot read messages /dev/zero: it holds more than 64 MiB",
        ),
        (
            vec!["chat", "Hi", "--chat-template", zero],
            "talkback: cannot read chat template /dev/zero: it holds more than 64 MiB",
        ),
        (
            vec!["replay", zero],
            "talkback: cannot read trace /dev/zero: it holds more than 256 MiB",
        ),
    ] {
        assert_eq!(runtime_error(&talkback(&args), line), line);
    }
    for (sub, what) in [("complete", "prompt"), ("chat", "message")] {
        let mut cmd = reliability_support::command(&[sub]);
        cmd.stdin(std::fs::File::open(zero).expect("open /dev/zero"));
        let output = cmd.output().expect("run talkback");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{sub}: {stderr}");
        assert_eq!(
            stderr,
            format!("talkback: cannot read the {what} from stdin: it holds more than 64 MiB\n")
        );
    }
}

#[test]
fn a_prompt_above_a_mebibyte_is_refused_before_any_tokenizer_sees_it() {
    // Digits: a run that llama.cpp's pre-tokenizer regexes recurse on.
    let text = vec![b'7'; (1 << 20) + 1];
    for args in [
        &["complete", "-n", "1", "-c", "8192"][..],
        &["chat", "-n", "1"],
    ] {
        let run = talkback_stdin(args, &text);
        let line = runtime_error(&run, "the prompt is ");
        assert!(
            line.contains("bytes of text, more than the 1048576 talkback tokenizes at once"),
            "{args:?}: {line}"
        );
    }
}

/// `talkback args` under `ulimit -v kib`, through `sh`.
fn under_address_limit(kib: u64, args: &[&str]) -> reliability_support::Run {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""));
    through(cmd, args)
}

#[test]
fn a_limited_address_space_gets_a_smaller_stack_and_smaller_inputs() {
    // The command's 1 GiB stack could not be reserved under `ulimit -v`
    // 1000000: every command failed, even --version; a little above, the
    // first allocation that did not fit aborted the process, and llama.cpp's
    // refusals blamed the model.
    let run = under_address_limit(60_000, &["--version"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let args = [
        "complete",
        "Once upon a time",
        "-n",
        "2",
        "--seed",
        "1",
        "-t",
        "1",
    ];
    let run = under_address_limit(800_000, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = under_address_limit(300_000, &args);
    let line = runtime_error(&run, "cannot load model");
    assert!(
        line.ends_with(
            "the address space is limited to 292 MiB (ulimit -v), which may be too little"
        ),
        "{line}"
    );
    // A quarter of 800 MB holds a stack of 64 MiB, not 256: inputs that the
    // full stack takes are refused, naming the smaller bounds and why.
    let lowered = "(lowered from the usual, since the address space is limited to 781 MiB \
                   by ulimit -v)";
    let scratch = Scratch::new("address-limit");
    let deep = format!("{{{{ {}1 }}}}", "-".repeat(17_000));
    let template = scratch.write("deep.jinja", deep.as_bytes());
    let run = under_address_limit(
        800_000,
        &[
            "chat",
            "Hi",
            "--render-only",
            "--chat-template",
            arg(&template),
        ],
    );
    let line = runtime_error(&run, "talkback takes templates of at most 16384");
    assert!(line.ends_with(lowered), "{line}");
    let prompt = "1".repeat(70_000);
    let run = under_address_limit(800_000, &["complete", &prompt, "-n", "1", "-c", "8192"]);
    let line = runtime_error(&run, "more than the 65536 talkback tokenizes at once");
    assert!(line.ends_with(&format!("{lowered}; shorten it")), "{line}");
}

#[test]
fn a_file_name_with_a_line_break_stays_on_the_error_line() {
    let run = talkback(&["complete", "Hi", "-m", "no\nsuch.gguf"]);
    runtime_error(&run, "model no\\nsuch.gguf does not exist");
}
