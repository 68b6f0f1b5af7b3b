//! Streams and signals: a reader that stops early, Ctrl-C and SIGTERM
//! during generation, and the interactive chat's end of input, Ctrl-C and
//! SIGTERM.
//!
//! The chat needs a terminal, so it runs under `script` (util-linux),
//! which gives it a pseudo-terminal; keys are written to `script`'s stdin
//! and reach the chat as typed: `\r` for Enter, `\x04` for Ctrl-D (end of
//! input at an empty prompt) and `\x03` for Ctrl-C, which the terminal
//! turns into SIGINT for the chat.
//!
//! Ctrl-C during a chat reply used to be ignored: rustyline replaces the
//! SIGINT handler for as long as an editor exists. The chat now keeps an
//! editor only while it reads a line.

// Helpers outside `#[test]` functions stop the test with a message on any
// surprise, as the tests themselves do.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

mod reliability_support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use reliability_support::{
    binary, command, hang_up, interrupt, interrupt_twice, model, no_crash, talkback, terminate,
    wait, Scratch, Tail,
};

#[test]
fn closing_stdout_after_ten_bytes_exits_zero_quietly() {
    let scratch = Scratch::new("closed-stdout");
    for format in ["text", "jsonl"] {
        // A trace from an earlier run, which this one must replace.
        let trace = scratch.write(&format!("{format}.json"), b"stale");
        let mut cmd = command(&[
            "complete",
            "Once upon a time",
            "-n",
            "2000",
            "--ignore-eos",
            "--seed",
            "3",
            "--format",
            format,
            "--trace",
            trace.to_str().expect("UTF-8 path"),
            "--threads",
            "1",
        ]);
        let mut child = cmd.stdin(Stdio::null()).spawn().expect("start talkback");
        let stderr = Tail::follow(child.stderr.take().expect("stderr"));
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0_u8; 10];
        stdout.read_exact(&mut first).expect("ten bytes of output");
        // What `head -c 10` does: stop reading and close the pipe.
        drop(stdout);
        let status = wait(&mut child);
        let stderr = String::from_utf8_lossy(&stderr.all()).into_owned();
        assert_eq!(
            status.code(),
            Some(0),
            "{format}: {status}; stderr: {stderr}"
        );
        assert_eq!(stderr, "", "{format}: stderr must stay empty");

        // The run ended as Ctrl-C ends one: what it generated is traced.
        let text = std::fs::read_to_string(&trace).expect("read the trace");
        let t: serde_json::Value = serde_json::from_str(&text).expect("a JSON trace");
        assert_eq!(t["finish_reason"], "interrupted", "{format}");
        assert_eq!(t["prompt"]["text"], "Once upon a time", "{format}");
        let steps = t["steps"].as_array().map_or(0, Vec::len);
        assert!((1..2000).contains(&steps), "{format}: {steps} steps");
        let replay = talkback(&["replay", trace.to_str().expect("UTF-8 path")]);
        assert_eq!(replay.code, 0, "{format}: {}", replay.stderr);
        assert!(
            String::from_utf8_lossy(&replay.stdout).starts_with("replay ok: "),
            "{format}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_stdout_that_refuses_writes_is_a_failure_naming_stdout() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["complete", "hi", "-n", "2", "--threads", "1"],
        &["plot", "hi", "-n", "2", "--threads", "1", "-o", "-"],
    ] {
        let full = std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let out = command(args)
            .stdin(Stdio::null())
            .stdout(full)
            .output()
            .expect("run talkback");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            "talkback: cannot write to stdout: No space left on device (os error 28)",
            "{args:?}"
        );
    }
}

#[test]
fn a_broken_pipe_outside_stdout_is_a_failure_naming_the_file() {
    // The dump's reader leaves after one byte; the first record alone
    // (49152 logits) is larger than a pipe holds, so the write must fail.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(
            r#""$0" complete "Once upon a time" -n 8 --ignore-eos --seed 3 --threads 1 \
               --dump-logits >(head -c 1 >/dev/null)"#,
        )
        .arg(binary())
        .env("TALKBACK_MODEL", model())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = reliability_support::start(cmd, None).finish();
    let line = reliability_support::runtime_error(&run, "cannot write logits dump /dev/fd/");
    assert!(line.ends_with("Broken pipe (os error 32)"), "{line}");

    let run = talkback(&[
        "complete",
        "Once upon a time",
        "-n",
        "2",
        "--threads",
        "1",
        "--dump-logits",
        "/dev/full",
    ]);
    let line = reliability_support::runtime_error(&run, "cannot write logits dump /dev/full: ");
    assert!(line.ends_with("(os error 28)"), "{line}");
}

/// Runs talkback with `args` under a limit of `kib` KiB on the size of
/// any file it writes, with SIGXFSZ at its default: a write past the limit
/// raises it, and it used to kill talkback (exit 153), leaving the new
/// trace's file beside the old one and a record cut in two. Caught, the
/// write fails as a write to a full disk does.
fn under_file_limit(kib: u32, args: &[&str]) -> reliability_support::Run {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            r#"ulimit -f {kib} && trap - XFSZ && exec "$0" "$@""#
        ))
        .arg(binary())
        .args(args)
        .env("TALKBACK_MODEL", model())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    reliability_support::start(cmd, None).finish()
}

/// The names of the files in `folder`, sorted.
fn names_in(folder: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .expect("read the scratch folder")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_trace_or_chart_that_cannot_be_written_whole_leaves_the_old_file() {
    // The file used to be emptied first and then written in place: a
    // full disk left a third of a trace, and no earlier one.
    let scratch = Scratch::new("trace-limit");
    let old = b"{\"an\": \"earlier trace, kept whole\"}\n";
    let trace = scratch.write("run.json", old);
    let run = under_file_limit(
        1,
        &[
            "complete",
            "Once upon a time",
            "-n",
            "100",
            "--ignore-eos",
            "--seed",
            "1",
            "--threads",
            "1",
            "--trace",
            reliability_support::arg(&trace),
        ],
    );
    let line = reliability_support::runtime_error(&run, "cannot write trace ");
    assert!(line.ends_with("File too large (os error 27)"), "{line}");
    assert_eq!(std::fs::read(&trace).expect("the old trace"), old);
    assert_eq!(names_in(&scratch.join("")), ["run.json"], "a file was left");

    let chart = scratch.write("chart.svg", b"<svg/>");
    let run = under_file_limit(
        1,
        &[
            "plot",
            "Once upon a time",
            "-n",
            "4",
            "--top-p",
            "0.5,0.9",
            "--threads",
            "1",
            "-o",
            reliability_support::arg(&chart),
        ],
    );
    reliability_support::runtime_error(&run, "cannot write chart ");
    assert_eq!(std::fs::read(&chart).expect("the old chart"), b"<svg/>");
    assert_eq!(names_in(&scratch.join("")), ["chart.svg", "run.json"]);
}

#[test]
fn a_dump_cut_short_by_a_failed_write_holds_whole_records_only() {
    let scratch = Scratch::new("dump-limit");
    let record = 49_152 * 4;
    let dump = scratch.join("logits.f32");
    let args = |n: &'static str| {
        [
            "complete",
            "Once upon a time",
            "-n",
            n,
            "--ignore-eos",
            "--seed",
            "1",
            "--threads",
            "1",
            "--dump-logits",
            reliability_support::arg(&dump),
        ]
    };
    // Not even one record fits: the new file is removed again.
    let run = under_file_limit(64, &args("3"));
    let line = reliability_support::runtime_error(&run, "cannot write logits dump ");
    assert!(line.ends_with("File too large (os error 27)"), "{line}");
    assert!(!dump.exists(), "a dump with no whole record was left");

    // Two records fit in 400 KiB, not three: the third's first part used
    // to stay behind, and a reader counted a step too many.
    let run = under_file_limit(400, &args("5"));
    reliability_support::runtime_error(&run, "cannot write logits dump ");
    let len = std::fs::metadata(&dump).expect("the dump").len();
    assert_eq!(len, 2 * record, "not whole records");
}

#[test]
fn a_run_that_fails_at_a_step_prints_what_it_generated_in_every_format() {
    // The third step's dump record does not fit under the file limit. Text
    // had shown the two tokens before it, jsonl only the first (the second
    // waited for its text), and json nothing at all.
    let scratch = Scratch::new("fails-at-a-step");
    let dump = scratch.join("logits.f32");
    let trace = scratch.join("run.json");
    let run = |format: &str| {
        let run = under_file_limit(
            400,
            &[
                "complete",
                "Once upon a time",
                "-n",
                "5",
                "--ignore-eos",
                "--seed",
                "1",
                "--threads",
                "1",
                "--format",
                format,
                "--dump-logits",
                reliability_support::arg(&dump),
                "--trace",
                reliability_support::arg(&trace),
            ],
        );
        reliability_support::runtime_error(&run, "cannot write logits dump ");
        assert!(!trace.exists(), "{format}: a failed run has no trace");
        String::from_utf8(run.stdout).expect("UTF-8")
    };
    let text = run("text");
    let json: serde_json::Value = serde_json::from_str(&run("json")).expect("one JSON object");
    assert_eq!(json["text"], text.as_str());
    assert_eq!(json["generated_tokens"], 2);
    assert_eq!(json["finish_reason"], "error");
    let why = json["error"].as_str().expect("the error");
    assert!(why.starts_with("cannot write logits dump "), "{why}");
    let events: Vec<serde_json::Value> = run("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let (last, tokens) = events.split_last().expect("events");
    assert_eq!(tokens.len(), 2, "{events:?}");
    let streamed: String = tokens
        .iter()
        .map(|e| e["text"].as_str().expect("text"))
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(last["event"], "summary");
    assert_eq!(last["finish_reason"], "error");
    assert_eq!(last["error"], json["error"]);
}

#[test]
fn json_output_is_printed_whole_when_the_trace_cannot_be_written() {
    // The summary comes after the trace is written, and used to be lost
    // with it; text, streamed before, was always printed whole.
    for format in ["json", "jsonl"] {
        let run = talkback(&[
            "complete",
            "Once upon a time",
            "-n",
            "3",
            "--ignore-eos",
            "--seed",
            "1",
            "--threads",
            "1",
            "--format",
            format,
            "--trace",
            "/dev/full",
        ]);
        let line = reliability_support::runtime_error(&run, "cannot write trace /dev/full: ");
        assert!(line.ends_with("(os error 28)"), "{format}: {line}");
        let text = run.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), if format == "json" { 1 } else { 4 }, "{text}");
        let last: serde_json::Value =
            serde_json::from_str(lines.last().copied().unwrap_or("")).expect("a JSON summary");
        assert_eq!(last["finish_reason"], "length", "{format}: {last}");
        assert_eq!(last["generated_tokens"], 3, "{format}: {last}");
    }
}

#[test]
fn a_run_killed_by_a_signal_it_does_not_catch_leaves_no_new_file() {
    // The trace and chart files used to be made when the run started, and
    // a run ended by SIGQUIT (Ctrl-\), SIGUSR1 or SIGALRM left them empty.
    let scratch = Scratch::new("uncaught");
    let trace = scratch.join("new.json");
    let mut child = command(&[
        "complete",
        "Once upon a time",
        "-n",
        "3000",
        "--ignore-eos",
        "--threads",
        "1",
        "--trace",
        reliability_support::arg(&trace),
    ])
    .stdin(Stdio::null())
    .spawn()
    .expect("start talkback");
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    stdout.wait_for(0, "generated text", |b| b.len() > 20);
    reliability_support::signal(child.id(), "USR1");
    let status = wait(&mut child);
    assert_eq!(status.code(), None, "{status}");
    assert_eq!(names_in(&scratch.join("")), Vec::<String>::new());
}

#[test]
fn a_trace_that_fails_outranks_a_reader_that_left() {
    // With json output nothing is printed until the summary; the summary
    // failed on the closed pipe first and the run exited 0, its trace lost
    // without a word.
    let mut child = command(&[
        "complete",
        "Once upon a time",
        "-n",
        "4",
        "--threads",
        "1",
        "--format",
        "json",
        "--trace",
        "/dev/full",
    ])
    .stdin(Stdio::null())
    .spawn()
    .expect("start talkback");
    drop(child.stdout.take());
    let stderr = Tail::follow(child.stderr.take().expect("stderr"));
    let status = wait(&mut child);
    let text = String::from_utf8_lossy(&stderr.all()).into_owned();
    assert_eq!(status.code(), Some(1), "{status}: {text}");
    assert!(
        text.starts_with("talkback: cannot write trace /dev/full: "),
        "{text}"
    );
}

#[test]
fn a_stderr_that_cannot_be_written_does_not_fail_the_run() {
    let args = [
        "-v",
        "complete",
        "Once upon a time",
        "-n",
        "5",
        "--seed",
        "3",
        "--threads",
        "1",
    ];
    let want = talkback(&args);
    assert_eq!(want.code, 0, "{}", want.stderr);
    assert!(
        want.stderr.contains("talkback: finished"),
        "{}",
        want.stderr
    );

    // A full disk, then a reader that has already gone.
    for closed in [false, true] {
        let mut cmd = command(&args);
        cmd.stdin(Stdio::null());
        if !closed {
            cmd.stderr(std::fs::File::create("/dev/full").expect("open /dev/full"));
        }
        let mut child = cmd.spawn().expect("start talkback");
        drop(child.stderr.take());
        let stdout = Tail::follow(child.stdout.take().expect("stdout"));
        let status = wait(&mut child);
        assert_eq!(status.code(), Some(0), "closed pipe {closed}: {status}");
        stdout.wait_for(0, "the whole text", |b| b.len() >= want.stdout.len());
        assert_eq!(stdout.all(), want.stdout, "closed pipe {closed}");
    }
}

/// Polls until a thread of process `pid` waits in `open` for the other end
/// of a named pipe; fails the test after a while.
fn wait_for_pipe_open(pid: u32) {
    wait_blocked(
        pid,
        &["wait_for_partner"],
        ("257 ", "56 "),
        "wait on the pipe",
    );
}

/// Polls until a thread of process `pid` waits in a write to a pipe that
/// is full; fails the test after a while.
fn wait_for_pipe_write(pid: u32) {
    // Named `anon_pipe_write` by newer kernels, `pipe_wait` by older ones.
    let wchan = ["pipe_write", "anon_pipe_write", "pipe_wait"];
    wait_blocked(pid, &wchan, ("1 ", "64 "), "block writing to the pipe");
}

/// Polls until a thread of process `pid` sleeps in a kernel function
/// named in `wchan`; fails the test, saying talkback never did `what`, after a
/// while.
///
/// Linux only: the kernel names the function in
/// `/proc/PID/task/TID/wchan`; where it hides wait channels (they read
/// 0), a thread in the system call numbered `syscall` (on x86-64, on
/// arm64) counts.
fn wait_blocked(pid: u32, wchan: &[&str], syscall: (&str, &str), what: &str) {
    let syscall = if cfg!(target_arch = "aarch64") {
        syscall.1
    } else {
        syscall.0
    };
    let waits = |task: &std::path::Path| {
        let read = |what: &str| std::fs::read_to_string(task.join(what));
        match read("wchan") {
            Ok(w) if !matches!(w.trim(), "" | "0") => wchan.contains(&w.trim()),
            _ => read("syscall").is_ok_and(|s| s.starts_with(syscall)),
        }
    };
    let started = std::time::Instant::now();
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        if tasks.is_ok_and(|mut t| t.any(|e| e.is_ok_and(|e| waits(&e.path())))) {
            return;
        }
        assert!(
            started.elapsed() < reliability_support::DEADLINE,
            "talkback never did {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts `talkback args` (which must hold `-v`) with no stdin, follows its
/// stdout and stderr, and returns once the model has loaded.
fn start_loaded(args: &[&str]) -> (std::process::Child, Tail, Tail) {
    let mut child = command(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start talkback");
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    let stderr = Tail::follow(child.stderr.take().expect("stderr"));
    stderr.wait_for(0, "the model to load", |b| {
        String::from_utf8_lossy(b).contains("tokens in vocabulary")
    });
    (child, stdout, stderr)
}

/// Makes a named pipe at `path`.
fn mkfifo(path: &std::path::Path) {
    let made = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
}

/// Starts `talkback args`, which checks that `created` can be made and
/// then waits on a pipe before the model loads; stops it with `stop` and
/// returns its exit code, once sure that no file `created` is left.
fn stop_while_waiting(
    args: &[&str],
    created: &std::path::Path,
    stop: impl FnOnce(&std::process::Child),
) -> Option<i32> {
    let mut child = command(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start talkback");
    wait_for_pipe_open(child.id());
    reliability_support::wait_for_handlers(child.id(), &[2, 15]);
    stop(&child);
    let status = wait(&mut child);
    assert!(
        !created.exists(),
        "the file this run created was left behind"
    );
    status.code()
}

#[test]
fn a_stop_request_while_waiting_on_a_pipe_ends_the_run_at_once() {
    // Opening a named pipe for writing waits for a reader, and a stdin
    // that stays open keeps the read of the prompt waiting: neither looks
    // at a flag, so before the model loads a stop request ends the run.
    let dir = Scratch::new("pipe-wait");
    let fifo = dir.join("dump.bin");
    mkfifo(&fifo);
    let trace = dir.join("trace.json");
    let fifo_arg = fifo.to_str().expect("UTF-8 temp path");
    let trace_arg = trace.to_str().expect("UTF-8 temp path");
    // The trace is checked (made and removed again) before the dump opens.
    let args = [
        "complete",
        "hi",
        "-n",
        "2",
        "--trace",
        trace_arg,
        "--dump-logits",
        fifo_arg,
    ];
    let code = stop_while_waiting(&args, &trace, |child| terminate(child.id()));
    assert_eq!(code, Some(143));

    let mut child = command(&["complete", "-n", "2"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start talkback");
    let stdin = child.stdin.take();
    reliability_support::wait_for_handlers(child.id(), &[2]);
    interrupt(&child);
    let status = wait(&mut child);
    drop(stdin);
    assert_eq!(status.code(), Some(130), "{status}");

    // The chat template is read before the model loads too.
    let template = dir.join("template.j2");
    mkfifo(&template);
    let template_arg = template.to_str().expect("UTF-8 temp path");
    let args = [
        "chat",
        "hi",
        "--chat-template",
        template_arg,
        "--trace",
        trace_arg,
    ];
    assert_eq!(stop_while_waiting(&args, &trace, interrupt), Some(130));
}

#[test]
fn a_second_stop_request_ends_a_run_stuck_in_a_write() {
    // A reader that opens the pipe and never reads: the first step's
    // logits (196,608 bytes) fill it, and the run waits in the write,
    // where it cannot look at the first request.
    let dir = Scratch::new("stuck-write");
    let fifo = dir.join("dump.bin");
    mkfifo(&fifo);
    let fifo = fifo.to_str().expect("UTF-8 temp path");
    let mut reader = Command::new("sh")
        .args(["-c", &format!("exec sleep 120 < '{fifo}'")])
        .spawn()
        .expect("start the reader");
    let (mut child, _stdout, _stderr) = start_loaded(&[
        "-v",
        "complete",
        "Once upon a time",
        "-n",
        "8",
        "--threads",
        "1",
        "--dump-logits",
        fifo,
    ]);
    wait_for_pipe_write(child.id());
    interrupt(&child);
    // Well past the half second within which a request counts as the
    // first one delivered twice.
    std::thread::sleep(std::time::Duration::from_millis(900));
    terminate(child.id());
    let status = wait(&mut child);
    let _ = reader.kill();
    let _ = reader.wait();
    assert_eq!(status.code(), Some(143), "{status}");
}

#[test]
fn a_replay_stopped_during_its_prompt_is_no_match() {
    // A stop during the replay's prompt used to end in "replay ok" when
    // the trace had no step. A trace with no step is now checked without
    // decoding its prompt; one with a step still decodes it.
    let scratch = Scratch::new("empty-replay");
    let trace = scratch.join("run.json");
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(100);
    let record = talkback(&[
        "complete",
        &prompt,
        "-n",
        "1",
        "--threads",
        "1",
        "--seed",
        "3",
        "--trace",
        trace.to_str().expect("UTF-8 temp path"),
    ]);
    assert_eq!(record.code, 0, "{}", record.stderr);
    let text = std::fs::read_to_string(&trace).expect("the trace");
    let mut t: serde_json::Value = serde_json::from_str(&text).expect("trace JSON");
    // One token a batch: the prompt takes seconds, with a look at the
    // request between two batches.
    t["settings"]["batch_size"] = 1.into();
    std::fs::write(&trace, t.to_string()).expect("write the trace");
    let (mut child, stdout, _stderr) = start_loaded(&[
        "-v",
        "replay",
        trace.to_str().expect("UTF-8 temp path"),
        "--threads",
        "1",
    ]);
    terminate(child.id());
    let status = wait(&mut child);
    let out = String::from_utf8_lossy(&stdout.all()).into_owned();
    assert_eq!(status.code(), Some(143), "{status}; stdout {out}");
    assert!(!out.contains("replay ok"), "{out}");
}

#[test]
fn ctrl_c_during_plot_exits_130_without_a_chart() {
    let out = std::env::temp_dir().join(format!("talkback-plot-int-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let (mut child, _stdout, stderr) = start_loaded(&[
        "-v",
        "plot",
        "Once upon a time",
        "-n",
        "64",
        "--top-p",
        "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
        "--threads",
        "1",
        "-o",
        out.to_str().expect("UTF-8 temp path"),
    ]);
    interrupt(&child);
    let status = wait(&mut child);
    let exists = out.exists();
    let _ = std::fs::remove_file(&out);
    let stderr = String::from_utf8_lossy(&stderr.all()).into_owned();
    assert_eq!(status.code(), Some(130), "{status}; stderr: {stderr}");
    no_crash(&stderr);
    assert!(!stderr.contains("wrote"), "{stderr}");
    assert!(!exists, "a chart of cut-short runs was written");
}

#[test]
fn ctrl_c_during_generation_keeps_the_text_and_exits_130() {
    let mut child = command(&[
        "complete",
        "Once upon a time",
        "-n",
        "3000",
        "--ignore-eos",
        "--seed",
        "3",
        "--threads",
        "1",
    ])
    .stdin(Stdio::null())
    .spawn()
    .expect("start talkback");
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    let stderr = Tail::follow(child.stderr.take().expect("stderr"));
    stdout.wait_for(0, "20 bytes of text", |b| b.len() >= 20);
    interrupt(&child);
    let status = wait(&mut child);

    assert_eq!(status.code(), Some(130), "{status}");
    let stderr = String::from_utf8_lossy(&stderr.all()).into_owned();
    no_crash(&stderr);
    assert_eq!(stderr, "", "Ctrl-C is not an error to report");
    let text = String::from_utf8(stdout.all()).expect("the text is valid UTF-8");
    assert!(text.len() >= 20, "{text:?}");
}

/// Replays the trace of a run stopped after `steps` tokens; expects a match.
fn replays_up_to_the_stop(trace: &str, steps: u64) {
    let run = talkback(&["replay", trace, "--threads", "1"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!(
            "replay ok: 4 prompt tokens and {steps} generated tokens match \
             (finish: interrupted)\n"
        )
    );
}

/// Starts a story of up to 3000 tokens on one thread, with `extra` flags.
fn long_story(extra: &[&str]) -> std::process::Child {
    let mut args = vec![
        "complete",
        "Once upon a time",
        "-n",
        "3000",
        "--ignore-eos",
        "--seed",
        "3",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    command(&args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start talkback")
}

#[test]
fn sigterm_during_generation_keeps_the_summary_and_trace_and_exits_143() {
    // SIGTERM used to kill the run at once: no summary on stdout and an
    // empty trace file left behind.
    stopped_during_generation("terminated-trace", terminate, 143);
}

#[test]
fn sighup_during_generation_is_taken_as_sigterm_and_exits_129() {
    // SIGHUP, as when the terminal closes, used to kill the run at once,
    // with no trace.
    stopped_during_generation("hung-up-trace", hang_up, 129);
}

#[test]
fn a_stop_request_delivered_twice_at_once_is_one_request() {
    // `timeout` signals the process and then its group, so the run got
    // two requests microseconds apart and the second ended it at once:
    // no summary, and no trace (or the last run's left in place).
    stopped_during_generation("twice-trace", interrupt_twice, 130);
}

#[test]
fn sigterm_s_status_wins_when_sighup_comes_with_it() {
    // Reported together, the two come in signal-number order, so SIGHUP
    // set the status even when SIGTERM came first (as a service manager
    // sends them).
    fn both(pid: u32) {
        reliability_support::signals(pid, &["TERM", "HUP"]);
    }
    stopped_during_generation("term-hup-trace", both, 143);
    fn both_reversed(pid: u32) {
        reliability_support::signals(pid, &["HUP", "TERM"]);
    }
    stopped_during_generation("hup-term-trace", both_reversed, 143);
}

#[test]
fn a_run_started_with_sighup_ignored_goes_on_after_one() {
    // A handler undid `nohup`: the run stopped at the first SIGHUP.
    let scratch = Scratch::new("nohup");
    let bin = binary();
    let mut child = Command::new("nohup")
        .arg(&bin)
        .args([
            "complete",
            "Once upon a time",
            "-n",
            "40",
            "--ignore-eos",
            "--threads",
            "1",
            "--format",
            "jsonl",
        ])
        .env("TALKBACK_MODEL", model())
        .current_dir(scratch.join(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nohup");
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    let _stderr = Tail::follow(child.stderr.take().expect("stderr"));
    stdout.wait_for(0, "a token event", |b| b.contains(&b'\n'));
    hang_up(child.id());
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(0), "{status}");
    let out = String::from_utf8(stdout.all()).expect("the events are UTF-8");
    let last = out.lines().last().expect("a last line");
    let summary: serde_json::Value = serde_json::from_str(last).expect("a JSON summary");
    assert_eq!(summary["finish_reason"], "length", "{last}");
    assert_eq!(summary["generated_tokens"], 40, "{last}");
}

/// Runs talkback on a terminal of its own (a pseudo-terminal, through
/// Python's `pty`), with `-v` so that the terminal shows when the model
/// has loaded; closes the terminal a second after that, and returns the
/// exit code Python reports.
fn hang_up_terminal(args: &[&str]) -> i32 {
    const DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen, loaded, end = b"", None, time.time() + 60
while time.time() < end and (loaded is None or time.time() < loaded + 1):
    ready, _, _ = select.select([fd], [], [], 0.05)
    if ready:
        try:
            seen += os.read(fd, 4096)
        except OSError:
            break
        if loaded is None and b"in vocabulary" in seen:
            loaded = time.time()
os.close(fd)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"#;
    let bin = binary();
    let out = Command::new("python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(&bin)
        .arg("-v")
        .args(args)
        .env("TALKBACK_MODEL", model())
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "no exit code: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_terminal_that_hangs_up_ends_the_run_as_sighup_does() {
    // The writes to a terminal that hung up fail with EIO, which ended
    // the run with `cannot write to stdout` and exit 1, before or instead
    // of the SIGHUP.
    let scratch = Scratch::new("hung-up");
    let trace = scratch.join("run.json");
    let trace = trace.to_str().expect("a UTF-8 path");
    for format in ["text", "json", "jsonl"] {
        let code = hang_up_terminal(&[
            "complete",
            "Once upon a time",
            "-n",
            "3000",
            "--ignore-eos",
            "--threads",
            "1",
            "--format",
            format,
            "--trace",
            trace,
        ]);
        assert_eq!(code, 129, "{format}");
        let recorded: serde_json::Value =
            serde_json::from_slice(&std::fs::read(trace).expect("the trace was written"))
                .expect("the trace is JSON");
        assert_eq!(recorded["finish_reason"], "interrupted", "{format}");
        std::fs::remove_file(trace).expect("remove the trace");
    }
}

/// Sends `signal` to a jsonl run with a trace once three tokens are out;
/// expects exit `code`, a summary of the stop and a trace that replays.
fn stopped_during_generation(name: &str, signal: fn(u32), code: i32) {
    let scratch = reliability_support::Scratch::new(name);
    let trace = scratch.join("run.json");
    let trace = trace.to_str().expect("a UTF-8 path");
    let mut child = long_story(&["--format", "jsonl", "--trace", trace]);
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    let stderr = Tail::follow(child.stderr.take().expect("stderr"));
    stdout.wait_for(0, "three token events", |b| {
        b.iter().filter(|&&c| c == b'\n').count() >= 3
    });
    signal(child.id());
    let status = wait(&mut child);

    assert_eq!(status.code(), Some(code), "{status}");
    let stderr = String::from_utf8_lossy(&stderr.all()).into_owned();
    no_crash(&stderr);
    assert_eq!(stderr, "", "a request to stop is not an error to report");
    let out = String::from_utf8(stdout.all()).expect("the events are UTF-8");
    let last = out.lines().last().expect("a last line");
    let summary: serde_json::Value = serde_json::from_str(last).expect("a JSON summary");
    assert_eq!(summary["event"], "summary", "{last}");
    assert_eq!(summary["finish_reason"], "interrupted", "{last}");
    let tokens = summary["generated_tokens"].as_u64().expect("a token count");
    assert_eq!(
        tokens as usize,
        out.lines().count() - 1,
        "one event per token"
    );
    assert!((3..3000).contains(&tokens), "{tokens} tokens");

    replays_up_to_the_stop(trace, tokens);
}

/// Starts `args` after a prompt of about 7900 tokens, decoded one token
/// per batch, and sends Ctrl-C once the model has loaded; returns the exit
/// status and stdout, or fails if the exit takes more than `within`.
fn interrupt_a_long_prompt(args: &[&str], within: std::time::Duration) -> (i32, Vec<u8>) {
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(790);
    let mut argv = vec!["-v"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&[
        &prompt,
        "--ctx-size",
        "8192",
        "--batch-size",
        "1",
        "--threads",
        "1",
    ]);
    let (mut child, stdout, stderr) = start_loaded(&argv);
    interrupt(&child);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Ctrl-C was not answered within {within:?}: it waits for the whole prompt");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    no_crash(&String::from_utf8_lossy(&stderr.all()));
    (status.code().unwrap_or(-1), stdout.all())
}

#[test]
fn ctrl_c_during_a_long_prompt_is_answered_between_batches() {
    // The whole prompt takes minutes on one thread, one token per batch
    // (over a minute on the development machine), and Ctrl-C used to wait
    // for all of it; between batches it waits for one token's decode. The
    // bound is a hang deadline for that one token, not a speed claim.
    let within = std::time::Duration::from_secs(15);
    let (code, stdout) = interrupt_a_long_prompt(&["complete", "--format", "json"], within);
    assert_eq!(code, 130);
    let summary: serde_json::Value = serde_json::from_slice(&stdout).expect("the JSON summary");
    assert_eq!(summary["finish_reason"], "interrupted", "{summary}");
    assert_eq!(summary["generated_tokens"], 0, "{summary}");
    assert_eq!(summary["text"], "", "{summary}");

    // `shape` has no partial table to show: it prints nothing.
    let (code, stdout) = interrupt_a_long_prompt(&["shape"], within);
    assert_eq!(code, 130);
    assert_eq!(String::from_utf8_lossy(&stdout), "");
}

#[test]
fn a_trace_of_an_interrupted_run_replays_up_to_the_interrupt() {
    let scratch = reliability_support::Scratch::new("interrupted-trace");
    let trace = scratch.join("run.json");
    let trace = trace.to_str().expect("a UTF-8 path");
    let mut child = long_story(&["--trace", trace]);
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    stdout.wait_for(0, "20 bytes of text", |b| b.len() >= 20);
    interrupt(&child);
    assert_eq!(wait(&mut child).code(), Some(130));

    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trace).expect("the trace was written"))
            .expect("the trace is JSON");
    assert_eq!(recorded["finish_reason"], "interrupted");
    let steps = recorded["steps"].as_array().map_or(0, Vec::len);
    assert!(steps > 0 && steps < 3000, "{steps} steps");

    replays_up_to_the_stop(trace, steps as u64);
}

/// The greedy continuation of `PROMPT`: its text and token count.
fn greedy_text(n: &str) -> (String, usize) {
    let run = talkback(&[
        "complete",
        PROMPT,
        "--temp",
        "0",
        "-n",
        n,
        "--format",
        "json",
        "--threads",
        "1",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v = run.json();
    let text = v["text"].as_str().expect("text").to_owned();
    let tokens = v["tokens"].as_array().map_or(0, Vec::len);
    assert!(!text.is_empty() && tokens > 0, "{v}");
    (text, tokens)
}

/// A prompt whose greedy continuation is long and plain.
const PROMPT: &str = "1, 2, 3, 4, 5,";

#[test]
fn ctrl_c_flushes_text_held_back_for_a_stop_string() {
    // A stop string that the whole greedy output keeps matching the start
    // of: every generated byte is held back until the run ends.
    // Two hundred tokens, of a byte each here (stop strings take 256
    // bytes at most): the interrupt has to land within them, on a machine
    // however loaded.
    let (text, n_tokens) = greedy_text("200");
    let stop = format!("{text}\u{1}");
    assert!(stop.len() <= 256, "the stop string is too long: {stop:?}");
    let mut child = command(&[
        "complete",
        PROMPT,
        "--temp",
        "0",
        "-n",
        "3000",
        "--stop",
        &stop,
        "--format",
        "jsonl",
        "--threads",
        "1",
    ])
    .stdin(Stdio::null())
    .spawn()
    .expect("start talkback");
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    let stderr = Tail::follow(child.stderr.take().expect("stderr"));
    // Each token event is written when the next token arrives.
    stdout.wait_for(0, "three token events", |b| {
        b.iter().filter(|&&c| c == b'\n').count() >= 3
    });
    interrupt(&child);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(130), "{status}");
    no_crash(&String::from_utf8_lossy(&stderr.all()));

    let out = String::from_utf8(stdout.all()).expect("valid UTF-8");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let (summary, tokens) = events.split_last().expect("events");
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["finish_reason"], "interrupted", "{summary}");
    assert!(
        tokens.len() < n_tokens,
        "the interrupt came after the held-back stretch ({} tokens)",
        tokens.len()
    );
    // Nothing was released while the stop string could still match...
    let (last, before) = tokens.split_last().expect("token events");
    for event in before {
        assert_eq!(event["text"], "", "released early: {event}");
    }
    // ...and at Ctrl-C all of it came out: every generated byte.
    let mut pieces = Vec::new();
    for event in tokens {
        let bytes = event["piece_bytes"].as_array().expect("piece_bytes");
        pieces.extend(bytes.iter().map(|b| b.as_u64().unwrap_or(256) as u8));
    }
    let all = String::from_utf8(pieces).expect("the pieces are UTF-8 here");
    assert!(!all.is_empty());
    assert_eq!(last["text"], all.as_str(), "the held text, flushed");
    assert_eq!(summary["text"], all.as_str());
    assert!(
        text.starts_with(&all),
        "{all:?} is not a prefix of {text:?}"
    );
}

#[test]
fn ctrl_c_flushes_held_back_text_in_text_format_too() {
    let (text, n_tokens) = greedy_text("200");
    let stop = format!("{text}\u{1}");
    assert!(stop.len() <= 256, "the stop string is too long: {stop:?}");
    let scratch = reliability_support::Scratch::new("held-text");
    let dump = scratch.join("logits.f32");
    let mut child = command(&[
        "complete",
        PROMPT,
        "--temp",
        "0",
        "-n",
        "3000",
        "--stop",
        &stop,
        "--dump-logits",
        reliability_support::arg(&dump),
        "--threads",
        "1",
    ])
    .stdin(Stdio::null())
    .spawn()
    .expect("start talkback");
    let stdout = Tail::follow(child.stdout.take().expect("stdout"));
    let stderr = Tail::follow(child.stderr.take().expect("stderr"));
    // Nothing reaches stdout while text is held, so the logits dump (one
    // vocabulary-sized record per step) shows how far generation is.
    let record = 49_152 * 4;
    let started = std::time::Instant::now();
    while std::fs::metadata(&dump).map_or(0, |m| m.len()) < 4 * record {
        assert!(
            started.elapsed() < reliability_support::DEADLINE,
            "generation never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(stdout.bytes().is_empty(), "text was released early");
    interrupt(&child);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(130), "{status}");
    no_crash(&String::from_utf8_lossy(&stderr.all()));

    let steps = std::fs::metadata(&dump).map_or(0, |m| m.len()) / record;
    assert!(
        (steps as usize) < n_tokens,
        "the interrupt came after the held-back stretch ({steps} steps)"
    );
    let out = String::from_utf8(stdout.all()).expect("valid UTF-8");
    assert!(!out.is_empty(), "the held text was lost");
    assert!(
        text.starts_with(&out),
        "{out:?} is not a prefix of {text:?}"
    );
}

/// The chat under a pseudo-terminal: keys in, screen out.
struct Terminal {
    child: std::process::Child,
    screen: Tail,
}

impl Terminal {
    fn start(args: &[&str]) -> Self {
        // `script` runs the line with `$SHELL -c`. dash (Debian's /bin/sh)
        // stays as the chat's parent, in the terminal's foreground group,
        // and dies of the Ctrl-C meant for the chat; `script` then reports
        // the shell's 130. `exec` leaves the chat alone on the terminal
        // whichever shell runs the line.
        Self::run(&format!("exec {}", chat_line(args)))
    }

    /// Runs `line` in a shell on the terminal.
    fn run(line: &str) -> Self {
        let mut child = Command::new("script")
            .args(["-qec", line, "/dev/null"])
            .env("TALKBACK_MODEL", model())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start `script` (util-linux)");
        let screen = Tail::follow(child.stdout.take().expect("stdout"));
        Self { child, screen }
    }

    fn keys(&mut self, keys: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(keys).expect("type");
        stdin.flush().expect("type");
    }

    /// Waits for `needle` to appear after byte `from`; returns where that
    /// appearance ends.
    fn wait_for(&self, from: usize, needle: &str) -> usize {
        let find = |b: &[u8]| b.windows(needle.len()).position(|w| w == needle.as_bytes());
        self.screen.wait_for(from, needle, |b| find(b).is_some());
        let bytes = self.screen.bytes();
        let rest = bytes.get(from..).unwrap_or_default();
        from + find(rest).map_or(0, |at| at + needle.len())
    }

    /// Waits for the line that goes on at byte `from` to end; returns its
    /// text from there. The screen is read as it arrives, so what is on it
    /// when a line's start appears may hold only a part of that line.
    fn rest_of_line(&self, from: usize) -> String {
        let end = self.wait_for(from, "\n");
        let bytes = self.screen.bytes();
        String::from_utf8_lossy(bytes.get(from..end).unwrap_or_default()).into_owned()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.bytes()).into_owned()
    }

    /// Waits for the chat to end and for all it wrote to be on screen.
    fn wait(&mut self) -> std::process::ExitStatus {
        let status = wait(&mut self.child);
        self.screen.all();
        status
    }

    /// Waits for the chat to end and asserts it exited 0 with no crash on screen.
    fn exits_cleanly(&mut self) {
        let status = self.wait();
        assert_eq!(
            status.code(),
            Some(0),
            "{status}; screen:\n{}",
            self.screen()
        );
        no_crash(&self.screen());
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed test must not leave a chat generating in the background;
        // once `script` is gone the terminal hangs up on the chat.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shell words that start the chat with `args`.
fn chat_line(args: &[&str]) -> String {
    let mut line = format!("'{}' chat", binary().display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    // One thread unless asked: a thread per core, with another test
    // running beside it, makes each decode wait on the other process.
    if !args.contains(&"--threads") {
        line.push_str(" --threads 1");
    }
    line
}

#[test]
fn with_stdout_redirected_the_prompt_stays_on_the_terminal() {
    // The line editor drew its prompt and echoed the keys on stdout, so
    // `chat > log.txt` showed nothing on screen and filled the log with
    // escape sequences around the replies.
    let scratch = Scratch::new("chat-to-file");
    let log = scratch.join("log.txt");
    let line = chat_line(&["-n", "8", "--seed", "1", "--threads", "1"]);
    // Also in a session of its own, with no controlling terminal to open:
    // the terminal is the one stdin reads.
    for start in ["exec", "exec setsid -w"] {
        let mut term = Terminal::run(&format!("{start} {line} > '{}'", log.display()));
        let at = term.wait_for(0, "chat started");
        let at = term.wait_for(at, "> ");
        term.keys(b"Hi\r");
        // The reply goes to the log; the next prompt shows it is complete.
        let at = term.wait_for(at, "> ");
        term.keys(b"/exit\r");
        term.wait_for(at, "/exit");
        term.exits_cleanly();
        let written = std::fs::read(&log).expect("the log");
        let text = String::from_utf8(written).expect("UTF-8");
        assert!(
            text.ends_with('\n') && text.trim().len() > 2,
            "{start}: {text:?}"
        );
        assert!(
            !text.contains('\x1b') && !text.contains("> "),
            "{start}: {text:?}"
        );
        assert!(
            !text.contains("/exit") && !text.contains("Hi"),
            "{start}: {text:?}"
        );
    }
}

#[test]
fn a_terminal_that_closes_at_the_prompt_ends_the_chat_as_sighup() {
    // A read from a terminal that has closed fails with EIO, and the chat
    // reported it as an error with exit 1 whenever the read failed before
    // SIGHUP arrived. With SIGHUP ignored from the start, it always does.
    let scratch = Scratch::new("chat-hang-up");
    let status = scratch.join("status");
    let line = chat_line(&["-n", "8", "--seed", "1", "--threads", "1"]);
    let mut term = Terminal::run(&format!(
        "trap '' HUP; {line} 2> '{}.err'; echo $? > '{}'",
        status.display(),
        status.display()
    ));
    term.wait_for(0, "> ");
    // Killing `script` closes the terminal under the chat.
    let _ = term.child.kill();
    let _ = term.child.wait();
    let (code, err) = exit_status_in(&status);
    assert_eq!(code, "129", "stderr: {err}");
    assert!(!err.contains("cannot read"), "{err}");
    no_crash(&err);
}

#[test]
fn a_terminal_that_closes_during_a_reply_ends_the_chat_as_sighup() {
    // With stdout in a file and SIGHUP ignored, the reply went on to its
    // end; then the editor found no terminal, read stdin as an empty file
    // and the chat left with exit 0, as on Ctrl-D.
    let scratch = Scratch::new("chat-hang-up-reply");
    let status = scratch.join("status");
    let log = scratch.join("log.txt");
    let line = chat_line(&["-n", "40", "--seed", "1", "--threads", "1"]);
    let mut term = Terminal::run(&format!(
        "trap '' HUP; {line} > '{}' 2> '{}.err'; echo $? > '{}'",
        log.display(),
        status.display(),
        status.display()
    ));
    let at = term.wait_for(0, "> ");
    term.keys(b"Tell me a story.\r");
    term.wait_for(at, "story.");
    let started = std::time::Instant::now();
    while std::fs::metadata(&log).map_or(0, |m| m.len()) == 0 {
        assert!(
            started.elapsed() < reliability_support::DEADLINE,
            "the reply never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = term.child.kill();
    let _ = term.child.wait();
    let (code, err) = exit_status_in(&status);
    assert_eq!(code, "129", "stderr: {err}");
    no_crash(&err);
}

/// Waits for a shell to write the chat's exit status to `status`; returns
/// it and what the chat wrote to `status.err`.
fn exit_status_in(status: &std::path::Path) -> (String, String) {
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(code) = std::fs::read_to_string(status)
            .ok()
            .filter(|t| t.ends_with('\n'))
        {
            break code;
        }
        assert!(
            started.elapsed() < reliability_support::DEADLINE,
            "the chat never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(format!("{}.err", status.display())).expect("stderr");
    (code.trim().to_owned(), err)
}

#[test]
fn end_of_input_leaves_the_chat_cleanly() {
    let mut term = Terminal::start(&["-n", "8", "--seed", "1"]);
    let at = term.wait_for(0, "chat started");
    term.wait_for(at, "> ");
    term.keys(b"\x04");
    term.exits_cleanly();
}

#[test]
fn a_verbose_chat_reports_how_each_reply_finished() {
    let mut term = Terminal::start(&["-n", "8", "--seed", "1", "-v"]);
    let mut at = term.wait_for(0, "chat started");
    for _ in 0..2 {
        at = term.wait_for(at, "> ");
        term.keys(b"Hi\r");
        // Eight tokens end the reply unless the model ends its turn first.
        at = term.wait_for(at, "talkback: finished: ");
        let reason = term.rest_of_line(at);
        assert!(
            reason.starts_with("length (") || reason.starts_with("end of turn ("),
            "{reason:?}"
        );
    }
    term.wait_for(at, "> ");
    term.keys(b"/exit\r");
    term.exits_cleanly();
}

/// A chat asked for a long story, once some of the reply is on screen;
/// returns it and where the reply starts on screen.
fn long_reply() -> (Terminal, usize) {
    let mut term = Terminal::start(&["-n", "3000", "--ignore-eos", "--seed", "1"]);
    let at = term.wait_for(0, "chat started");
    let at = term.wait_for(at, "> ");
    term.keys(b"Tell me a long story about a lighthouse.\r");
    let at = term.wait_for(at, "lighthouse.");
    // Some of the reply is on screen: the model is generating.
    term.screen
        .wait_for(at, "the reply to start", |b| b.len() > 40);
    (term, at)
}

#[test]
fn ctrl_c_during_a_reply_returns_to_the_prompt() {
    let (mut term, at) = long_reply();
    term.keys(b"\x03");
    let at = term.wait_for(at, "talkback: reply interrupted");
    term.wait_for(at, "> ");
    term.keys(b"/exit\r");
    term.exits_cleanly();
}

#[test]
fn ctrl_c_before_the_reply_begins_takes_the_message_back() {
    // One token a batch: a long message takes seconds to read.
    let mut term = Terminal::start(&["-n", "4", "--seed", "1", "-b", "1", "-v"]);
    let at = term.wait_for(0, "chat started");
    let at = term.wait_for(at, "> ");
    let long = "apple banana ".repeat(150);
    term.keys(format!("{}\r", long.trim_end()).as_bytes());
    // Ctrl-C is a signal only once the line editor has handed the terminal
    // back (turning bracketed paste off as it goes); before, it is a key.
    // Then the editor catches SIGINT itself until it is dropped, which it
    // shows by no longer catching SIGWINCH (put back after SIGINT).
    let at = term.wait_for(at, "\x1b[?2004l");
    reliability_support::wait_for_signal_mask(chat_pid(&term), &[28], false);
    term.keys(b"\x03");
    let at = term.wait_for(at, "the message was taken back");
    let at = term.wait_for(at, "> ");
    term.keys(b"Hi\r");
    // Only the new message is in the conversation: a few dozen tokens,
    // not the hundreds of the one taken back.
    let at = term.wait_for(at, "talkback: finished: ");
    let line = term.rest_of_line(at);
    let count: usize = line
        .split(" prompt token")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no prompt count in {line:?}"));
    assert!(count < 100, "{count} prompt tokens: {line:?}");
    term.wait_for(at, "> ");
    term.keys(b"/exit\r");
    term.exits_cleanly();
}

#[test]
fn a_line_that_is_not_utf8_is_dropped_and_the_chat_goes_on() {
    // One byte of another encoding used to end the chat with exit 1, and
    // the rest of the line stayed typed, to be sent as a message of its own.
    let mut term = Terminal::start(&["-n", "8", "--seed", "1"]);
    let at = term.wait_for(0, "chat started");
    let at = term.wait_for(at, "> ");
    term.keys(b"caf\xe9 au lait\r");
    let at = term.wait_for(at, "was dropped; type it again");
    term.wait_for(at, "> ");
    term.keys(b"/exit\r");
    term.exits_cleanly();
    let screen = visible(&term.screen());
    let after = screen
        .split("type it again")
        .nth(1)
        .expect("the note is on screen");
    // The next thing the chat did was to ask again, and leave on /exit: no
    // reply to " au lait".
    assert_eq!(after.trim(), "> /exit", "{screen}");
}

/// The process `script` runs the chat in: its only child, once `exec` has run.
fn chat_pid(term: &Terminal) -> u32 {
    let pid = term.child.id();
    let path = format!("/proc/{pid}/task/{pid}/children");
    let children = std::fs::read_to_string(&path).expect("read the children of `script`");
    let mut ids = children.split_whitespace();
    let chat = ids
        .next()
        .expect("`script` runs the chat")
        .parse()
        .expect("a pid");
    assert_eq!(ids.next(), None, "one child: {children}");
    chat
}

/// Waits for the chat to end; asserts it exited 143 with no crash on screen.
fn exits_terminated(term: &mut Terminal) {
    let status = term.wait();
    assert_eq!(
        status.code(),
        Some(143),
        "{status}; screen:\n{}",
        term.screen()
    );
    no_crash(&term.screen());
}

#[test]
fn sigterm_during_a_reply_ends_the_chat() {
    let (mut term, _) = long_reply();
    terminate(chat_pid(&term));
    // `script` reports 143 for a chat killed by the signal too; what is
    // checked is that the handler ends the chat instead of treating the
    // request as Ctrl-C and returning to the prompt.
    exits_terminated(&mut term);
    assert!(
        !term.screen().contains("reply interrupted"),
        "{}",
        term.screen()
    );
}

#[test]
fn sigterm_at_the_prompt_ends_the_chat_at_once() {
    // Nothing is in flight at the prompt. A handler that only set the stop
    // flag would leave the chat waiting for a key, since the flag is looked
    // at only once a line is in.
    let mut term = Terminal::start(&["-n", "8", "--seed", "1"]);
    let at = term.wait_for(0, "chat started");
    let at = term.wait_for(at, "> ");
    terminate(chat_pid(&term));
    exits_terminated(&mut term);
    // The terminal is left as the line editor found it: its settings (not
    // visible here), bracketed paste turned off, and the line ended.
    let screen = term.screen();
    let after = screen.get(at..).unwrap_or_default();
    assert!(after.contains("\x1b[?2004l"), "{after:?}");
    assert!(after.ends_with('\n'), "{after:?}");
}

/// The text a stretch of the screen shows: terminal control sequences
/// (`ESC [ ... letter`) and carriage returns removed.
fn visible(screen: &str) -> String {
    let mut out = String::new();
    let mut chars = screen.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() || c == '~' {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            _ => out.push(c),
        }
    }
    out
}

impl Terminal {
    /// Types `line` and Enter at the prompt that ends at `at`; returns what
    /// the chat showed before its next prompt, and where that prompt ends.
    fn answer(&mut self, at: usize, line: &str) -> (String, usize) {
        self.keys(format!("{line}\r").as_bytes());
        let echoed = self.wait_for(at, line);
        let next = self.wait_for(echoed, "> ");
        let bytes = self.screen.bytes();
        let shown = String::from_utf8_lossy(&bytes[echoed..next - 2]).into_owned();
        (visible(&shown), next)
    }
}

#[test]
fn slash_commands_are_answered_and_never_sent_to_the_model() {
    let mut term = Terminal::start(&["-n", "4", "--seed", "1"]);
    let at = term.wait_for(0, "chat started");
    let at = term.wait_for(at, "> ");

    let (help, at) = term.answer(at, "/help");
    for command in ["/reset", "/exit", "/quit", "/help"] {
        assert!(help.contains(command), "{command} missing from {help:?}");
    }
    assert!(
        help.contains("at the prompt it clears the line"),
        "{help:?}"
    );

    let (unknown, at) = term.answer(at, "/x");
    assert_eq!(
        unknown.trim(),
        "talkback: unknown command /x (try /help)",
        "a reply was generated"
    );

    term.keys(b"/quit\r");
    term.wait_for(at, "/quit");
    term.exits_cleanly();
}

#[test]
fn a_conversation_that_outgrows_the_context_keeps_the_chat() {
    // The default system turn and "Hi" take 31 tokens; with 8 more for the
    // reply, a second turn cannot fit in 44.
    let mut term = Terminal::start(&[
        "--ctx-size",
        "44",
        "-n",
        "8",
        "--temp",
        "0",
        "--threads",
        "1",
    ]);
    let at = term.wait_for(0, "chat started");
    let at = term.wait_for(at, "> ");

    let (first, at) = term.answer(at, "Hi");
    assert!(!first.trim().is_empty(), "no reply");
    let (refused, at) = term.answer(at, "Tell me more");
    assert!(
        refused.trim().starts_with("talkback: the conversation is ")
            && refused
                .trim()
                .ends_with("more than the context of 44; it was not sent (/reset to start over)"),
        "{refused:?}"
    );

    let (reset, at) = term.answer(at, "/reset");
    assert_eq!(reset.trim(), "talkback: conversation reset");
    // The refused message left nothing behind: the same first turn gives
    // the same greedy reply.
    let (again, at) = term.answer(at, "Hi");
    assert_eq!(again, first);

    term.keys(b"/exit\r");
    term.wait_for(at, "/exit");
    term.exits_cleanly();
}
