//! The logit vectors every case is fed: real ones, then tiled to larger vocabularies.
//!
//! Real logits come, in order of preference, from a `--dump-logits` file, from
//! a fresh generation with the model (in this process, through llama.cpp),
//! or from the two single-step fixtures committed under `fixtures/logits/`.
//! Each source also gives the token ids that serve as the penalty window.

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use sampler_core::{Candidate, Config, Input, Sampler};

use crate::KernelArgs;

/// The prompt whose continuation supplies the logits.
pub const PROMPT: &str = "Once upon a time, in a small village by the sea, there lived a";

/// File name of the default model, as `fixtures/fetch-model.sh` installs it.
const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Tokens in the penalty window of the penalty cases.
pub const WINDOW: usize = 64;

/// Real logits of several sampling steps, one vocabulary each.
pub struct Logits {
    /// One vector per step.
    pub steps: Vec<Vec<f32>>,
    /// The token ids of the penalty window, [`WINDOW`] of them.
    pub window: Vec<u32>,
    /// Where the logits came from, for the printed header.
    pub source: String,
}

/// The workspace root (the bench crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Loads or generates the real logits `args` asks for.
///
/// # Errors
///
/// - the dump file is unreadable, not a whole number of records, or holds
///   a record with every logit NaN or negative infinity;
/// - the model named by `--model` or `TALKBACK_MODEL` is missing, or
///   the model is not a GGUF file that llama.cpp can load;
/// - the model cannot be loaded or decoded;
/// - the fixtures are missing or malformed.
pub fn load(args: &KernelArgs) -> Result<Logits> {
    if let Some(path) = &args.logits {
        return from_dump(path, args.logits_vocab, args.steps as usize);
    }
    let named = args.model.clone().or_else(|| {
        std::env::var_os("TALKBACK_MODEL")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    // A model someone named must be the one used: timing the fixtures
    // instead would answer another question than the one asked.
    if let Some(path) = named {
        return generate(&path, args.steps as usize);
    }
    let fetched = workspace_root().join("models").join(DEFAULT_MODEL_FILE);
    if fetched.is_file() {
        return generate(&fetched, args.steps as usize);
    }
    note!(
        "talkback-bench: no model found (fixtures/fetch-model.sh installs it); \
         using the two single-step fixtures in fixtures/logits/"
    );
    from_fixtures()
}

/// Reads at most `steps` records of `vocab` logits from a `--dump-logits` file.
fn from_dump(path: &Path, vocab: usize, steps: usize) -> Result<Logits> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let record = vocab * 4;
    if record == 0 || bytes.is_empty() || bytes.len() % record != 0 {
        bail!(
            "{} holds {} bytes, not a whole number of {vocab}-logit records \
             (--logits-vocab sets the record size)",
            path.display(),
            bytes.len()
        );
    }
    let all: Vec<Vec<f32>> = bytes
        .chunks_exact(record)
        .take(steps)
        .map(|r| {
            r.chunks_exact(4)
                .map(|b| <[u8; 4]>::try_from(b).map_or(f32::NAN, f32::from_le_bytes))
                .collect()
        })
        .collect();
    // Such a record is no step any model produced, and it would fail
    // our sampler halfway through the run while llama.cpp's chain still
    // returns a token.
    let usable = |l: &Vec<f32>| l.iter().any(|x| !x.is_nan() && *x != f32::NEG_INFINITY);
    if let Some(i) = all.iter().position(|l| !usable(l)) {
        bail!(
            "record {i} of {} has no logit that is a number above negative infinity",
            path.display()
        );
    }
    // The window: each step's top token, as a greedy reading of the dump.
    let window = cycle(&all.iter().map(|l| top(l)).collect::<Vec<_>>());
    Ok(Logits {
        source: format!("{} ({} steps)", path.display(), all.len()),
        steps: all,
        window,
    })
}

/// The file a logits generator writes and this process reads back, in the
/// system's temporary folder (not the checkout, whose `target/` may not be
/// where cargo builds); removed when dropped.
struct Transfer(PathBuf);

impl Transfer {
    /// Makes a new, empty file for `steps` steps of logits.
    fn new(steps: usize) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "talkback-bench-logits-{}-{steps}.f32",
            std::process::id()
        ));
        // Made here, and only if new, so that the child writes to a file
        // of this process and not to whatever a stale link points at.
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Generates the logits in a child process, then reads them back.
///
/// llama.cpp's OpenMP worker threads keep spinning for a while after each
/// decode; in a child process they are gone before any timing starts.
fn generate(path: &Path, steps: usize) -> Result<Logits> {
    // A file that makes llama.cpp abort would kill the child with a page
    // of assertion text and a debugger's backtrace; this names the fault
    // in one line instead.
    talkback::gguf::check_file(path)?;
    let out = Transfer::new(steps)?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    note!(
        "talkback-bench: generating {steps} steps of logits with {}",
        path.display()
    );
    let child = std::process::Command::new(exe)
        .arg("dump-logits")
        .arg("--model")
        .arg(path)
        .args(["--steps", &steps.to_string()])
        .arg("--out")
        .arg(&out.0)
        .output()
        .context("cannot start the logits generator")?;
    if !child.status.success() {
        bail!(
            "generating logits failed ({}): {}",
            child.status,
            String::from_utf8_lossy(&child.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&child.stdout);
    let mut vocab = 0usize;
    let mut tokens = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("vocab ") {
            vocab = v.trim().parse().context("vocabulary size")?;
        } else if let Some(ids) = line.strip_prefix("tokens ") {
            for id in ids.split_whitespace() {
                tokens.push(id.parse::<u32>().context("token id")?);
            }
        }
    }
    let mut logits = from_dump(&out.0, vocab, steps)?;
    logits.window = cycle(&tokens);
    logits.source = format!(
        "{}, {steps} steps continuing {PROMPT:?} (temp 0.8, top-k 40, top-p 0.95, \
         min-p 0.05, seed 1)",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        )
    );
    Ok(logits)
}

/// Decodes [`PROMPT`] with the model, samples `steps` tokens with the default
/// settings, and writes each step's logits to `file` as little-endian f32.
///
/// Returns the lines `vocab N` and `tokens ID...` that [`generate`] reads.
///
/// # Errors
///
/// - the model cannot be loaded or decoded, or `file` cannot be written.
pub fn dump(path: &Path, steps: usize, file: &Path) -> Result<String> {
    let backend = LlamaBackend::init().context("cannot start the llama.cpp backend")?;
    let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot load model {}", path.display()))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = i32::try_from(threads).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(&backend, params)
        .context("cannot create a context")?;
    let prompt = model.vocab().tokenize(PROMPT.as_bytes(), true, false);
    let mut batch = LlamaBatch::new(512, 1);
    let last = prompt.len().saturating_sub(1);
    for (i, &t) in prompt.iter().enumerate() {
        batch.add(t, i32::try_from(i)?, &[0], i == last)?;
    }
    ctx.decode(&mut batch).context("cannot decode the prompt")?;

    let vocab = usize::try_from(model.n_vocab())?;
    let mut scratch = vec![Candidate::default(); vocab];
    let mut sampler = Sampler::new(Config::default(), 1, &mut scratch)
        .map_err(|e| anyhow!("sampler settings: {e}"))?;
    let mut bytes = Vec::with_capacity(steps * vocab * 4);
    let mut tokens = Vec::with_capacity(steps);
    for pos in prompt.len()..prompt.len() + steps {
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        for x in logits {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let choice = sampler
            .sample(Input::new(logits), None)
            .map_err(|e| anyhow!("sampling: {e}"))?;
        tokens.push(choice.id.to_string());
        batch.clear();
        batch.add(
            LlamaToken(i32::try_from(choice.id)?),
            i32::try_from(pos)?,
            &[0],
            true,
        )?;
        ctx.decode(&mut batch).context("cannot decode")?;
    }
    std::fs::write(file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
    let mut out = String::new();
    writeln!(out, "vocab {vocab}")?;
    writeln!(out, "tokens {}", tokens.join(" "))?;
    Ok(out)
}

/// Reads the two committed f16 fixtures; their prompt tokens make the window.
fn from_fixtures() -> Result<Logits> {
    let dir = workspace_root().join("fixtures").join("logits");
    let mut steps = Vec::new();
    let mut tokens = Vec::new();
    for name in ["story.txt", "chat-capital.txt"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (logits, prompt) = parse_fixture(&text).with_context(|| path.display().to_string())?;
        steps.push(logits);
        tokens.extend(prompt);
    }
    Ok(Logits {
        source: "fixtures/logits/{story,chat-capital}.txt (2 steps)".into(),
        steps,
        window: cycle(&tokens),
    })
}

/// Parses one f16 fixture: `# Tokens:` gives the prompt ids, other non-comment
/// lines hold four-digit hex f16 values.
fn parse_fixture(text: &str) -> Result<(Vec<f32>, Vec<u32>)> {
    let mut logits = Vec::new();
    let mut prompt = Vec::new();
    for line in text.lines() {
        if let Some(ids) = line.strip_prefix("# Tokens:") {
            for id in ids.split_whitespace() {
                prompt.push(
                    id.parse::<u32>()
                        .with_context(|| format!("token id {id:?}"))?,
                );
            }
        } else if !line.starts_with('#') {
            for word in line.split_whitespace() {
                let bits =
                    u16::from_str_radix(word, 16).with_context(|| format!("f16 bits {word:?}"))?;
                logits.push(f16_to_f32(bits));
            }
        }
    }
    if logits.is_empty() || prompt.is_empty() {
        bail!("no logits or no prompt tokens");
    }
    Ok((logits, prompt))
}

/// Widens IEEE half-precision bits to f32, exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac * 2^-24.
        (0, _) => {
            let v = frac as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Repeats `ids` until there are [`WINDOW`] of them.
fn cycle(ids: &[u32]) -> Vec<u32> {
    ids.iter().copied().cycle().take(WINDOW).collect()
}

/// The id of the highest logit (lowest id on ties); NaN never wins.
fn top(logits: &[f32]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (id, &x) in (0u32..).zip(logits) {
        if x > best.1 {
            best = (id, x);
        }
    }
    best.0
}

/// The real vector `base` stretched to `vocab` logits.
///
/// The first copy is `base` itself; each later copy is `base` plus a
/// deterministic perturbation in [-0.125, 0.125), so the larger vocabulary
/// has the real vector's shape but no exact ties between copies. A vocabulary
/// smaller than `base` takes its prefix.
pub fn tile(base: &[f32], vocab: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(vocab);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for (i, &x) in base.iter().cycle().take(vocab).enumerate() {
        if i < base.len() {
            out.push(x);
            continue;
        }
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
        out.push(x + (unit - 0.5) * 0.25);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        // 0x4915 is the first logit of the chat fixture: 10.1640625.
        assert_eq!(f16_to_f32(0x4915), 10.164_062_5);
    }

    #[test]
    fn tiling_keeps_the_real_prefix_and_perturbs_copies_slightly() {
        let base: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let t = tile(&base, 250);
        assert_eq!(t.len(), 250);
        assert_eq!(&t[..100], &base[..]);
        for (i, &x) in t.iter().enumerate().skip(100) {
            let d = x - base[i % 100];
            assert!((-0.125..0.125).contains(&d), "{i}: {d}");
        }
        assert_ne!(t[100], base[0]);
        assert_eq!(tile(&base, 10), &base[..10]);
    }

    #[test]
    fn fixture_parsing_reads_tokens_and_values() {
        let text = "# header\n# Tokens: 5 7\n3c00 c000\n4915\n";
        let (l, p) = parse_fixture(text).unwrap();
        assert_eq!(p, [5, 7]);
        assert_eq!(l, [1.0, -2.0, 10.164_062_5]);
        assert!(parse_fixture("# Tokens: 1\n").is_err());
        assert!(parse_fixture("# Tokens: 1\nzzzz\n").is_err());
    }

    #[test]
    fn a_dump_record_with_nothing_to_draw_is_refused() {
        let path = std::env::temp_dir().join(format!("bench-dump-{}.f32", std::process::id()));
        let record = |xs: [f32; 3]| xs.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        let mut bytes = record([1.0, f32::NAN, f32::NEG_INFINITY]);
        bytes.extend(record([f32::NAN, f32::NEG_INFINITY, f32::NAN]));
        std::fs::write(&path, &bytes).unwrap();
        let e = from_dump(&path, 3, 64).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "record 1 of {} has no logit that is a number above negative infinity",
                path.display()
            )
        );
        // The first record alone is usable, +inf included.
        let ok = from_dump(&path, 3, 1).unwrap();
        assert_eq!(ok.steps.len(), 1);
        std::fs::write(&path, record([f32::INFINITY, 0.0, 0.0])).unwrap();
        assert_eq!(from_dump(&path, 3, 64).unwrap().window[0], 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_named_model_that_is_missing_is_an_error_not_the_fixtures() {
        let missing = std::env::temp_dir().join("bench-no-such-model.gguf");
        let args = KernelArgs {
            model: Some(missing.clone()),
            ..KernelArgs::default()
        };
        let e = load(&args).err().unwrap();
        assert!(
            format!("{e:#}").starts_with(&format!("model {} does not exist", missing.display())),
            "{e:#}"
        );
        let args = KernelArgs {
            model: Some(std::env::temp_dir()),
            ..KernelArgs::default()
        };
        let e = load(&args).err().unwrap();
        assert!(
            e.to_string().ends_with(" is a directory, not a GGUF file"),
            "{e}"
        );
    }

    #[test]
    fn a_model_llama_cpp_would_abort_on_is_refused_in_one_line() {
        // GGUF version 3, no tensors, two keys: a llama model of 0 layers.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(2u64.to_le_bytes());
        for (key, kind, value) in [
            (
                "general.architecture",
                8u32,
                [&5u64.to_le_bytes()[..], b"llama"].concat(),
            ),
            ("llama.block_count", 4, 0u32.to_le_bytes().to_vec()),
        ] {
            bytes.extend((key.len() as u64).to_le_bytes());
            bytes.extend(key.as_bytes());
            bytes.extend(kind.to_le_bytes());
            bytes.extend(value);
        }
        let path = std::env::temp_dir().join(format!("bench-layers-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let args = KernelArgs {
            model: Some(path.clone()),
            ..KernelArgs::default()
        };
        let e = format!("{:#}", load(&args).err().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("`llama.block_count` is 0"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn window_cycles_to_its_length_and_top_skips_nan() {
        assert_eq!(cycle(&[1, 2, 3]).len(), WINDOW);
        assert_eq!(cycle(&[1, 2, 3])[3], 1);
        assert_eq!(top(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
    }
}
