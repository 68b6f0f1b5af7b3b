//! Writes the golden vectors in `fixtures/golden/`.
//!
//! Run with `cargo run -p sampler-core --example golden`. Each file pins the
//! tokens and log-probabilities of a seeded run; `tests/golden.rs` replays
//! them. Regenerating changes them only when sampling output changed, which
//! must be a deliberate, documented decision. The format is described in
//! `tests/support/golden.rs`.

// A generator tool, not library code: a broken setup may abort it.
#![allow(clippy::indexing_slicing, clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/support/golden.rs"]
mod golden;

use golden::Case;
use sampler_core::{Config, Order};

/// Deterministic logits: a wide bulk with a few strong candidates.
fn lm_logits(v: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut unit = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..v)
        .map(|i| {
            let bulk = (unit() + unit() + unit() - 1.5) * 4.0;
            if i % 37 == 5 {
                bulk + 9.0
            } else {
                bulk
            }
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let mut specials = lm_logits(64, 6);
    for (i, x) in specials.iter_mut().enumerate() {
        match i % 9 {
            0 => *x = f32::NAN,
            4 => *x = f32::NEG_INFINITY,
            7 => *x = 2.5,
            _ => {}
        }
    }
    let case = |name: &str, logits: Vec<f32>, config: Config| Case {
        name: name.to_string(),
        logits,
        shift: 7,
        config,
        seed: 42,
        window: 0,
        bias: Vec::new(),
        steps: 32,
    };
    vec![
        case("default_v512", lm_logits(512, 1), Config::default()),
        Case {
            window: 16,
            bias: vec![(3, 1.5), (40, f32::NEG_INFINITY), (3, -0.25)],
            seed: 7,
            ..case(
                "llama_order_penalties_v512",
                lm_logits(512, 2),
                Config {
                    order: Order::LLAMA_CPP,
                    repeat_penalty: 1.1,
                    presence_penalty: 0.1,
                    frequency_penalty: 0.2,
                    ..Config::default()
                },
            )
        },
        Case {
            window: 8,
            ..case(
                "greedy_penalties_v256",
                lm_logits(256, 3),
                Config {
                    repeat_penalty: 1.3,
                    ..Config::greedy()
                },
            )
        },
        case(
            "top_p_only_v4096",
            lm_logits(4096, 4),
            Config {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..Config::default()
            },
        ),
        case(
            "min_p_hot_v1000",
            lm_logits(1000, 5),
            Config {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.1,
                ..Config::default()
            },
        ),
        Case {
            seed: 3,
            ..case(
                "ties_and_masks_v64",
                specials,
                Config {
                    temperature: 0.7,
                    top_k: 10,
                    ..Config::default()
                },
            )
        },
    ]
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden");
    std::fs::create_dir_all(&dir).expect("create fixtures/golden");
    for case in cases() {
        let results = golden::run(&case).expect("sampling a golden case");
        let path = dir.join(format!("{}.txt", case.name));
        std::fs::write(&path, golden::write(&case, &results)).expect("write golden file");
        eprintln!("wrote {}", path.display());
    }
}
