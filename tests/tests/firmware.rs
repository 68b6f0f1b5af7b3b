//! The firmware proof: sampler-core on an emulated Cortex-M4F prints exactly
//! what it computes on this x86-64 machine.
//!
//! The firmware (`firmware/`, its own workspace) embeds the fixtures at
//! build time: sampler-core's golden vectors, runs over real SmolLM2 logits
//! at the full vocabulary of 49152, and stream cases of real token pieces.
//! It runs `firmware/src/replay.rs` over them; this test compiles the same
//! replay file for the host, runs it here, builds the firmware, runs it
//! under `qemu-system-arm` (machine `mps2-an386`, a Cortex-M4 with an FPU)
//! and compares the two outputs line by line. Lines starting with `info `
//! (stack figures) are only printed by the firmware and are not compared.
//!
//! Without QEMU, the same file checks that the sampling runs draw the
//! tokens pinned in `fixtures/golden/` and `fixtures/logits/runs.txt`,
//! that the stream cases release what a whole-text reference does, and
//! that the f16 logits widen exactly.
//!
//! Nothing is skipped: a missing `qemu-system-arm` or Cortex-M target fails
//! with the command that installs it.

// A test reports failure by panicking.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../firmware/fixtures.rs"]
mod fixtures;
#[path = "../../firmware/src/replay.rs"]
mod replay;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sampler_core::{Candidate, Config, Order};

/// The Cortex-M4F target the firmware is built for.
const TARGET: &str = "thumbv7em-none-eabihf";

/// Longest the firmware build may take (a first build fetches and compiles
/// its dependencies).
const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// Longest the emulated run may take; it needs a few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The replay's output, gathered on the host.
#[derive(Default)]
struct Lines(Vec<String>);

impl replay::Host for Lines {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        self.0.push(args.to_string());
    }

    fn measure<R>(&mut self, f: impl FnOnce() -> R) -> (R, Option<usize>) {
        (f(), None)
    }
}

/// Everything the firmware embeds, read from `fixtures/` by the same parser.
struct Fixtures {
    runs: Vec<fixtures::Run>,
    cases: Vec<fixtures::Case>,
}

impl Fixtures {
    fn load() -> Self {
        let dir = root().join("fixtures");
        let runs = fixtures::all_runs(&dir).unwrap_or_else(|e| panic!("{e}"));
        let cases = fixtures::all_cases(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cases.is_empty(), "no stream case in {}", dir.display());
        Fixtures { runs, cases }
    }

    /// The runs as the replay takes them.
    fn vectors(&self) -> Vec<replay::Vector<'_>> {
        self.runs
            .iter()
            .map(|r| {
                let s = r.settings;
                replay::Vector {
                    name: &r.name,
                    logits: &r.logits,
                    shift: r.shift,
                    config: Config {
                        temperature: s.temperature,
                        top_k: s.top_k,
                        top_p: s.top_p,
                        min_p: s.min_p,
                        repeat_penalty: s.repeat_penalty,
                        presence_penalty: s.presence_penalty,
                        frequency_penalty: s.frequency_penalty,
                        order: Order::TALKBACK,
                    },
                    order: &r.order,
                    seed: r.seed,
                    steps: r.steps,
                    window: r.window,
                    bias: &r.bias,
                }
            })
            .collect()
    }

    /// The lines the replay prints on this machine.
    fn replay_here(&self) -> Vec<String> {
        let stops: Vec<Vec<&[u8]>> = self
            .cases
            .iter()
            .map(|c| c.stops.iter().map(Vec::as_slice).collect())
            .collect();
        let pieces: Vec<Vec<&[u8]>> = self
            .cases
            .iter()
            .map(|c| c.pieces.iter().map(Vec::as_slice).collect())
            .collect();
        let cases: Vec<replay::Case<'_>> = self
            .cases
            .iter()
            .zip(stops.iter().zip(&pieces))
            .map(|(c, (stops, pieces))| replay::Case {
                name: &c.name,
                stops,
                pieces,
            })
            .collect();
        let vocab = self.runs.iter().map(|r| r.logits.len()).max().unwrap_or(1);
        let buffers = replay::Buffers {
            scratch: &mut vec![Candidate::default(); vocab],
            rotated: &mut vec![0.0; vocab],
        };
        let mut lines = Lines::default();
        replay::all(&mut lines, &self.vectors(), &cases, buffers);
        lines.0
    }
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait_for(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {} s and was killed",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns `cmd` with piped output, waits at most `limit`, returns (status, stdout, stderr).
fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Drain both pipes on threads so a full pipe cannot stall the child.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_for(&mut child, limit, what);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    (status, out, err)
}

/// Builds the firmware in release mode and returns the path of its image.
fn build_firmware() -> PathBuf {
    let dir = root().join("firmware");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        // The firmware has its own target dir, so this build never waits on
        // the lock of the build running this test; host-only flags stay out.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    let (status, _, err) = run_bounded(&mut cmd, BUILD_LIMIT, "the firmware build");
    assert!(
        status.success(),
        "building the firmware failed ({status}); if the target is missing, run \
         `rustup target add {TARGET}` (scripts/test.sh does); if sampler-core's \
         dependencies changed, run `cargo update --workspace` in firmware/ and commit \
         firmware/Cargo.lock:\n{err}"
    );
    let image = dir
        .join("target")
        .join(TARGET)
        .join("release")
        .join("talkback-firmware");
    assert!(image.is_file(), "{} was not built", image.display());
    image
}

/// Runs `image` under QEMU and returns its semihosting output.
fn run_in_qemu(image: &Path) -> String {
    let qemu = "qemu-system-arm";
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(qemu).is_file()));
    assert!(
        found,
        "{qemu} is not installed: run `apt-get install -y qemu-system-arm` \
         (scripts/setup.sh does)"
    );
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic"])
        .args(["-monitor", "none", "-serial", "none"])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(image);
    let (status, out, err) = run_bounded(&mut cmd, RUN_LIMIT, "the firmware under QEMU");
    assert!(
        status.success(),
        "the firmware exited with {status}\nstderr:\n{err}\nlast output:\n{}",
        tail(&out, 20)
    );
    out
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Panics with the first differing line and its surroundings when `got` differs from `want`.
fn assert_same_lines(want: &[String], got: &[&str]) {
    let first = want
        .iter()
        .zip(got)
        .position(|(w, g)| w != g)
        .or_else(|| (want.len() != got.len()).then(|| want.len().min(got.len())));
    let Some(at) = first else { return };
    let from = at.saturating_sub(3);
    let show = |lines: Vec<&str>| {
        lines
            .iter()
            .enumerate()
            .skip(from)
            .take(8)
            .map(|(i, l)| format!("{}{:5} {l}", if i == at { '>' } else { ' ' }, i + 1))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "the Cortex-M4F output differs from x86-64 at line {} \
         (x86-64: {} lines, firmware: {} lines)\n\
         --- x86-64 (sampler-core called here)\n{}\n\
         --- Cortex-M4F (QEMU, semihosting)\n{}",
        at + 1,
        want.len(),
        got.len(),
        show(want.iter().map(String::as_str).collect()),
        show(got.to_vec()),
    );
}

#[test]
fn cortex_m4f_replays_the_vectors_bit_for_bit() {
    let want = Fixtures::load().replay_here();
    let image = build_firmware();
    let out = run_in_qemu(&image);

    let got: Vec<&str> = out.lines().filter(|l| !l.starts_with("info ")).collect();
    assert_same_lines(&want, &got);
    assert_eq!(want.last().map(String::as_str), Some("done"));
    let stacks = out.lines().filter(|l| l.starts_with("info stack-")).count();
    assert!(
        stacks > 0,
        "the firmware printed no stack figure:\n{}",
        tail(&out, 20)
    );
}

/// The reference for a stream case: the whole text decoded lossily, cut
/// where the first-completing stop string starts.
fn reference(case: &fixtures::Case) -> String {
    let text = String::from_utf8_lossy(&case.pieces.concat()).into_owned();
    let mut cut: Option<(usize, usize)> = None;
    for stop in &case.stops {
        let stop = std::str::from_utf8(stop).expect("stop strings are UTF-8");
        if let Some(start) = text.find(stop) {
            let end = start + stop.len();
            // Earliest end wins; at equal ends the earlier start (longer stop).
            if cut.map_or(true, |(s, e)| (end, start) < (e, s)) {
                cut = Some((start, end));
            }
        }
    }
    cut.map_or(text.clone(), |(start, _)| text[..start].to_owned())
}

#[test]
fn stream_cases_release_the_whole_text_reference() {
    let fx = Fixtures::load();
    let lines = fx.replay_here();
    let mut released: Vec<Vec<u8>> = Vec::new();
    for line in &lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["case", _] => released.push(Vec::new()),
            ["push", _, hex, _] | ["finish", hex] if *hex != "-" => {
                let bytes = fixtures::unhex(hex).expect("hex");
                released.last_mut().expect("a case is open").extend(bytes);
            }
            ["push", ..] | ["finish", _] | ["done"] | ["run", ..] | ["token", ..] => {}
            _ => panic!("unexpected replay line {line:?}"),
        }
    }
    assert_eq!(released.len(), fx.cases.len());
    for (case, got) in fx.cases.iter().zip(&released) {
        let got = String::from_utf8(got.clone()).expect("released text is UTF-8");
        assert_eq!(got, reference(case), "case {}", case.name);
    }

    // The cases must exercise what they are there for.
    let split_char = fx
        .cases
        .iter()
        .flat_map(|c| &c.pieces)
        .any(|p| std::str::from_utf8(p).is_err());
    assert!(split_char, "no piece splits a character");
    let stopped = lines
        .iter()
        .filter(|l| l.starts_with("push ") && !l.ends_with(" -"))
        .count();
    assert!(stopped >= 2, "fewer than two cases end on a stop string");
}

#[test]
fn runs_draw_the_pinned_tokens() {
    let fx = Fixtures::load();
    let lines = fx.replay_here();
    let mut drawn: Vec<(String, Vec<fixtures::Expect>)> = Vec::new();
    for line in &lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["run", name, "vocab", _] => drawn.push(((*name).to_owned(), Vec::new())),
            ["token", step, id, bits, ..] => {
                drawn
                    .last_mut()
                    .expect("a run is open")
                    .1
                    .push(fixtures::Expect {
                        step: step.parse().expect("step"),
                        id: id.parse().expect("id"),
                        logprob: u32::from_str_radix(bits, 16).expect("bits"),
                    })
            }
            ["error", ..] => panic!("a run failed: {line}"),
            _ => {}
        }
    }
    assert_eq!(drawn.len(), fx.runs.len());

    let mut unpinned = String::new();
    for (run, (name, got)) in fx.runs.iter().zip(&drawn) {
        assert_eq!(&run.name, name);
        assert_eq!(got.len(), run.steps as usize, "run {name}");
        if run.expect.is_empty() {
            unpinned += &format!("run {name}:\n");
            for e in got {
                unpinned += &format!("expect {} {} {:08x}\n", e.step, e.id, e.logprob);
            }
            continue;
        }
        for (want, got) in run.expect.iter().zip(got) {
            assert_eq!(
                want, got,
                "run {name} step {}: pinned token {} (logprob bits {:08x}), drawn {} ({:08x})",
                want.step, want.id, want.logprob, got.id, got.logprob
            );
        }
        assert_eq!(run.expect.len(), got.len(), "run {name}: pin every step");
    }
    assert!(
        unpinned.is_empty(),
        "runs without `expect` lines in fixtures/logits/runs.txt; \
         after checking them, add:\n{unpinned}"
    );

    // The proof must cover the vocabulary users run.
    assert!(
        fx.runs.iter().any(|r| r.logits.len() == 49152),
        "no run at vocabulary size 49152"
    );
    assert!(
        fx.runs.iter().any(|r| r.name.starts_with("golden/")),
        "no golden vector of sampler-core in fixtures/golden/"
    );
}

#[test]
fn f16_widening_is_exact_for_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
        let exp = i32::from((h >> 10) & 0x1f);
        let frac = f64::from(h & 0x3ff);
        let want = match exp {
            0 => sign * frac * 2f64.powi(-24),
            0x1f if frac == 0.0 => sign * f64::INFINITY,
            0x1f => f64::NAN,
            _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
        };
        let got = fixtures::f16_to_f32(h);
        if want.is_nan() {
            assert!(got.is_nan(), "{h:04x}");
        } else {
            assert_eq!(f64::from(got), want, "{h:04x}");
            assert_eq!(got.is_sign_negative(), h >> 15 == 1, "sign of {h:04x}");
        }
    }
}
