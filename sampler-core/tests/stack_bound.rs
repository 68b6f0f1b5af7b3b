//! `sample()` and `shape()` fit the stack bound the crate documents.
//!
//! Each runs, with the largest penalty window and bias list, on a thread
//! with a small stack; overflowing it would abort the test binary. On
//! x86-64 Linux a 20 KiB thread leaves at most 20 KiB to its closure (the
//! thread's own start-up and rounding take the rest), so passing checks the
//! documented bound of 20 KiB for optimised builds. Unoptimised builds keep
//! every temporary on the stack and get 64 KiB.
#![allow(clippy::unwrap_used)]

use sampler_core::{
    shape, Alternative, Candidate, Config, Input, Report, Sampler, ShapeReport, ShapeRow, MAX_BIAS,
    MAX_RECENT,
};

#[cfg(not(debug_assertions))]
const STACK: usize = 20 * 1024;
#[cfg(debug_assertions)]
const STACK: usize = 64 * 1024;

#[test]
fn sampling_fits_the_documented_stack() {
    let v = 50_000usize;
    let logits: Vec<f32> = (0..v).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let recent: Vec<u32> = (0..MAX_RECENT as u32).map(|i| i * 37 % v as u32).collect();
    let bias: Vec<(u32, f32)> = (0..MAX_BIAS as u32)
        .map(|i| (i * 101 % v as u32, 0.5))
        .collect();
    let handle = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let input = Input {
                logits: &logits,
                recent: &recent,
                bias: &bias,
            };
            let mut scratch = vec![Candidate::default(); v];
            let mut alternatives = [Alternative::default(); 8];
            let config = Config {
                repeat_penalty: 1.2,
                frequency_penalty: 0.1,
                ..Config::default()
            };
            for config in [config, Config { top_k: 0, ..config }, Config::greedy()] {
                let mut sampler = Sampler::new(config, 1, &mut scratch).unwrap();
                let mut report = Report::new(&mut alternatives);
                sampler.sample(input, Some(&mut report)).unwrap();
                sampler.sample(input, None).unwrap();
                let mut rows = [ShapeRow::default(); 8];
                let mut table = ShapeReport::new(&mut rows);
                shape(input, &config, &mut scratch, &mut table).unwrap();
            }
        })
        .unwrap();
    handle.join().unwrap();
}
