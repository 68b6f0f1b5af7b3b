//! `sample()` and `shape()` fit the stack bounds the crate documents.
//!
//! Each runs, with the largest penalty window and bias list, with no more
//! stack below it than its bound: on a thread with room to spare, a
//! recursion of small frames first uses up all but the bound, measured down
//! to the lowest address of the thread's stack mapping in `/proc/self/maps`
//! (the guard page under it is a mapping of its own). Needing more than the
//! bound runs into the guard page and aborts the test binary. The room is
//! measured rather than set by the thread's size: std and the C library
//! enlarge a small thread by their own minimum and its thread-local
//! storage, so a thread asked for 16 KiB leaves its closure well over
//! 16 KiB. Linux only. The sampler itself, which holds the list of changed
//! logits, lives on the heap; `shape()` builds that list on its stack.
//! Unoptimised builds keep every temporary on the stack and get 64 KiB.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::hint::black_box;

use sampler_core::{
    shape, Alternative, Candidate, Config, Input, Report, Sampler, ShapeReport, ShapeRow, MAX_BIAS,
    MAX_RECENT,
};

/// The stack `sample()` may use.
#[cfg(not(debug_assertions))]
const SAMPLE_ROOM: usize = 8 * 1024;
#[cfg(debug_assertions)]
const SAMPLE_ROOM: usize = 64 * 1024;

/// The stack `shape()` may use.
#[cfg(not(debug_assertions))]
const SHAPE_ROOM: usize = 20 * 1024;
#[cfg(debug_assertions)]
const SHAPE_ROOM: usize = 64 * 1024;

/// The thread each call runs on, with room for the recursion above the call.
const THREAD: usize = 256 * 1024;

const V: usize = 50_000;

/// The largest window and bias list over a vocabulary of [`V`].
struct Worst {
    logits: Vec<f32>,
    recent: Vec<u32>,
    bias: Vec<(u32, f32)>,
}

impl Worst {
    fn new() -> Self {
        Worst {
            logits: (0..V).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect(),
            recent: (0..MAX_RECENT as u32).map(|i| i * 37 % V as u32).collect(),
            bias: (0..MAX_BIAS as u32)
                .map(|i| (i * 101 % V as u32, 0.5))
                .collect(),
        }
    }

    fn input(&self) -> Input<'_> {
        Input {
            logits: &self.logits,
            recent: &self.recent,
            bias: &self.bias,
        }
    }
}

fn configs() -> [Config; 3] {
    let config = Config {
        repeat_penalty: 1.2,
        frequency_penalty: 0.1,
        ..Config::default()
    };
    [config, Config { top_k: 0, ..config }, Config::greedy()]
}

/// The address of a local one frame below the caller's: where the caller's next call starts.
#[inline(never)]
fn here() -> usize {
    let marker = 0u8;
    black_box(&marker) as *const u8 as usize
}

/// The lowest address of the mapping that holds `addr`.
fn mapping_floor(addr: usize) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let range = line.split(' ').next().unwrap_or("");
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if (lo..hi).contains(&addr) {
            return lo;
        }
    }
    panic!("no mapping in /proc/self/maps holds the stack address {addr:#x}");
}

/// Calls `f` once at most `room` bytes remain above `floor`.
#[inline(never)]
fn with_room(floor: usize, room: usize, f: &mut dyn FnMut()) {
    // Small frames, so that `f` gets nearly all of `room`.
    let frame = black_box([0u8; 128]);
    if here() - floor <= room {
        f();
    } else {
        with_room(floor, room, f);
    }
    black_box(&frame);
}

/// Runs `f` on a thread of its own with at most `room` bytes of stack below it.
fn within(room: usize, f: impl FnOnce() + Send) {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(THREAD)
            .spawn_scoped(scope, || {
                let floor = mapping_floor(here());
                assert!(
                    here() - floor > room,
                    "the thread has no room for the check"
                );
                let mut f = Some(f);
                with_room(floor, room, &mut || {
                    if let Some(f) = f.take() {
                        f();
                    }
                });
                assert!(f.is_none(), "the call never ran");
            })
            .unwrap()
            .join()
            .unwrap();
    });
}

#[test]
fn sampling_fits_the_documented_stack() {
    let worst = Worst::new();
    let input = worst.input();
    for config in configs() {
        let mut scratch = vec![Candidate::default(); V];
        let mut sampler = Box::new(Sampler::new(config, 1, &mut scratch).unwrap());
        within(SAMPLE_ROOM, || {
            let mut alternatives = [Alternative::default(); 8];
            let mut report = Report::new(&mut alternatives);
            sampler.sample(input, Some(&mut report)).unwrap();
            sampler.sample(input, None).unwrap();
        });
        assert_eq!(sampler.step(), 2);
    }
}

#[test]
fn shaping_fits_the_documented_stack() {
    let worst = Worst::new();
    let input = worst.input();
    let mut scratch = vec![Candidate::default(); V];
    for config in configs() {
        let mut rows = [ShapeRow::default(); 8];
        let mut table = ShapeReport::new(&mut rows);
        within(SHAPE_ROOM, || {
            shape(input, &config, &mut scratch, &mut table).unwrap();
        });
        assert!(!table.written().is_empty());
    }
}
