//! `sample()` and `shape()` never touch the heap: a counting global allocator
//! sees no allocation, reallocation or free while they run, on every path
//! through the chain.
#![allow(clippy::unwrap_used)]

use std::alloc::System;

use sampler_core::{
    shape, Alternative, Candidate, Config, Input, Order, Report, Sampler, ShapeReport, ShapeRow,
    Stage,
};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap operations of any kind since `region` was started.
///
/// The counter sees every thread, so this file is a plain program
/// (`harness = false`): libtest's main thread, waiting on its channel,
/// allocated while a loaded machine measured `shape()`.
fn heap_calls(region: &Region<'_, System>) -> usize {
    let c = region.change();
    c.allocations + c.deallocations + c.reallocations
}

fn logits(v: usize, flat: bool) -> Vec<f32> {
    let mut state = 7u64;
    (0..v)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            if flat {
                u * 2.0 - 1.0
            } else if i % 997 == 0 {
                20.0 - u
            } else {
                u * 8.0 - 4.0
            }
        })
        .collect()
}

fn main() {
    sampling_and_shape_use_no_heap();
    println!("no_alloc: sample() and shape() used no heap on any path");
}

fn sampling_and_shape_use_no_heap() {
    let v = 20_000;
    let configs = [
        Config::default(),
        Config::greedy(),
        Config {
            order: Order::LLAMA_CPP,
            ..Config::default()
        },
        Config {
            top_k: 0,
            min_p: 0.0,
            ..Config::default()
        },
        Config {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..Config::default()
        },
        Config {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.5,
            ..Config::default()
        },
        Config {
            repeat_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.2,
            order: Order::new(&[Stage::TopP, Stage::Temperature]).unwrap(),
            ..Config::default()
        },
    ];
    let recent: Vec<u32> = (0..64).map(|i| i * 131 % v as u32).collect();
    let bias = [(3u32, 2.0f32), (997, f32::NEG_INFINITY)];
    let mut scratch = vec![Candidate::default(); v];
    let mut alternatives = vec![Alternative::default(); 16];
    let mut rows = vec![ShapeRow::default(); 16];
    for flat in [false, true] {
        let logits = logits(v, flat);
        let input = Input {
            logits: &logits,
            recent: &recent,
            bias: &bias,
        };
        for config in configs {
            let mut sampler = Sampler::new(config, 5, &mut scratch).unwrap();
            let mut report = Report::new(&mut alternatives);
            let region = Region::new(GLOBAL);
            for _ in 0..4 {
                sampler.sample(input, None).unwrap();
                sampler.sample(input, Some(&mut report)).unwrap();
            }
            let errors = sampler.sample(Input::new(&[]), None).is_err();
            let during = heap_calls(&region);
            assert!(errors);
            assert_eq!(during, 0, "sample() used the heap with {config:?}");

            let mut table = ShapeReport::new(&mut rows);
            let region = Region::new(GLOBAL);
            shape(input, &config, &mut scratch, &mut table).unwrap();
            let during = heap_calls(&region);
            assert_eq!(during, 0, "shape() used the heap with {config:?}");
        }
    }

    // The counter does see heap use: one allocation and one free.
    let region = Region::new(GLOBAL);
    drop(std::hint::black_box(vec![1u8; 100]));
    assert_eq!(heap_calls(&region), 2);
}
