//! Per-token timing of the sampling chain on synthetic logits.
//!
//! Run with `cargo run --release -p sampler-core --example bench`. Each line
//! names its case (`default_lm_v49152`, ...) and prints the best and the
//! median time of one `sample()` call over many calls; on a shared machine
//! the best is the steadier number. Two logit shapes are measured: `lm`, a
//! language-model-like shape (a few high logits over a wide normal bulk),
//! and `flat`, uniform in [-1, 1], the worst case for top-p; and, when
//! `fixtures/logits/` holds them, two real SmolLM2 logit vectors.

// A measuring tool, not library code: a broken setup may abort it.
#![allow(clippy::indexing_slicing, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use sampler_core::{Candidate, Config, Input, Sampler};

/// A small deterministic generator, so every run measures the same logits.
struct Gen(u64);

impl Gen {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller; one of the pair is enough here.
        let (a, b) = (self.unit().max(1e-300), self.unit());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

fn lm_logits(v: usize, seed: u64) -> Vec<f32> {
    let mut g = Gen(seed);
    let mut out: Vec<f32> = (0..v).map(|_| (g.normal() * 2.5) as f32).collect();
    for rank in 0..64 {
        let i = (g.unit() * v as f64) as usize;
        out[i] = (22.0 - 2.0 * (1.0 + rank as f64).ln() + g.normal() * 0.3) as f32;
    }
    out
}

fn flat_logits(v: usize, seed: u64) -> Vec<f32> {
    let mut g = Gen(seed);
    (0..v).map(|_| (g.unit() * 2.0 - 1.0) as f32).collect()
}

/// Real SmolLM2 logits from `fixtures/logits/NAME.txt` (f16 bit patterns).
fn real_logits(name: &str) -> Option<Vec<f32>> {
    let path = format!(
        "{}/../fixtures/logits/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).ok()?;
    let words = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace);
    words
        .map(|w| u16::from_str_radix(w, 16).ok().map(f16_to_f32))
        .collect()
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

fn measure(name: &str, config: Config, logits: &[Vec<f32>], recent: &[u32]) {
    if let Some(only) = std::env::args().nth(1) {
        if !name.contains(&only) {
            return;
        }
    }
    let v = logits[0].len();
    let mut scratch = vec![Candidate::default(); v];
    let mut sampler = Sampler::new(config, 1, &mut scratch).expect("valid config");
    let calls = (20_000_000 / v).clamp(20, 2000)
        * std::env::args()
            .nth(2)
            .and_then(|r| r.parse::<usize>().ok())
            .unwrap_or(1);
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let input = Input {
            logits: &logits[i % logits.len()],
            recent,
            bias: &[],
        };
        let start = Instant::now();
        let choice = sampler.sample(black_box(input), None);
        times.push(start.elapsed());
        black_box(choice.expect("sample"));
    }
    times.sort_unstable();
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    let (best, median) = (times[0], times[times.len() / 2]);
    println!(
        "{name:<36} best {:>9.2} us   median {:>9.2} us",
        us(best),
        us(median)
    );
}

fn main() {
    let default = Config::default();
    let greedy = Config::greedy();
    let top_p = Config {
        top_k: 0,
        min_p: 0.0,
        ..Config::default()
    };
    let hot_top_p = Config {
        temperature: 1.5,
        top_k: 0,
        min_p: 0.0,
        ..Config::default()
    };
    let temperature_only = Config {
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..Config::default()
    };
    let penalties = Config {
        repeat_penalty: 1.1,
        frequency_penalty: 0.1,
        ..Config::default()
    };
    // Optional: a `--dump-logits` file of 49,152-token records (for
    // instance from `talkback complete ... -n 64 --dump-logits FILE`), with
    // each step's top token as the penalty window, as talkback-bench does.
    if let Ok(path) = std::env::var("BENCH_DUMP") {
        let bytes = std::fs::read(&path).expect("read BENCH_DUMP");
        let steps: Vec<Vec<f32>> = bytes
            .chunks_exact(49_152 * 4)
            .map(|r| {
                r.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect();
        let tops: Vec<u32> = steps
            .iter()
            .map(|l| {
                let mut best = (0u32, f32::NEG_INFINITY);
                for (id, &x) in (0u32..).zip(l) {
                    if x > best.1 {
                        best = (id, x);
                    }
                }
                best.0
            })
            .collect();
        let window: Vec<u32> = tops.iter().copied().cycle().take(64).collect();
        measure("default_dump_v49152", default, &steps, &[]);
        measure(
            "default_penalties_w64_dump_v49152",
            penalties,
            &steps,
            &window,
        );
    }
    for name in ["story", "chat-capital"] {
        let Some(real) = real_logits(name) else {
            eprintln!("fixtures/logits/{name}.txt not found; skipping the real-logit cases");
            continue;
        };
        let v = real.len();
        let real = vec![real];
        measure(&format!("default_{name}_v{v}"), default, &real, &[]);
        measure(&format!("greedy_{name}_v{v}"), greedy, &real, &[]);
        measure(&format!("topp_p095_{name}_v{v}"), top_p, &real, &[]);
        measure(&format!("topp_p095_t15_{name}_v{v}"), hot_top_p, &real, &[]);
        // A window of the 64 most likely tokens: every penalised id competes.
        let mut order: Vec<u32> = (0..v as u32).collect();
        order.sort_by(|&a, &b| real[0][b as usize].total_cmp(&real[0][a as usize]));
        let window: Vec<u32> = order.iter().copied().take(64).collect();
        measure(
            &format!("default_penalties_w64top_{name}_v{v}"),
            penalties,
            &real,
            &window,
        );
        measure(
            &format!("temperature_only_{name}_v{v}"),
            temperature_only,
            &real,
            &[],
        );
    }
    for v in [49152usize, 151_936, 262_144] {
        let lm: Vec<Vec<f32>> = (0..8).map(|s| lm_logits(v, s)).collect();
        let flat: Vec<Vec<f32>> = (0..8).map(|s| flat_logits(v, 100 + s)).collect();
        let recent: Vec<u32> = (0..64).map(|i| (i * 7919 % v) as u32).collect();
        measure(&format!("default_lm_v{v}"), default, &lm, &[]);
        measure(&format!("default_flat_v{v}"), default, &flat, &[]);
        measure(&format!("greedy_lm_v{v}"), greedy, &lm, &[]);
        measure(&format!("topp_p095_lm_v{v}"), top_p, &lm, &[]);
        measure(&format!("topp_p095_flat_v{v}"), top_p, &flat, &[]);
        measure(
            &format!("default_penalties_w64_lm_v{v}"),
            penalties,
            &lm,
            &recent,
        );
    }
}
