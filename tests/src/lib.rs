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

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The release `talkback` binary (`$TALKBACK_BIN` overrides).
///
/// # Panics
///
/// - when the binary has not been built.
pub fn binary() -> PathBuf {
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
    bin
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
        pipe.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("wait for talkback").into()
}
