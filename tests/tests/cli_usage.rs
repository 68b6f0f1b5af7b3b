//! Help, version and usage errors: help goes to stdout with exit 0, a usage
//! error prints one message on stderr, nothing on stdout, and exits 2; a
//! runtime failure exits 1 with one line naming what failed.

// Helpers outside #[test] functions report failure by panicking too.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use talkback_tests::{talkback, Run};

/// Expects a usage error: exit 2, empty stdout, a clap message on stderr
/// that mentions `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let run = talkback(args);
    assert_eq!(run.code, 2, "{args:?}: stderr {}", run.stderr);
    assert!(run.stdout.is_empty(), "{args:?}: stdout {}", run.text());
    assert!(
        run.stderr.starts_with("error: "),
        "{args:?}: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "{args:?}: {needle:?} not in {}",
        run.stderr
    );
}

/// Expects a runtime error: exit 1, empty stdout, one line on stderr
/// prefixed with the program's name and mentioning `needle`.
fn runtime_error(run: &Run, needle: &str) {
    assert_eq!(run.code, 1, "stderr {}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout {}", run.text());
    assert!(run.stderr.starts_with("talkback: "), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(needle),
        "{needle:?} not in {}",
        run.stderr
    );
}

#[test]
fn help_lists_the_subcommands_and_exit_codes() {
    let run = talkback(&["--help"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let help = run.text();
    for command in ["chat", "complete", "replay", "plot", "shape"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
    let codes = help
        .split_once("Exit codes:")
        .expect("an exit code section")
        .1;
    for (code, meaning) in [
        ("0", "success"),
        ("1", "runtime failure"),
        ("2", "usage error"),
        ("130", "interrupted"),
    ] {
        assert!(
            codes.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with(code) && l[code.len()..].trim_start().starts_with(meaning)
            }),
            "exit code {code} ({meaning}) missing from:\n{codes}"
        );
    }
}

#[test]
fn every_subcommand_has_help_naming_its_flags() {
    let flags: [(&str, &[&str]); 5] = [
        (
            "chat",
            &[
                "--system",
                "--messages",
                "--render-only",
                "--format",
                "--trace",
                "--stop",
            ],
        ),
        (
            "complete",
            &[
                "--parse-special",
                "--format",
                "--trace",
                "--ignore-eos",
                "-n",
            ],
        ),
        ("replay", &["--model", "--threads"]),
        ("plot", &["--top-p", "--temp", "--out", "--seed"]),
        ("shape", &["--logits", "--rows", "--chat", "--format"]),
    ];
    for (command, names) in flags {
        let run = talkback(&[command, "--help"]);
        assert_eq!(run.code, 0, "{command}: {}", run.stderr);
        assert!(run.stderr.is_empty(), "{command}: {}", run.stderr);
        for name in names {
            assert!(run.text().contains(name), "{command} --help lacks {name}");
        }
    }
    let generation = talkback(&["complete", "--help"]);
    for range in [
        "(0..=1)",
        "(>= 0, finite)",
        "[default: 0.8]",
        "[default: 40]",
    ] {
        assert!(
            generation.text().contains(range),
            "complete --help lacks {range}"
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let run = talkback(&["--version"]);
    assert_eq!(run.code, 0);
    let want = format!("talkback {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(run.text().trim_end(), want);
}

#[test]
fn bad_flags_and_values_are_usage_errors() {
    let cases: [(&[&str], &str); 20] = [
        (&["complete", "x", "--bogus"], "--bogus"),
        (&["chat", "x", "--bogus"], "--bogus"),
        (&["complete", "x", "--top-p", "1.5"], "between 0 and 1"),
        (&["complete", "x", "--top-p", "-0.1"], "between 0 and 1"),
        (&["complete", "x", "--min-p", "2"], "between 0 and 1"),
        (&["chat", "x", "--temp", "nan"], "finite"),
        (&["chat", "x", "--temp", "inf"], "finite"),
        (&["complete", "x", "--temp", "-1"], "zero or more"),
        (&["complete", "x", "--temp", "warm"], "not a number"),
        (&["complete", "x", "-n", "0"], "--n-predict"),
        (
            &["complete", "x", "--stop", ""],
            "stop string cannot be empty",
        ),
        (&["chat", "x", "--repeat-penalty", "0"], "more than zero"),
        (&["complete", "x", "--format", "xml"], "xml"),
        (&["complete", "x", "--sampler", "greedy"], "greedy"),
        (
            &["complete", "x", "--sampler-order", "top-q"],
            "unknown stage",
        ),
        (&["complete", "x", "--ctx-size", "8"], "--ctx-size"),
        (&["shape", "x", "--logits", "1,2"], "cannot be used with"),
        (&["shape", "--logits", "0,1e39"], "out of range"),
        (&["chat", "x", "--min-p", "1e39"], "out of range"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        usage_error(args, needle);
    }
}

#[test]
fn flags_that_do_not_go_together_are_usage_errors() {
    // The model does not exist: the flags are refused before it would load.
    let run = talkback(&[
        "complete",
        "x",
        "--sampler",
        "llama.cpp",
        "--trace",
        "/nonexistent/trace.json",
        "--model",
        "/nonexistent/m.gguf",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    assert!(run.stderr.starts_with("talkback: "), "{}", run.stderr);
    assert!(run.stderr.contains("--sampler talkback"), "{}", run.stderr);

    // A value of thousands of characters, quoted twice by the parser's
    // error, is cut in the middle as every error line is.
    let long = "9".repeat(5000);
    let run = talkback(&["complete", "--temp", &long, "Hi"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.iter().all(|l| l.chars().count() < 1100), "{lines:?}");
    assert!(
        lines[0].starts_with("error: invalid value '9999"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" characters left out ...] "),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with("is out of range: a 32-bit float holds at most about 3.4e38"));
    assert_eq!(lines.last(), Some(&"For more information, try '--help'."));
    // A value of many lines is written on one, as in talkback's own errors.
    let run = talkback(&["complete", "--temp", &"x\n".repeat(3000), "Hi"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 3, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: invalid value 'x\\nx\\nx"),
        "{}",
        run.stderr
    );

    // Logits typed on the command line that hold nothing to draw are
    // the user's to fix, as a bad flag value is.
    for logits in ["-inf,nan", "nan", "-inf"] {
        let run = talkback(&["shape", &format!("--logits={logits}")]);
        assert_eq!(run.code, 2, "{logits}: {}", run.stderr);
        assert_eq!(
            run.stderr,
            "talkback: cannot shape these logits: every logit is NaN or negative infinity\n"
        );
    }

    // --render-only generates nothing: no trace to write, and the prompt
    // comes out as the model reads it.
    for extra in [
        &["--format", "json"][..],
        &["--format", "jsonl"],
        &["--trace", "/nonexistent/trace.json"],
    ] {
        let args = [
            &[
                "chat",
                "Hi",
                "--render-only",
                "--model",
                "/nonexistent/m.gguf",
            ][..],
            extra,
        ]
        .concat();
        let run = talkback(&args);
        assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{extra:?}: {}", run.text());
        assert!(
            run.stderr.starts_with("talkback: --render-only"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn stop_strings_past_the_stream_limits_are_usage_errors_before_loading() {
    let long = "x".repeat(257);
    usage_error(
        &["complete", "x", "--stop", &long],
        "exceeds the limit of 256 bytes",
    );

    // A model that does not exist shows that the count is refused before
    // anything is loaded.
    let mut args = vec!["complete", "x", "--model", "/nonexistent/m.gguf"];
    let stops: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    for stop in &stops {
        args.extend(["--stop", stop]);
    }
    let run = talkback(&args);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    assert_eq!(
        run.stderr.trim_end(),
        "talkback: invalid settings: stop string \"s16\": too many stop strings (at most 16)"
    );
    let sixteen = args.len() - 2;
    let run = talkback(&args[..sixteen]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
}

#[test]
fn missing_arguments_are_usage_errors() {
    usage_error(&["replay"], "<TRACE>");
    usage_error(&["plot"], "<PROMPT>");
    // Either input will do, and the error names both.
    usage_error(&["shape"], "<PROMPT|--logits <LOGITS>>");
    let bare = talkback(&[]);
    assert_eq!(bare.code, 2, "{}", bare.stderr);
    assert!(bare.stdout.is_empty());
    assert!(bare.stderr.contains("Usage:"), "{}", bare.stderr);
}

#[test]
fn usage_lines_name_the_program_talkback_whatever_it_was_run_as() {
    // Run through a link of another name, as a packaged or renamed binary
    // is: clap's own usage errors and talkback's agree on the name.
    let link = std::env::temp_dir().join(format!("tb-renamed-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(talkback_tests::binary(), &link).expect("link");
    let run = |args: &[&str]| {
        std::process::Command::new(&link)
            .args(args)
            .output()
            .expect("run the link")
    };
    let missing = run(&["shape"]);
    let refused = run(&["shape", "--logits", "1,2", "--seed", "3"]);
    let _ = std::fs::remove_file(&link);
    for out in [missing, refused] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("Usage: talkback shape "), "{stderr}");
        assert!(!stderr.contains("tb-renamed"), "{stderr}");
    }
}

#[test]
fn a_negative_penalty_is_a_value_not_a_flag() {
    let run = talkback(&[
        "complete",
        "x",
        "--presence-penalty",
        "-0.5",
        "--frequency-penalty",
        "-1",
        "-n",
        "1",
        "--threads",
        "1",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let settings = &run.json()["settings"];
    assert_eq!(settings["presence_penalty"], -0.5);
    assert_eq!(settings["frequency_penalty"], -1.0);
}

#[test]
fn a_missing_or_broken_model_is_a_runtime_error_naming_it() {
    let path = std::env::temp_dir().join(format!("talkback-cli-usage-{}.gguf", std::process::id()));
    let path_arg = path.to_str().expect("UTF-8 temp path");
    let _ = std::fs::remove_file(&path);
    runtime_error(&talkback(&["complete", "x", "--model", path_arg]), path_arg);

    std::fs::write(&path, "not a model").expect("write");
    let run = talkback(&["chat", "x", "--model", path_arg]);
    let _ = std::fs::remove_file(&path);
    runtime_error(&run, path_arg);
    assert!(run.stderr.contains("GGUF"), "{}", run.stderr);

    // A path that is all blanks is quoted, or the message shows none.
    let run = talkback(&["complete", "x", "--model", "  "]);
    runtime_error(&run, "model `  ` does not exist");
}

#[test]
fn a_stage_flag_for_a_stage_the_order_leaves_out_is_refused() {
    // Every order includes temperature, so only the truncations can be left out.
    for (flag, value, stage) in [("--min-p", "0.1", "min-p"), ("--top-k", "3", "top-k")] {
        let run = talkback(&[
            "shape",
            "--logits",
            "1,2,3",
            "--sampler-order",
            "temp,top-p",
            flag,
            value,
        ]);
        assert_eq!(run.code, 2, "{flag}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{flag}: {}", run.text());
        assert_eq!(
            run.stderr,
            format!(
                "talkback: {flag} has no effect: --sampler-order leaves out the {stage} \
                 stage; add it to the order or drop the flag\n"
            )
        );
    }
    // Defaults of the stages left out are no request, and a flag for a
    // stage in the order is taken.
    for extra in [&[][..], &["--top-p", "0.5"]] {
        let args = [
            &[
                "shape",
                "--logits",
                "1,2,3",
                "--sampler-order",
                "temp,top-p",
            ][..],
            extra,
        ]
        .concat();
        let run = talkback(&args);
        assert_eq!(run.code, 0, "{extra:?}: {}", run.stderr);
    }
}

#[test]
fn gpu_layers_need_a_gpu_build() {
    usage_error(
        &["complete", "hi", "--gpu-layers", "1"],
        "this build has no GPU backend",
    );
    // As every whole-number flag: a minus is read, and -0 is 0.
    usage_error(
        &["chat", "hi", "--gpu-layers", "-1"],
        "-1 is not in 0..=4294967295",
    );
    let run = talkback(&["chat", "hi", "--gpu-layers", "-0", "--render-only"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[cfg(unix)]
#[test]
fn arguments_that_are_not_utf8_are_usage_errors() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    let bad = OsStr::from_bytes(b"x\xffy");
    let cases: [&[&OsStr]; 5] = [
        &[OsStr::new("complete"), bad],
        &[
            OsStr::new("chat"),
            OsStr::new("hi"),
            OsStr::new("--system"),
            bad,
        ],
        &[OsStr::new("shape"), OsStr::new("--logits"), bad],
        &[bad],
        // A path may be any bytes; the other flag's error is the one shown.
        &[
            OsStr::new("complete"),
            OsStr::new("hi"),
            OsStr::new("--temp"),
            OsStr::new("-5"),
            OsStr::new("--trace"),
            bad,
        ],
    ];
    for args in cases {
        let out = std::process::Command::new(talkback_tests::binary())
            .args(args)
            .output()
            .expect("talkback runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn negative_named_floats_are_values_not_flags() {
    for (flag, value) in [
        ("--temp", "-inf"),
        ("--presence-penalty", "-inf"),
        ("--temp", "-Infinity"),
        ("--frequency-penalty", "-NaN"),
        ("--top-p", "-nan"),
        ("--repeat-penalty", "-inf"),
    ] {
        usage_error(
            &["complete", "hi", flag, value],
            &format!("invalid value '{value}' for '{flag} "),
        );
    }
    usage_error(
        &["plot", "hi", "--min-p", "0.1,-inf"],
        "`-inf` must be a finite number",
    );
}

#[test]
fn whole_number_flags_read_a_hyphen_value_as_theirs() {
    // As the float flags do: the value is refused by name, not taken for
    // a cluster of short flags or the next flag's name.
    for (flag, value) in [
        ("-c", "-inf"),
        ("--top-k", "-x"),
        ("-n", "--seed"),
        ("--seed", "-1.5"),
        ("--threads", "-"),
    ] {
        usage_error(
            &["complete", "hi", flag, value],
            &format!("`{value}` is not a whole number"),
        );
    }
    usage_error(&["complete", "hi", "--top-k", "-3"], "-3 is not in 0..=");
}

#[test]
fn shape_with_given_logits_refuses_the_model_flags() {
    for (flag, value, named) in [
        ("-m", "/nonexistent.gguf", "--model <PATH>"),
        ("-c", "64", "--ctx-size"),
        ("-t", "2", "--threads"),
        ("-b", "8", "--batch-size"),
    ] {
        usage_error(
            &["shape", "--logits", "1,2", flag, value],
            &format!("the argument '--logits <LOGITS>' cannot be used with '{named}"),
        );
    }
    let run = talkback(&["shape", "--logits", "1,2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}
