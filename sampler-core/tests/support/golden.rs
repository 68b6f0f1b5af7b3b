//! The golden-vector file format, shared by `examples/golden.rs` (writer) and
//! `tests/golden.rs` (checker).
//!
//! A file is plain text, one record per line, fields split by single spaces;
//! lines starting with `#` are comments. Every f32 is written as its IEEE bit
//! pattern in 8 lowercase hex digits, so the file is exact and a `no_std`
//! program can parse it without float formatting. Keys, in order:
//!
//! ```text
//! vocab N                      vocabulary size
//! logits X0 X1 ... X(N-1)      base logits (f32 bits)
//! shift S                      step s uses the base logits rotated left by s*S
//! temperature X | top_k K | top_p X | min_p X
//! repeat_penalty X | presence_penalty X | frequency_penalty X
//! order NAME                   "talkback" or "llama.cpp"
//! seed N                       generator seed (u64, decimal)
//! window W                     penalty window: the last W chosen ids, oldest first
//! bias ID X                    zero or more logit-bias entries, in order
//! steps N
//! step I ID LOGPROB            one line per step: index, chosen id, logprob bits
//! ```
// Test support: a malformed case may abort the test.
#![allow(dead_code, clippy::indexing_slicing)]

use sampler_core::{Candidate, Config, Input, Order, Sampler};

/// One golden case: everything needed to replay it.
pub struct Case {
    pub name: String,
    pub logits: Vec<f32>,
    pub shift: usize,
    pub config: Config,
    pub seed: u64,
    pub window: usize,
    pub bias: Vec<(u32, f32)>,
    pub steps: usize,
}

/// Runs `case` and returns `(id, logprob bits)` per step.
pub fn run(case: &Case) -> Result<Vec<(u32, u32)>, String> {
    let v = case.logits.len();
    let mut scratch = vec![Candidate::default(); v];
    let mut sampler =
        Sampler::new(case.config, case.seed, &mut scratch).map_err(|e| e.to_string())?;
    let mut chosen: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    let mut logits = vec![0.0f32; v];
    for step in 0..case.steps {
        let start = (step * case.shift) % v;
        for (i, slot) in logits.iter_mut().enumerate() {
            *slot = case.logits[(start + i) % v];
        }
        let recent = &chosen[chosen.len().saturating_sub(case.window)..];
        let input = Input {
            logits: &logits,
            recent,
            bias: &case.bias,
        };
        let choice = sampler
            .sample(input, None)
            .map_err(|e| format!("step {step}: {e}"))?;
        out.push((choice.id, choice.logprob.to_bits()));
        chosen.push(choice.id);
    }
    Ok(out)
}

fn hex(x: f32) -> String {
    format!("{:08x}", x.to_bits())
}

/// The file text for `case` and its results.
pub fn write(case: &Case, results: &[(u32, u32)]) -> String {
    let c = &case.config;
    let mut s = String::new();
    s.push_str(&format!("# sampler-core golden vector: {}\n", case.name));
    s.push_str("# Regenerate: cargo run -p sampler-core --example golden\n");
    s.push_str(&format!("vocab {}\n", case.logits.len()));
    let words: Vec<String> = case.logits.iter().map(|&x| hex(x)).collect();
    s.push_str(&format!("logits {}\n", words.join(" ")));
    s.push_str(&format!("shift {}\n", case.shift));
    s.push_str(&format!("temperature {}\n", hex(c.temperature)));
    s.push_str(&format!("top_k {}\n", c.top_k));
    s.push_str(&format!("top_p {}\n", hex(c.top_p)));
    s.push_str(&format!("min_p {}\n", hex(c.min_p)));
    s.push_str(&format!("repeat_penalty {}\n", hex(c.repeat_penalty)));
    s.push_str(&format!("presence_penalty {}\n", hex(c.presence_penalty)));
    s.push_str(&format!("frequency_penalty {}\n", hex(c.frequency_penalty)));
    s.push_str(&format!("order {}\n", c.order.name().unwrap_or("custom")));
    s.push_str(&format!("seed {}\n", case.seed));
    s.push_str(&format!("window {}\n", case.window));
    for &(id, b) in &case.bias {
        s.push_str(&format!("bias {id} {}\n", hex(b)));
    }
    s.push_str(&format!("steps {}\n", case.steps));
    for (i, (id, bits)) in results.iter().enumerate() {
        s.push_str(&format!("step {i} {id} {bits:08x}\n"));
    }
    s
}

fn f32_bits(word: &str) -> Result<f32, String> {
    u32::from_str_radix(word, 16)
        .map(f32::from_bits)
        .map_err(|e| format!("bad f32 {word}: {e}"))
}

fn number<T: std::str::FromStr>(word: &str) -> Result<T, String> {
    word.parse().map_err(|_| format!("bad number {word}"))
}

/// Parses a file into its case and the recorded `(id, logprob bits)` per step.
pub fn parse(name: &str, text: &str) -> Result<(Case, Vec<(u32, u32)>), String> {
    let mut case = Case {
        name: name.to_string(),
        logits: Vec::new(),
        shift: 0,
        config: Config::default(),
        seed: 0,
        window: 0,
        bias: Vec::new(),
        steps: 0,
    };
    let mut vocab = 0usize;
    let mut results = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut words = line.split(' ');
        let key = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let one = || {
            rest.first()
                .copied()
                .ok_or_else(|| format!("{key}: missing value"))
        };
        let c = &mut case.config;
        match key {
            "vocab" => vocab = number(one()?)?,
            "logits" => case.logits = rest.iter().map(|w| f32_bits(w)).collect::<Result<_, _>>()?,
            "shift" => case.shift = number(one()?)?,
            "temperature" => c.temperature = f32_bits(one()?)?,
            "top_k" => c.top_k = number(one()?)?,
            "top_p" => c.top_p = f32_bits(one()?)?,
            "min_p" => c.min_p = f32_bits(one()?)?,
            "repeat_penalty" => c.repeat_penalty = f32_bits(one()?)?,
            "presence_penalty" => c.presence_penalty = f32_bits(one()?)?,
            "frequency_penalty" => c.frequency_penalty = f32_bits(one()?)?,
            "order" => {
                c.order = Order::from_name(one()?).ok_or_else(|| format!("bad order {line}"))?
            }
            "seed" => case.seed = number(one()?)?,
            "window" => case.window = number(one()?)?,
            "bias" => {
                let id = number(one()?)?;
                let b = f32_bits(rest.get(1).ok_or("bias: missing value")?)?;
                case.bias.push((id, b));
            }
            "steps" => case.steps = number(one()?)?,
            "step" => {
                let [i, id, bits] = rest[..] else {
                    return Err(format!("bad step line: {line}"));
                };
                if number::<usize>(i)? != results.len() {
                    return Err(format!("steps out of order at {line}"));
                }
                let bits = u32::from_str_radix(bits, 16).map_err(|e| e.to_string())?;
                results.push((number(id)?, bits));
            }
            _ => return Err(format!("unknown key {key}")),
        }
    }
    if case.logits.len() != vocab || results.len() != case.steps {
        return Err(format!("{name}: lengths disagree with the header"));
    }
    Ok((case, results))
}
