//! Inputs the `sample` fuzz target (fuzz/fuzz_targets/sample.rs) failed on,
//! kept as tests so that the fault cannot come back unseen.
//!
//! Each input is also in fuzz/corpus/sample/ under the name given here.
#![allow(clippy::unwrap_used)]

use sampler_core::{Alternative, Candidate, Config, Input, Order, Report, Sampler, Stage};

/// Samples `steps` times on two samplers with the same seed, one asked for a
/// report and one not, and checks that the report changes nothing, bit for bit.
fn report_changes_nothing(config: Config, seed: u64, input: Input<'_>, steps: usize) {
    let mut scratch = vec![Candidate::default(); 64];
    let mut twin_scratch = vec![Candidate::default(); 64];
    let mut sampler = Sampler::new(config, seed, &mut scratch).unwrap();
    let mut twin = Sampler::new(config, seed, &mut twin_scratch).unwrap();
    let mut alternatives = [Alternative::default(); 3];
    for step in 0..steps {
        let mut report = Report::new(&mut alternatives);
        let with = sampler.sample(input, Some(&mut report)).unwrap();
        let without = twin.sample(input, None).unwrap();
        assert_eq!(with.id, without.id, "step {step}");
        assert_eq!(
            with.logprob.to_bits(),
            without.logprob.to_bits(),
            "step {step}: logprob {} with a report, {} without",
            with.logprob,
            without.logprob
        );
    }
}

/// fuzz/corpus/sample/report-negative-zero: greedy over penalized logits
/// that tie at 0.0 and -0.0 once gave a logprob of -0.0 with a report and
/// +0.0 without one.
#[test]
fn greedy_logprob_sign_does_not_depend_on_the_report() {
    let config = Config {
        temperature: 0.0,
        top_k: 18733,
        top_p: 0.5625,
        min_p: 0.5625,
        repeat_penalty: 0.5625,
        presence_penalty: 0.5625,
        frequency_penalty: 0.5625,
        order: Order::new(&[Stage::TopK, Stage::TopP, Stage::MinP, Stage::Temperature]).unwrap(),
    };
    let mut recent = vec![10, 8, 0, 0, 0, 10];
    recent.extend([0; 23]);
    recent.push(8);
    let logits = [
        0.0, -2.125, -2.5625, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, -2.125, -2.125, -2.125,
        0.0, 0.0, 0.0, 0.0,
    ];
    let input = Input {
        logits: &logits,
        recent: &recent,
        bias: &[],
    };
    report_changes_nothing(config, 0x0000_8000_0000_2212, input, 2);
}
