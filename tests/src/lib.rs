//! Helpers for the end-to-end tests: find the release binary and the model,
//! run `talkback` as a subprocess and capture what it printed.
//!
//! The tests never skip: a missing binary or model fails with the command
//! that provides it.

// Test support: a failure to start the binary or read its output is a test
// failure, so panicking with a message is the intended behaviour here.
#![allow(clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Lets the signals the tests send reach the processes they start, even
/// when this test process started with them ignored (as a background job
/// of a script starts with SIGINT ignored, or a run under `nohup` with
/// SIGHUP).
///
/// An ignored signal stays ignored across `exec`, and talkback then leaves
/// it ignored, as POSIX programs do; a caught one is reset to the default.
/// So each ignored one is caught here instead, by a handler that only sets
/// a flag no one reads: this process still, in effect, ignores it.
fn deliver_ignored_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let ignored = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or(0);
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            for signal in [SIGHUP, SIGINT, SIGTERM] {
                if ignored >> (signal - 1) & 1 == 1 {
                    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    signal_hook::flag::register(signal, flag)
                        .expect("catch a signal this process started with ignored");
                }
            }
        }
    });
}

/// The release `talkback` binary (`$TALKBACK_BIN` overrides); every test
/// that starts it asks for it here, which first lets the tests' signals
/// through (see [`deliver_ignored_signals`]).
///
/// # Panics
///
/// - when the binary has not been built.
pub fn binary() -> PathBuf {
    deliver_ignored_signals();
    if let Some(bin) = std::env::var_os("TALKBACK_BIN") {
        return PathBuf::from(bin);
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = target.join("release").join("talkback");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release -p talkback` \
         (scripts/test.sh does this)",
        bin.display()
    );
    // This crate cannot depend on a binary, so `cargo test` does not rebuild
    // it; a binary older than its sources would pass or fail for the wrong
    // code.
    let built = modified(&bin);
    if let Some(newer) = ["host-cli/src", "sampler-core/src"]
        .iter()
        .filter_map(|dir| newest_source(&root().join(dir)))
        .find(|(time, _)| Some(*time) > built)
    {
        panic!(
            "{} is older than {}: rebuild it with `cargo build --release -p talkback`",
            bin.display(),
            newer.1.display()
        );
    }
    bin
}

/// When `path` was last modified, if that can be read.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The most recently modified file under `dir`, and when.
///
/// A file dated in the future (copied from a machine whose clock runs
/// ahead) says nothing about which came first, so it is passed over.
fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let now = std::time::SystemTime::now();
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_source(&path)
        } else {
            modified(&path).filter(|&t| t <= now).map(|t| (t, path))
        };
        if let Some(found) = found {
            if newest.as_ref().map_or(true, |n| found.0 > n.0) {
                newest = Some(found);
            }
        }
    }
    newest
}

/// The default model file.
///
/// # Panics
///
/// - when the model has not been fetched.
pub fn model() -> PathBuf {
    let path = std::env::var_os("TALKBACK_MODEL").map_or_else(
        || {
            root()
                .join("models")
                .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: fetch it with fixtures/fetch-model.sh",
        path.display()
    );
    path
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// stdout bytes.
    pub stdout: Vec<u8>,
    /// stderr as text.
    pub stderr: String,
}

impl Run {
    /// stdout as text.
    ///
    /// # Panics
    ///
    /// - when stdout is not valid UTF-8.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("stdout is valid UTF-8")
    }

    /// stdout parsed as one JSON value.
    ///
    /// # Panics
    ///
    /// - when stdout is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.text()))
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `talkback` with `args` (the model is passed explicitly) and no stdin.
pub fn talkback(args: &[&str]) -> Run {
    talkback_stdin(args, None)
}

/// Runs `talkback` with `args`, writing `stdin` to its standard input.
///
/// # Panics
///
/// - when the process cannot be started.
pub fn talkback_stdin(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env("TALKBACK_MODEL", model())
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start talkback");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // A run refused before it reads stdin may be gone already.
        if let Err(e) = pipe.write_all(bytes) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
    }
    child.wait_with_output().expect("wait for talkback").into()
}

/// Runs `talkback` on one CPU thread (`shape --logits`, which loads no
/// model and refuses `--threads`, as given).
///
/// Two tests run at once on a two-core machine, and llama.cpp's default of
/// one thread per core then makes every decode wait on the other process:
/// generation slows down ten-fold or more.
pub fn tb(args: &[&str]) -> Run {
    tb_stdin(args, None)
}

/// [`tb`] with bytes on stdin.
pub fn tb_stdin(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut all = args.to_vec();
    let no_model = args
        .iter()
        .any(|a| *a == "--logits" || a.starts_with("--logits="));
    if !no_model {
        all.extend(["--threads", "1"]);
    }
    talkback_stdin(&all, stdin)
}

/// Asserts a clean success: exit 0 and nothing on stderr.
///
/// # Panics
///
/// - when the run failed or wrote to stderr.
pub fn ok(run: &Run) {
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(run.stderr.is_empty(), "stderr: {}", run.stderr);
}

/// A file in the temporary folder, removed when dropped; tests run in
/// parallel, so every file gets a name of its own.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A fresh path ending in `name`; nothing is there yet.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let path = std::env::temp_dir().join(format!("talkback-test-{pid}-{n}-{name}"));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// A file ending in `name` holding `text`.
    ///
    /// # Panics
    ///
    /// - when the file cannot be written.
    pub fn with(name: &str, text: &str) -> Self {
        let file = Self::new(name);
        std::fs::write(&file.0, text).expect("write temp file");
        file
    }

    /// The path as a command-line argument.
    ///
    /// # Panics
    ///
    /// - when the temporary folder's path is not UTF-8.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }

    /// The file's contents as JSON.
    ///
    /// # Panics
    ///
    /// - when the file is missing or not JSON.
    pub fn read_json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.0).expect("file written");
        serde_json::from_str(&text).expect("file is JSON")
    }

    /// Replaces the file's contents with `v`.
    ///
    /// # Panics
    ///
    /// - when the file cannot be written.
    pub fn write_json(&self, v: &serde_json::Value) {
        std::fs::write(&self.0, v.to_string()).expect("write file");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
