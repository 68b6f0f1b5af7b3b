//! `sample()` and `shape()` fit the stack bounds the crate documents.
//!
//! Each runs, with the largest penalty window and bias list, on a thread
//! with a small stack; overflowing it would abort the test binary. On
//! x86-64 Linux a thread of N KiB leaves at most N KiB to its closure (the
//! thread's own start-up and rounding take the rest). No thread gets less
//! than 16 KiB there, so the 8 KiB bound of `sample()` is checked by
//! occupying 8 KiB of a 16 KiB thread with a frame of its own first; the
//! sampler itself, which holds the list of changed logits, lives on the
//! heap. `shape()` builds that list on its stack and gets 20 KiB.
//! Unoptimised builds keep every temporary on the stack and get 64 KiB.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use sampler_core::{
    shape, Alternative, Candidate, Config, Input, Report, Sampler, ShapeReport, ShapeRow, MAX_BIAS,
    MAX_RECENT,
};

/// The thread for `sample()`, and how much of it is taken before the call.
#[cfg(not(debug_assertions))]
const SAMPLE_THREAD: usize = 16 * 1024;
#[cfg(not(debug_assertions))]
const SAMPLE_TAKEN: usize = 8 * 1024;
#[cfg(debug_assertions)]
const SAMPLE_THREAD: usize = 64 * 1024;
#[cfg(debug_assertions)]
const SAMPLE_TAKEN: usize = 0;

#[cfg(not(debug_assertions))]
const SHAPE_THREAD: usize = 20 * 1024;
#[cfg(debug_assertions)]
const SHAPE_THREAD: usize = 64 * 1024;

const V: usize = 50_000;

fn logits() -> Vec<f32> {
    (0..V).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect()
}

fn recent() -> Vec<u32> {
    (0..MAX_RECENT as u32).map(|i| i * 37 % V as u32).collect()
}

fn bias() -> Vec<(u32, f32)> {
    (0..MAX_BIAS as u32)
        .map(|i| (i * 101 % V as u32, 0.5))
        .collect()
}

fn configs() -> [Config; 3] {
    let config = Config {
        repeat_penalty: 1.2,
        frequency_penalty: 0.1,
        ..Config::default()
    };
    [config, Config { top_k: 0, ..config }, Config::greedy()]
}

/// Runs `f` below a frame of `N` bytes that stays in use until it returns.
#[inline(never)]
fn below_a_frame<const N: usize>(f: impl FnOnce()) {
    let frame = black_box([0u8; N]);
    f();
    black_box(&frame);
}

#[test]
fn sampling_fits_the_documented_stack() {
    let (logits, recent, bias) = (logits(), recent(), bias());
    let input = Input {
        logits: &logits,
        recent: &recent,
        bias: &bias,
    };
    for config in configs() {
        let mut scratch = vec![Candidate::default(); V];
        let mut sampler = Box::new(Sampler::new(config, 1, &mut scratch).unwrap());
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(SAMPLE_THREAD)
                .spawn_scoped(scope, || {
                    below_a_frame::<SAMPLE_TAKEN>(|| {
                        let mut alternatives = [Alternative::default(); 8];
                        let mut report = Report::new(&mut alternatives);
                        sampler.sample(input, Some(&mut report)).unwrap();
                        sampler.sample(input, None).unwrap();
                    });
                })
                .unwrap()
                .join()
                .unwrap();
        });
        assert_eq!(sampler.step(), 2);
    }
}

#[test]
fn shaping_fits_the_documented_stack() {
    let handle = std::thread::Builder::new()
        .stack_size(SHAPE_THREAD)
        .spawn(move || {
            let (logits, recent, bias) = (logits(), recent(), bias());
            let input = Input {
                logits: &logits,
                recent: &recent,
                bias: &bias,
            };
            let mut scratch = vec![Candidate::default(); V];
            for config in configs() {
                let mut rows = [ShapeRow::default(); 8];
                let mut table = ShapeReport::new(&mut rows);
                shape(input, &config, &mut scratch, &mut table).unwrap();
                assert!(!table.written().is_empty());
            }
        })
        .unwrap();
    handle.join().unwrap();
}
