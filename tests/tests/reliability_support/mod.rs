//! Shared helpers of the `reliability_*` tests: runs with a deadline,
//! scratch folders, corrupted copies of the model, and the check that an
//! error is one clear line.

// Test support: failing to set up a scratch file or to start the binary is
// a test failure, so panicking with a message is the intended behaviour.
#![allow(clippy::expect_used, clippy::panic, dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use talkback_tests::{binary, model, Run};

/// How long any single run may take before the test calls it a hang.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A folder under the system's temporary directory, removed on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh, empty folder named after `name` and this process.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "talkback-reliability-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a scratch folder");
        Self { path }
    }

    /// A path inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `bytes` to `name` inside the folder and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, bytes).expect("write a scratch file");
        path
    }

    /// Copies the real model to `name`, changes the bytes at each offset,
    /// and returns the copy's path.
    pub fn model_with(&self, name: &str, patches: &[(u64, &[u8])]) -> PathBuf {
        let path = self.join(name);
        std::fs::copy(model(), &path).expect("copy the model");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the copy");
        for (at, bytes) in patches {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(*at)).expect("seek");
            file.write_all(bytes).expect("patch the copy");
        }
        path
    }

    /// Writes a copy of the real model to `name` with `patches` applied to
    /// its header and a key added after the others: `key`, of GGUF value
    /// type `kind`, holding `value` (its bytes as the file stores them).
    /// The header's other offsets stay as [`Layout`] gives them.
    pub fn model_with_key(
        &self,
        name: &str,
        patches: &[(u64, &[u8])],
        (key, kind, value): (&str, u32, &[u8]),
    ) -> PathBuf {
        let layout = Layout::of_model();
        let mut model = std::fs::read(model()).expect("read the model");
        let span = |from: u64, len: usize| from as usize..from as usize + len;
        for (at, bytes) in patches {
            model
                .get_mut(span(*at, bytes.len()))
                .expect("a patch inside the model")
                .copy_from_slice(bytes);
        }
        let n_kv = u64_at(&model, 16) + 1;
        let mut out = Vec::with_capacity(model.len() + 64);
        out.extend(model.get(..16).expect("the header"));
        out.extend(n_kv.to_le_bytes());
        let keys = (layout.kv_end - 24) as usize;
        out.extend(model.get(span(24, keys)).expect("the keys"));
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(value);
        let tensors = (layout.header_end - layout.kv_end) as usize;
        out.extend(
            model
                .get(span(layout.kv_end, tensors))
                .expect("the tensors"),
        );
        // Tensor offsets count from the data section, which starts at the
        // next multiple of 32.
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(model.get(layout.data_start as usize..).expect("the data"));
        self.write(name, &out)
    }

    /// Writes the first `len` bytes of the real model to `name`.
    pub fn model_prefix(&self, name: &str, len: u64) -> PathBuf {
        let mut bytes = Vec::new();
        std::fs::File::open(model())
            .expect("open the model")
            .take(len)
            .read_to_end(&mut bytes)
            .expect("read the model");
        self.write(name, &bytes)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `talkback` whose output is collected in the background.
pub struct Running {
    /// The child process.
    pub child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// The `talkback` command with the model set, stdout and stderr piped.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env("TALKBACK_MODEL", model())
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `cmd` with `stdin` written to it (then closed), or no stdin.
pub fn start(mut cmd: Command, stdin: Option<&[u8]>) -> Running {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("start talkback");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // The process may refuse its input early; a closed pipe is fine.
        let _ = pipe.write_all(bytes);
    }
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    Running {
        child,
        stdout,
        stderr,
    }
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

impl Running {
    /// Waits for the process; kills it and fails the test after `DEADLINE`.
    pub fn finish(mut self) -> Run {
        let status = wait(&mut self.child);
        let join = |h: Option<JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().expect("reader thread"))
                .unwrap_or_default()
        };
        let stdout = join(self.stdout.take());
        let stderr = join(self.stderr.take());
        assert!(
            status.code().is_some(),
            "talkback was killed by a signal ({status}); stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// Waits for `child`; kills it and fails the test after `DEADLINE`.
pub fn wait(child: &mut Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not finish within {DEADLINE:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGINT to `child` with the `kill` command.
pub fn interrupt(child: &Child) {
    signal(child.id(), "INT");
}

/// Sends SIGTERM to `pid`, as `kill` and `timeout` do.
pub fn terminate(pid: u32) {
    signal(pid, "TERM");
}

/// Sends SIGINT to `pid` twice in a row, as `timeout -s INT` does (once
/// to the process, once to its group).
pub fn interrupt_twice(pid: u32) {
    signals(pid, &["INT", "INT"]);
}

/// Sends SIGHUP to `pid`, as when its terminal closes.
pub fn hang_up(pid: u32) {
    signal(pid, "HUP");
}

/// Sends the signal `name` (as `kill` spells it: `USR1`) to `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Sends the signals `names` to `pid` in that order, from one shell with
/// its built-in `kill`: microseconds apart however loaded the machine,
/// where a `kill` process for each could be scheduled seconds apart.
pub fn signals(pid: u32, names: &[&str]) {
    let script: Vec<String> = names.iter().map(|n| format!("kill -{n} {pid}")).collect();
    let status = Command::new("sh")
        .args(["-c", &script.join(" && ")])
        .status()
        .expect("run sh");
    assert!(status.success(), "{script:?} failed");
}

/// Waits until process `pid` catches each of the signals `numbers`
/// (`2` for SIGINT), as `/proc/PID/status` shows; fails the test after
/// `DEADLINE`. One sent sooner would end it by the default action, before
/// the handler it is meant to test was there.
pub fn wait_for_handlers(pid: u32, numbers: &[u32]) {
    wait_for_signal_mask(pid, numbers, true);
}

/// Waits until process `pid` catches each of the signals `numbers`
/// (`caught`), or none of them (`!caught`); fails the test if the process
/// ends first, or after `DEADLINE`.
pub fn wait_for_signal_mask(pid: u32, numbers: &[u32], caught: bool) {
    assert!(
        numbers.iter().all(|n| (1..=64).contains(n)),
        "signal numbers run from 1 to 64: {numbers:?}"
    );
    let path = format!("/proc/{pid}/status");
    let started = Instant::now();
    loop {
        let status = std::fs::read_to_string(&path).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
        let state = field("State:").map(str::trim).unwrap_or_default();
        assert!(
            !state.is_empty() && !state.starts_with(['Z', 'X']),
            "process {pid} ended while waiting for its signal handlers"
        );
        let mask = field("SigCgt:")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        if numbers
            .iter()
            .all(|n| ((mask >> (n - 1)) & 1 == 1) == caught)
        {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "process {pid} never {} signals {numbers:?}",
            if caught { "caught" } else { "stopped catching" }
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The prompt's token ids a trace file records.
pub fn trace_prompt_ids(trace: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(trace).expect("the trace");
    let v: serde_json::Value = serde_json::from_str(&text).expect("trace JSON");
    v.get("prompt_tokens")
        .and_then(serde_json::Value::as_array)
        .expect("prompt_tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

/// Bytes read so far from a pipe that a thread keeps reading.
#[derive(Clone, Default)]
pub struct Tail {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Set once the pipe has reached its end (or failed).
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Tail {
    /// Starts a thread that appends everything `pipe` yields.
    pub fn follow<R: Read + Send + 'static>(mut pipe: R) -> Self {
        let tail = Self::default();
        let shared = tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let (Ok(mut all), Some(chunk)) = (shared.bytes.lock(), buf.get(..n)) {
                    all.extend_from_slice(chunk);
                }
            }
            shared
                .closed
                .store(true, std::sync::atomic::Ordering::Release);
        });
        tail
    }

    /// A copy of what has arrived so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Everything the pipe yields, once it has reached its end: what
    /// `bytes` returns just after the writer exits may still lack what the
    /// reading thread has not picked up. Fails the test after `DEADLINE`.
    pub fn all(&self) -> Vec<u8> {
        let started = Instant::now();
        while !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                started.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for the pipe to close; got:\n{}",
                String::from_utf8_lossy(&self.bytes())
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.bytes()
    }

    /// Waits until what arrived after byte `from` satisfies `done`;
    /// fails the test after `DEADLINE`. Returns the length at that point.
    pub fn wait_for(&self, from: usize, what: &str, done: impl Fn(&[u8]) -> bool) -> usize {
        let started = Instant::now();
        loop {
            let bytes = self.bytes();
            if done(bytes.get(from..).unwrap_or_default()) {
                return bytes.len();
            }
            assert!(
                started.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for {what}; got:\n{}",
                String::from_utf8_lossy(&bytes)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len().max(1)).any(|w| w == needle)
}

/// Runs `talkback args` with no stdin, within the deadline.
pub fn talkback(args: &[&str]) -> Run {
    start(command(args), None).finish()
}

/// Runs `talkback args` with `stdin`, within the deadline.
pub fn talkback_stdin(args: &[&str], stdin: &[u8]) -> Run {
    start(command(args), Some(stdin)).finish()
}

/// The path as a `&str` for an argument list.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

/// Signs of a crash or a Rust panic that must never reach a user.
const CRASH_SIGNS: [&str; 5] = [
    "panicked",
    "RUST_BACKTRACE",
    "stack backtrace",
    "GGML_ASSERT",
    "core dumped",
];

/// Asserts a runtime failure: exit 1 and exactly one line on stderr,
/// `talkback: ...`, containing `needle`. Returns that line.
pub fn runtime_error(run: &Run, needle: &str) -> String {
    assert_eq!(run.code, 1, "exit code; stderr:\n{}", run.stderr);
    one_line(run, "talkback: ", needle)
}

/// Asserts a usage error: exit 2 and a first stderr line `error: ...`
/// containing `needle` (clap adds a blank line and a `--help` hint).
pub fn usage_error(run: &Run, needle: &str) -> String {
    assert_eq!(run.code, 2, "exit code; stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.text());
    no_crash(&run.stderr);
    let first = run.stderr.lines().next().unwrap_or_default().to_owned();
    assert!(first.starts_with("error: "), "stderr:\n{}", run.stderr);
    assert!(first.contains(needle), "wanted {needle:?} in: {first}");
    first
}

fn one_line(run: &Run, prefix: &str, needle: &str) -> String {
    no_crash(&run.stderr);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{}", run.stderr);
    let line = lines.first().copied().unwrap_or_default();
    assert!(line.starts_with(prefix), "stderr: {line}");
    assert!(line.contains(needle), "wanted {needle:?} in: {line}");
    line.to_owned()
}

/// Asserts that `stderr` shows no panic, backtrace or llama.cpp abort.
pub fn no_crash(stderr: &str) {
    for sign in CRASH_SIGNS {
        assert!(!stderr.contains(sign), "{sign:?} on stderr:\n{stderr}");
    }
}

/// Whether this process runs as root (`id -u` prints 0).
pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Where the fields of a GGUF header lie, read from the real model so that
/// corruptions hit exactly the field they name.
pub struct Layout {
    /// Every key with the offset of its value's type field.
    pub keys: Vec<(String, u64)>,
    /// Every tensor: name, offset of its name's length, of its dimension
    /// count, of its type field, and of its data offset field.
    pub tensors: Vec<TensorInfo>,
    /// Where the keys end and the tensor descriptions start.
    pub kv_end: u64,
    /// Where the tensor descriptions end.
    pub header_end: u64,
    /// Where tensor data starts.
    pub data_start: u64,
    /// The file's length.
    pub len: u64,
    bytes: Vec<u8>,
}

/// Offsets of one tensor description.
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Offset of the dimension count.
    pub n_dims_at: u64,
    /// Offset of the ggml type.
    pub type_at: u64,
    /// Offset of the data offset field.
    pub offset_at: u64,
    /// The data offset, relative to the data section.
    pub offset: u64,
}

impl Layout {
    /// Reads the real model's header (the first 4 MiB hold all of it).
    pub fn of_model() -> Self {
        let len = std::fs::metadata(model()).expect("model metadata").len();
        let mut bytes = Vec::new();
        std::fs::File::open(model())
            .expect("open the model")
            .take(4 << 20)
            .read_to_end(&mut bytes)
            .expect("read the header");
        let mut at = 24_usize;
        let mut keys = Vec::new();
        let n_tensors = u64_at(&bytes, 8);
        let n_kv = u64_at(&bytes, 16);
        for _ in 0..n_kv {
            let key = string_at(&bytes, &mut at);
            keys.push((key, at as u64));
            let kind = u32_at(&bytes, at);
            at += 4;
            skip_value(&bytes, kind, &mut at);
        }
        let kv_end = at as u64;
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = string_at(&bytes, &mut at);
            let n_dims_at = at as u64;
            let dims = u32_at(&bytes, at) as usize;
            at += 4 + 8 * dims;
            let type_at = at as u64;
            at += 4;
            let offset_at = at as u64;
            let offset = u64_at(&bytes, at);
            at += 8;
            tensors.push(TensorInfo {
                name,
                n_dims_at,
                type_at,
                offset_at,
                offset,
            });
        }
        Self {
            keys,
            tensors,
            kv_end,
            header_end: at as u64,
            data_start: (at as u64).div_ceil(32) * 32,
            len,
            bytes,
        }
    }

    /// Offset of the type field of `key`.
    pub fn key_type_at(&self, key: &str) -> u64 {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|&(_, at)| at)
            .unwrap_or_else(|| panic!("the model has no key {key}"))
    }

    /// Offset of the value of `key` (after its type field).
    pub fn value_at(&self, key: &str) -> u64 {
        self.key_type_at(key) + 4
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> &TensorInfo {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("the model has no tensor {name}"))
    }

    /// Offset and length of the text of token `i` in the vocabulary.
    pub fn token_text(&self, i: usize) -> (u64, u64) {
        let mut at = self.value_at("tokenizer.ggml.tokens") as usize + 12;
        for _ in 0..i {
            at += 8 + u64_at(&self.bytes, at) as usize;
        }
        (at as u64 + 8, u64_at(&self.bytes, at))
    }

    /// The header's bytes from `at`, `len` of them.
    pub fn bytes(&self, at: u64, len: u64) -> &[u8] {
        self.bytes
            .get(at as usize..(at + len) as usize)
            .expect("inside the header")
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let b: [u8; 4] = bytes
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .expect("inside the header");
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let b: [u8; 8] = bytes
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .expect("inside the header");
    u64::from_le_bytes(b)
}

fn string_at(bytes: &[u8], at: &mut usize) -> String {
    let n = u64_at(bytes, *at) as usize;
    let s = bytes.get(*at + 8..*at + 8 + n).expect("inside the header");
    *at += 8 + n;
    String::from_utf8_lossy(s).into_owned()
}

fn skip_value(bytes: &[u8], kind: u32, at: &mut usize) {
    match kind {
        0 | 1 | 7 => *at += 1,
        2 | 3 => *at += 2,
        4..=6 => *at += 4,
        10..=12 => *at += 8,
        8 => {
            string_at(bytes, at);
        }
        9 => {
            let item = u32_at(bytes, *at);
            let n = u64_at(bytes, *at + 4);
            *at += 12;
            for _ in 0..n {
                skip_value(bytes, item, at);
            }
        }
        _ => panic!("unexpected value type {kind} in the real model"),
    }
}

/// One copy of the real model that corruptions are applied to and undone.
pub struct Patchable {
    /// The copy's path.
    pub path: PathBuf,
}

impl Patchable {
    /// Copies the real model into `scratch`.
    pub fn new(scratch: &Scratch) -> Self {
        Self {
            path: scratch.model_with("patchable.gguf", &[]),
        }
    }

    /// Applies `patches`, runs `f` on the copy, then puts the bytes back.
    pub fn with<T>(&self, patches: &[(u64, Vec<u8>)], f: impl FnOnce(&Path) -> T) -> T {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("open the copy");
        let mut saved = Vec::new();
        for (at, bytes) in patches {
            let mut old = vec![0_u8; bytes.len()];
            file.read_exact_at(&mut old, *at).expect("read the copy");
            file.write_all_at(bytes, *at).expect("patch the copy");
            saved.push((*at, old));
        }
        let out = f(&self.path);
        for (at, old) in saved.iter().rev() {
            file.write_all_at(old, *at).expect("restore the copy");
        }
        out
    }
}
