//! Reads the fixture files the firmware replays (std only).
//!
//! Compiled twice from this one file: by `build.rs`, which turns the
//! fixtures into statics for the firmware, and by the x86-64 test, which
//! replays the same values on the host. Errors name the file and line.

use std::fs;
use std::path::{Path, PathBuf};

/// An error message naming the file and line at fault.
pub type Error = String;

/// One stream case as read from a pieces file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// Name, unique in the file.
    pub name: String,
    /// Stop strings.
    pub stops: Vec<Vec<u8>>,
    /// Token pieces, in order.
    pub pieces: Vec<Vec<u8>>,
}

/// Every sampling run the proof replays, in replay order: sampler-core's
/// golden vectors (`golden/*.txt`), then the runs over real logits
/// (`logits/runs.txt`).
///
/// # Errors
///
/// - when a file is missing or malformed.
pub fn all_runs(fixtures: &Path) -> Result<Vec<Run>, Error> {
    let mut runs = Vec::new();
    for file in txt_files(&fixtures.join("golden"))? {
        runs.push(read_golden(&file)?);
    }
    runs.extend(read_runs(&fixtures.join("logits").join("runs.txt"))?);
    Ok(runs)
}

/// Every stream case the proof replays: `pieces/*.txt` in name order.
///
/// # Errors
///
/// - when a file is missing or malformed.
pub fn all_cases(fixtures: &Path) -> Result<Vec<Case>, Error> {
    let mut cases = Vec::new();
    for file in txt_files(&fixtures.join("pieces"))? {
        cases.extend(read_pieces(&file)?);
    }
    Ok(cases)
}

/// The `*.txt` files of `dir`, sorted by name so the replay order is stable.
///
/// # Errors
///
/// - when `dir` cannot be read.
pub fn txt_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "txt") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses a pieces file: `case NAME`, `stop HEX`, `piece ID HEX`, `end`;
/// blank lines and lines starting with `#` are skipped.
///
/// # Errors
///
/// - when the file cannot be read, a line is not one of these records, a
///   record comes outside a case, or the last case has no `end`.
pub fn read_pieces(path: &Path) -> Result<Vec<Case>, Error> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cases = Vec::new();
    let mut open: Option<Case> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: &str| format!("{}:{}: {e}", path.display(), n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match (words.as_slice(), open.as_mut()) {
            ([], _) => {}
            ([first, ..], _) if first.starts_with('#') => {}
            (["case", name], None) => {
                open = Some(Case {
                    name: (*name).to_owned(),
                    stops: Vec::new(),
                    pieces: Vec::new(),
                });
            }
            (["stop", hex], Some(case)) => case.stops.push(unhex(hex).map_err(&at)?),
            (["piece", _id, hex], Some(case)) => case.pieces.push(unhex(hex).map_err(&at)?),
            (["end"], Some(_)) => cases.extend(open.take()),
            _ => return Err(at(&format!("unexpected line {line:?}"))),
        }
    }
    if open.is_some() {
        return Err(format!("{}: the last case has no `end`", path.display()));
    }
    Ok(cases)
}

/// Decodes hex digits, two per byte.
///
/// # Errors
///
/// - on an odd count or a character that is not a hex digit.
pub fn unhex(hex: &str) -> Result<Vec<u8>, &'static str> {
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or("not hex")
        })
        .collect()
}

/// The settings of a sampling run, as written in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Settings {
    /// `temperature`.
    pub temperature: f32,
    /// `top_k`.
    pub top_k: u32,
    /// `top_p`.
    pub top_p: f32,
    /// `min_p`.
    pub min_p: f32,
    /// `repeat_penalty`.
    pub repeat_penalty: f32,
    /// `presence_penalty`.
    pub presence_penalty: f32,
    /// `frequency_penalty`.
    pub frequency_penalty: f32,
}

/// One token a run must draw: step, id and the bits of its log-probability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Step, from 0.
    pub step: u32,
    /// Token id.
    pub id: u32,
    /// `f32::to_bits` of the log-probability.
    pub logprob: u32,
}

/// A sampling run: logits sampled for several steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Name, unique among all runs.
    pub name: String,
    /// The file the logits come from, for messages.
    pub source: String,
    /// One logit per token id.
    pub logits: Vec<f32>,
    /// Step `s` sees the logits rotated left by `s * shift` places.
    pub shift: usize,
    /// Generator seed.
    pub seed: u64,
    /// Number of draws.
    pub steps: u32,
    /// Penalty window: how many of the last drawn tokens the next step sees.
    pub window: usize,
    /// Stage settings.
    pub settings: Settings,
    /// Stage order: `talkback`, `llama.cpp` or a comma list of stages.
    pub order: String,
    /// Logit bias entries.
    pub bias: Vec<(u32, f32)>,
    /// The tokens the run must draw.
    pub expect: Vec<Expect>,
}

/// Parses a runs file: records from `run NAME` to `end`, each key once
/// (`bias` and `expect` may repeat); every setting must be given. `logits
/// NAME` reads `NAME.txt` beside the runs file (see [`read_logits`]).
///
/// # Errors
///
/// - when the file cannot be read, a line is malformed, a key is unknown
///   or repeated, a run lacks a key, or its logits file cannot be read.
pub fn read_runs(path: &Path) -> Result<Vec<Run>, Error> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut runs = Vec::new();
    let mut open: Option<(String, Vec<(String, String)>)> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: &str| format!("{}:{}: {e}", path.display(), n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match (key, open.as_mut()) {
            ("run", None) => open = Some((value.to_owned(), Vec::new())),
            ("end", Some(_)) => {
                if let Some((name, fields)) = open.take() {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    runs.push(build_run(name, &fields, dir).map_err(|e| at(&e))?);
                }
            }
            (_, Some((_, fields))) if !matches!(key, "run" | "end") => {
                fields.push((key.to_owned(), value.to_owned()));
            }
            _ => return Err(at(&format!("unexpected line {line:?}"))),
        }
    }
    if open.is_some() {
        return Err(format!("{}: the last run has no `end`", path.display()));
    }
    Ok(runs)
}

fn build_run(name: String, fields: &[(String, String)], dir: &Path) -> Result<Run, Error> {
    let one = |key: &str| -> Result<&str, Error> {
        let mut found = fields.iter().filter(|(k, _)| k == key);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Ok(v.as_str()),
            (None, _) => Err(format!("run {name}: `{key}` is missing")),
            (Some(_), Some(_)) => Err(format!("run {name}: `{key}` is given twice")),
        }
    };
    let num = |key: &str| -> Result<f32, Error> {
        one(key)?
            .parse()
            .map_err(|e| format!("run {name}: `{key}`: {e}"))
    };
    let int = |key: &str| -> Result<u64, Error> {
        one(key)?
            .parse()
            .map_err(|e| format!("run {name}: `{key}`: {e}"))
    };
    let narrow = |key: &str| -> Result<u32, Error> {
        u32::try_from(int(key)?).map_err(|e| format!("run {name}: `{key}`: {e}"))
    };
    let known = [
        "logits",
        "seed",
        "steps",
        "window",
        "order",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "bias",
        "expect",
    ];
    if let Some((k, _)) = fields.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(format!("run {name}: unknown key `{k}`"));
    }

    let mut bias = Vec::new();
    let mut expect = Vec::new();
    for (key, value) in fields {
        let words: Vec<&str> = value.split_whitespace().collect();
        let bad = || format!("run {name}: malformed `{key} {value}`");
        match (key.as_str(), words.as_slice()) {
            ("bias", [id, v]) => bias.push((
                id.parse().map_err(|_| bad())?,
                v.parse().map_err(|_| bad())?,
            )),
            ("expect", [step, id, bits]) => expect.push(Expect {
                step: step.parse().map_err(|_| bad())?,
                id: id.parse().map_err(|_| bad())?,
                logprob: u32::from_str_radix(bits, 16).map_err(|_| bad())?,
            }),
            ("bias" | "expect", _) => return Err(bad()),
            _ => {}
        }
    }

    let file = dir.join(format!("{}.txt", one("logits")?));
    Ok(Run {
        source: file.display().to_string(),
        logits: read_logits(&file)?,
        shift: 0,
        seed: int("seed")?,
        steps: narrow("steps")?,
        window: usize::try_from(int("window")?).map_err(|e| e.to_string())?,
        settings: Settings {
            temperature: num("temperature")?,
            top_k: narrow("top_k")?,
            top_p: num("top_p")?,
            min_p: num("min_p")?,
            repeat_penalty: num("repeat_penalty")?,
            presence_penalty: num("presence_penalty")?,
            frequency_penalty: num("frequency_penalty")?,
        },
        order: one("order")?.to_owned(),
        bias,
        expect,
        name,
    })
}

/// Reads a logits file: f16 bit patterns as hex words, any number a line,
/// in token-id order, each widened exactly to f32.
///
/// # Errors
///
/// - when the file cannot be read or a word is not four hex digits.
pub fn read_logits(path: &Path) -> Result<Vec<f32>, Error> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut logits = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        for word in line.split_whitespace() {
            let bits = (word.len() == 4)
                .then(|| u16::from_str_radix(word, 16).ok())
                .flatten()
                .ok_or_else(|| format!("{}:{}: bad f16 {word:?}", path.display(), n + 1))?;
            logits.push(f16_to_f32(bits));
        }
    }
    Ok(logits)
}

/// Widens IEEE half-precision bits to the f32 of the same value (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac * 2^-24, exact in f32.
        (0, f) => sign | ((f as f32) * f32::from_bits(0x3380_0000)).to_bits(),
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7fc0_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Parses a golden vector of sampler-core (`fixtures/golden/*.txt`, format
/// in `sampler-core/tests/support/golden.rs`): keys and values split by
/// spaces, every float as its f32 bits in hex, one `step I ID BITS` line
/// per draw. The run is named after the file.
///
/// # Errors
///
/// - when the file cannot be read, a key is unknown, a value is malformed,
///   or the logits or steps disagree with `vocab` and `steps`.
pub fn read_golden(path: &Path) -> Result<Run, Error> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut run = Run {
        name: format!("golden/{name}"),
        source: path.display().to_string(),
        logits: Vec::new(),
        shift: 0,
        seed: 0,
        steps: 0,
        window: 0,
        settings: Settings::default(),
        order: String::new(),
        bias: Vec::new(),
        expect: Vec::new(),
    };
    let mut vocab = None;
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("{}:{}: malformed line {:.60?}", path.display(), n + 1, line);
        let words: Vec<&str> = line.split(' ').collect();
        let bits = |w: &str| {
            u32::from_str_radix(w, 16)
                .map(f32::from_bits)
                .map_err(|_| bad())
        };
        let int = |w: &str| w.parse::<u64>().map_err(|_| bad());
        let s = &mut run.settings;
        match words.as_slice() {
            ["vocab", v] => vocab = Some(int(v)?),
            ["logits", xs @ ..] => {
                run.logits = xs.iter().map(|w| bits(w)).collect::<Result<_, _>>()?
            }
            ["shift", v] => run.shift = usize::try_from(int(v)?).map_err(|_| bad())?,
            ["temperature", x] => s.temperature = bits(x)?,
            ["top_k", v] => s.top_k = u32::try_from(int(v)?).map_err(|_| bad())?,
            ["top_p", x] => s.top_p = bits(x)?,
            ["min_p", x] => s.min_p = bits(x)?,
            ["repeat_penalty", x] => s.repeat_penalty = bits(x)?,
            ["presence_penalty", x] => s.presence_penalty = bits(x)?,
            ["frequency_penalty", x] => s.frequency_penalty = bits(x)?,
            ["order", o] => (*o).clone_into(&mut run.order),
            ["seed", v] => run.seed = int(v)?,
            ["window", v] => run.window = usize::try_from(int(v)?).map_err(|_| bad())?,
            ["bias", id, x] => run
                .bias
                .push((u32::try_from(int(id)?).map_err(|_| bad())?, bits(x)?)),
            ["steps", v] => run.steps = u32::try_from(int(v)?).map_err(|_| bad())?,
            ["step", i, id, b] => run.expect.push(Expect {
                step: u32::try_from(int(i)?).map_err(|_| bad())?,
                id: u32::try_from(int(id)?).map_err(|_| bad())?,
                logprob: u32::from_str_radix(b, 16).map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        }
    }
    let lengths_agree = vocab == Some(run.logits.len() as u64)
        && run.expect.len() == run.steps as usize
        && run.expect.iter().zip(0..).all(|(e, i)| e.step == i);
    if !lengths_agree || run.order.is_empty() {
        return Err(format!(
            "{}: vocab, logits, steps and step lines disagree, or a key is missing",
            path.display()
        ));
    }
    Ok(run)
}
