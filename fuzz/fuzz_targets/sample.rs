//! Arbitrary logits (NaN and infinities included), settings, penalty
//! windows and biases through `Sampler::sample`: never a panic, and either a
//! typed error or a choice that obeys the documented invariants.
//!
//! Input layout, read front to back (missing bytes read as zero): seed
//! (8 bytes), temperature, top-k (2 bytes), top-p, min-p, the three
//! penalties, the stage order, the scratch length, the report's capacity,
//! the penalty window, the biases, then logits until the input ends. Each
//! float is either one of a table of edge values or four raw bytes, so NaN,
//! both infinities, subnormals and huge values are all common.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sampler_core::{Alternative, Candidate, Config, Error, Input, Order, Report, Sampler, Stage};

/// Largest scratch buffer tried; larger inputs just get longer.
const MAX_SCRATCH: usize = 4096;

fuzz_target!(|data: &[u8]| run(data));

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        *first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.iter_mut().for_each(|b| *b = self.byte());
        u64::from_le_bytes(bytes)
    }

    fn float(&mut self) -> f32 {
        const EDGES: [f32; 16] = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.05,
            0.95,
            2.0,
            1e-30,
            1e30,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-45,
        ];
        let selector = self.byte();
        match EDGES.get(usize::from(selector)) {
            Some(&edge) => edge,
            None if selector < 128 => f32::from(selector) / 16.0 - 4.0,
            None => f32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()]),
        }
    }

    fn order(&mut self) -> Result<Order, Error> {
        let code = self.byte();
        match code % 4 {
            0 => Ok(Order::TALKBACK),
            1 => Ok(Order::LLAMA_CPP),
            _ => {
                // Up to five stages, two bits each: repeats, a missing
                // temperature and too many stages must all be typed errors.
                let stages = [Stage::Temperature, Stage::TopK, Stage::TopP, Stage::MinP];
                let len = usize::from(self.byte() % 6);
                let bits = self.u16();
                let list: Vec<Stage> = (0..len)
                    .map(|i| stages[usize::from((bits >> (2 * i)) & 3)])
                    .collect();
                Order::new(&list)
            }
        }
    }
}

fn run(data: &[u8]) {
    let mut r = Reader { data };

    let seed = r.u64();
    let temperature = r.float();
    let top_k = u32::from(r.u16());
    let top_p = r.float();
    let min_p = r.float();
    let repeat_penalty = r.float();
    let presence_penalty = r.float();
    let frequency_penalty = r.float();
    let Ok(order) = r.order() else {
        return;
    };
    let config = Config {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        presence_penalty,
        frequency_penalty,
        order,
    };
    let scratch_len = usize::from(r.u16()) % (MAX_SCRATCH + 1);
    let n_alternatives = usize::from(r.byte() % 9);
    let recent: Vec<u32> = (0..r.byte() % 32)
        .map(|_| u32::from(r.u16() % 1100))
        .collect();
    let bias: Vec<(u32, f32)> = (0..r.byte() % 8)
        .map(|_| (u32::from(r.u16() % 1100), r.float()))
        .collect();
    let mut logits = Vec::new();
    while !r.data.is_empty() {
        logits.push(r.float());
    }
    let input = Input {
        logits: &logits,
        recent: &recent,
        bias: &bias,
    };

    let mut scratch = vec![Candidate::default(); scratch_len];
    let mut twin_scratch = vec![Candidate::default(); scratch_len];
    let sampler = Sampler::new(config, seed, &mut scratch);
    assert_eq!(sampler.as_ref().err().copied(), config.validate().err());
    let Ok(mut sampler) = sampler else {
        return;
    };
    let Ok(mut twin) = Sampler::new(config, seed, &mut twin_scratch) else {
        panic!("the same settings were accepted once");
    };

    let mut alternatives = vec![Alternative::default(); n_alternatives];
    for _ in 0..2 {
        let before = sampler.step();
        let mut report = Report::new(&mut alternatives);
        let result = sampler.sample(input, Some(&mut report));
        let twin_result = twin.sample(input, None);
        match (&result, &twin_result) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.id, b.id, "same seed, same step, different token");
                assert_eq!(a.logprob.to_bits(), b.logprob.to_bits());
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("a report changed the outcome: {result:?} vs {twin_result:?}"),
        }

        match result {
            Ok(choice) => {
                assert_eq!(sampler.step(), before + 1);
                let id = usize::try_from(choice.id).unwrap_or(usize::MAX);
                let logit = logits.get(id).copied();
                assert!(
                    logit.is_some(),
                    "id {id} outside a vocabulary of {}",
                    logits.len()
                );
                let logit = logit.unwrap_or(f32::NAN);
                assert!(!logit.is_nan(), "a NaN logit was drawn");
                assert!(logit != f32::NEG_INFINITY, "a -inf logit was drawn");
                assert!(
                    !choice.logprob.is_nan() && choice.logprob <= 1e-3,
                    "{choice:?}"
                );

                let s = report.survivors;
                assert_eq!(s.vocab, logits.len());
                assert!(s.final_count >= 1 && s.final_count <= s.vocab, "{s:?}");
                assert_eq!(report.n_alternatives, n_alternatives.min(s.final_count));
                assert!(!report.entropy.is_nan() && report.entropy >= -1e-3);
                for alt in report.alternatives.iter().take(report.n_alternatives) {
                    assert!((alt.id as usize) < logits.len());
                    assert!(!alt.logprob.is_nan() && alt.logprob <= 1e-3, "{alt:?}");
                }
            }
            Err(_) => assert_eq!(sampler.step(), before, "a failed call advanced the step"),
        }
    }
}
