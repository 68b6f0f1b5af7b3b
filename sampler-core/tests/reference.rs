//! Property tests of the whole chain against a slow, sort-based f64 reference.
//!
//! The reference below is written from the contract alone: effective logits
//! (penalties and bias in f32, as the contract defines them), candidates
//! sorted by logit and then id, each stage in f64 as a prefix of that order,
//! and an f64 softmax. The sampler must keep the same survivors after every
//! stage, except where the reference puts a boundary within tolerance of the
//! threshold; it must report the final distribution's top tokens, their
//! log-probabilities and entropy, and draw only from the survivors. A
//! chi-square test checks draw frequencies over many seeds.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sampler_core::{
    Alternative, Candidate, Config, Error, Input, Order, Report, Sampler, Stage, Survivors,
};

/// Slack, in probability mass, for top-p boundaries: the crate's tolerance
/// (1e-5) plus room for f32 exponentials.
const TOP_P_SLACK: f64 = 3e-5;
/// Slack, in log space, for min-p boundaries.
const MIN_P_SLACK: f64 = 1e-4;

/// Effective logits: penalties over `recent`, then bias in list order, in f32.
fn effective(logits: &[f32], recent: &[u32], bias: &[(u32, f32)], c: &Config) -> Vec<f32> {
    let mut out = logits.to_vec();
    let penalised =
        c.repeat_penalty != 1.0 || c.presence_penalty != 0.0 || c.frequency_penalty != 0.0;
    if penalised {
        let mut seen: Vec<u32> = recent.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            let count = recent.iter().filter(|&&r| r == id).count() as f32;
            let x = out[id as usize];
            let x = if x > 0.0 {
                x / c.repeat_penalty
            } else {
                x * c.repeat_penalty
            };
            out[id as usize] = x - (count * c.frequency_penalty + c.presence_penalty);
        }
    }
    for &(id, b) in bias {
        out[id as usize] += b;
    }
    out
}

/// Candidates in rank order: logit descending, then id ascending.
fn ranked(x: &[f32]) -> Vec<(u32, f64)> {
    let mut c: Vec<(u32, f64)> = x
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > f32::NEG_INFINITY)
        .map(|(i, &v)| (i as u32, f64::from(v)))
        .collect();
    c.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    c
}

/// Relative weights e^((x - top) / t) of `c` at temperature `t`.
fn weights(c: &[(u32, f64)], t: f64) -> Vec<f64> {
    let top = c[0].1;
    c.iter()
        .map(|&(_, x)| {
            if top == f64::INFINITY {
                if x == f64::INFINITY {
                    1.0
                } else {
                    0.0
                }
            } else {
                ((x - top) / t).exp()
            }
        })
        .collect()
}

/// Scaled differences (x - top) / t.
fn diffs(c: &[(u32, f64)], t: f64) -> Vec<f64> {
    let top = c[0].1;
    c.iter()
        .map(|&(_, x)| {
            if top == f64::INFINITY {
                if x == f64::INFINITY {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            } else {
                (x - top) / t
            }
        })
        .collect()
}

/// Checks a counted stage's survivor count against the reference's range.
fn check_count(stage: &str, got: usize, lo: usize, hi: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        (lo..=hi).contains(&got),
        "{stage}: sampler kept {got}, reference allows {lo}..={hi}"
    );
    Ok(())
}

/// Runs the reference chain, following the sampler's own count at each
/// ambiguous boundary; returns the final survivor count and temperature.
fn reference_chain(
    c: &[(u32, f64)],
    vocab: usize,
    config: &Config,
    sv: &Survivors,
) -> Result<(usize, f64), TestCaseError> {
    let mut len = c.len();
    let mut t = 1.0f64;
    for &stage in config.order.stages() {
        match stage {
            Stage::Temperature => {
                if config.temperature < f32::MIN_POSITIVE {
                    len = 1;
                } else {
                    t = f64::from(config.temperature);
                }
            }
            Stage::TopK => {
                let k = config.top_k as usize;
                if k != 0 && k < vocab {
                    len = len.min(k);
                }
                check_count("top-k", sv.after_top_k, len, len)?;
            }
            Stage::TopP => {
                if config.top_p < 1.0 && len > 1 {
                    let w = weights(&c[..len], t);
                    let z: f64 = w.iter().sum();
                    let p = f64::from(config.top_p);
                    let reach = |need: f64| {
                        let mut cum = 0.0;
                        for (i, wi) in w.iter().enumerate() {
                            cum += wi / z;
                            if cum >= need {
                                return i + 1;
                            }
                        }
                        w.len()
                    };
                    let (lo, hi) = (reach(p - TOP_P_SLACK).max(1), reach(p + TOP_P_SLACK));
                    // Tokens of negligible mass at the end may fall either way.
                    let hi = hi.max(lo);
                    check_count("top-p", sv.after_top_p, lo, hi)?;
                    len = sv.after_top_p;
                } else {
                    check_count("top-p", sv.after_top_p, len, len)?;
                }
            }
            Stage::MinP => {
                if config.min_p > 0.0 && len > 1 {
                    let cut = f64::from(config.min_p).ln();
                    let d = diffs(&c[..len], t);
                    let lo = d.iter().filter(|&&x| x >= cut + MIN_P_SLACK).count().max(1);
                    let hi = d.iter().filter(|&&x| x >= cut - MIN_P_SLACK).count();
                    check_count("min-p", sv.after_min_p, lo, hi)?;
                    len = sv.after_min_p;
                } else {
                    check_count("min-p", sv.after_min_p, len, len)?;
                }
            }
        }
    }
    Ok((len, t))
}

/// Samples once and checks everything the report says against the reference.
fn check_step(
    logits: &[f32],
    recent: &[u32],
    bias: &[(u32, f32)],
    config: Config,
    seed: u64,
) -> Result<(), TestCaseError> {
    let v = logits.len();
    // Stale contents from an earlier call must never leak into a result.
    let mut scratch = vec![Candidate { id: 0, logit: 1e30 }; v];
    let mut alts = vec![Alternative::default(); v];
    let mut report = Report::new(&mut alts);
    let mut sampler = Sampler::new(config, seed, &mut scratch).unwrap();
    let input = Input {
        logits,
        recent,
        bias,
    };
    let result = sampler.sample(input, Some(&mut report));

    let x = effective(logits, recent, bias, &config);
    let c = ranked(&x);
    if c.is_empty() {
        prop_assert_eq!(result, Err(Error::NoFiniteLogit));
        return Ok(());
    }
    let choice = result.unwrap();
    let sv = report.survivors;
    prop_assert_eq!(sv.vocab, v);
    let (len, t) = reference_chain(&c, v, &config, &sv)?;
    prop_assert_eq!(sv.final_count, len);

    // The final distribution: its top tokens in order, their log-probabilities.
    let fin = &c[..len];
    let w = weights(fin, t);
    let z: f64 = w.iter().sum();
    let d = diffs(fin, t);
    let written = report.written();
    prop_assert_eq!(written.len(), len);
    for (i, a) in written.iter().enumerate() {
        prop_assert_eq!(a.id, fin[i].0, "rank {}", i);
        let want = if len == 1 { 0.0 } else { d[i] - z.ln() };
        if want.is_finite() {
            let err = (f64::from(a.logprob) - want).abs();
            prop_assert!(
                err <= 1e-4 + 1e-6 * want.abs(),
                "rank {}: {} vs {}",
                i,
                a.logprob,
                want
            );
        } else {
            prop_assert!(f64::from(a.logprob) < -80.0);
        }
    }
    let h: f64 = -w
        .iter()
        .map(|wi| wi / z)
        .filter(|&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>();
    let h_tol = 1e-3 + len as f64 * 3e-8;
    prop_assert!(
        (f64::from(report.entropy) - h).abs() <= h_tol,
        "entropy {} vs {}",
        report.entropy,
        h
    );

    // The draw comes from the survivors and reports that survivor's logprob.
    let pos = written.iter().position(|a| a.id == choice.id);
    prop_assert!(pos.is_some(), "drew {} outside the survivors", choice.id);
    let pos = pos.unwrap();
    prop_assert_eq!(choice.logprob.to_bits(), written[pos].logprob.to_bits());
    prop_assert!(w[pos] / z > 0.0, "drew a token of zero probability");
    Ok(())
}

/// Logits for large vocabularies, from a seed (proptest shrinks the seed).
fn generated(v: usize, seed: u64, shape: u8) -> Vec<f32> {
    let mut s = seed | 1;
    let mut unit = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..v)
        .map(|i| match shape % 4 {
            0 => (unit() * 2.0 - 1.0) as f32,
            1 => {
                let x = (unit() * 8.0 - 4.0) as f32;
                if i % 501 == 7 {
                    x + 15.0
                } else {
                    x
                }
            }
            2 => ((unit() * 12.0).floor() - 6.0) as f32,
            _ => (unit() * 60.0 - 30.0) as f32,
        })
        .collect()
}

fn small_logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -20.0f32..20.0,
        2 => (-4i32..4).prop_map(|i| i as f32 * 0.5),
        1 => Just(f32::NAN),
        1 => Just(f32::NEG_INFINITY),
        1 => prop_oneof![Just(f32::INFINITY), Just(1000.0f32), Just(-0.0f32)],
    ]
}

fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        6 => prop::collection::vec(small_logit(), 1..64),
        3 => (64usize..4000, any::<u64>(), any::<u8>()).prop_map(|(v, s, k)| generated(v, s, k)),
        1 => (prop::sample::select(vec![49_152usize, 151_936, 262_144]), any::<u64>(), any::<u8>())
            .prop_map(|(v, s, k)| generated(v, s, k)),
    ]
}

fn config_strategy() -> impl Strategy<Value = Config> {
    let temperature = prop_oneof![1 => Just(0.0f32), 1 => Just(1.0f32), 3 => 0.05f32..3.0];
    let top_k = prop_oneof![2 => Just(0u32), 3 => 1u32..80, 1 => 80u32..300_000];
    let top_p = prop_oneof![2 => Just(1.0f32), 1 => Just(0.0f32), 3 => 0.0f32..1.0];
    let min_p = prop_oneof![2 => Just(0.0f32), 1 => Just(1.0f32), 3 => 0.0f32..0.6];
    let penalty = prop_oneof![
        3 => Just((1.0f32, 0.0f32, 0.0f32)),
        1 => (0.5f32..2.0, -1.0f32..1.0, -1.0f32..1.0),
    ];
    let order = prop_oneof![
        Just(Order::TALKBACK),
        Just(Order::LLAMA_CPP),
        Just(Order::new(&[Stage::MinP, Stage::Temperature, Stage::TopP]).unwrap()),
    ];
    (temperature, top_k, top_p, min_p, penalty, order).prop_map(|(t, k, p, m, pen, order)| Config {
        temperature: t,
        top_k: k,
        top_p: p,
        min_p: m,
        repeat_penalty: pen.0,
        presence_penalty: pen.1,
        frequency_penalty: pen.2,
        order,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 160,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/reference.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn chain_matches_reference(
        logits in logits_strategy(),
        config in config_strategy(),
        seed in any::<u64>(),
        recent_raw in prop::collection::vec(any::<u32>(), 0..40),
        bias_raw in prop::collection::vec((any::<u32>(), -5.0f32..5.0), 0..4),
    ) {
        let v = logits.len() as u32;
        let recent: Vec<u32> = recent_raw.iter().map(|r| r % v).collect();
        let bias: Vec<(u32, f32)> = bias_raw.iter().map(|&(id, b)| (id % v, b)).collect();
        check_step(&logits, &recent, &bias, config, seed)?;
    }
}

/// One call's token, log-probability bits, alternatives and survivors.
type Drawn = (u32, u32, Vec<(u32, u32)>, Survivors);

/// The outcome of each of `steps` calls, with a penalty window that moves
/// on by each token drawn.
fn run_steps(
    sampler: &mut Sampler<'_>,
    logits: &[f32],
    window: &[u32],
    steps: usize,
) -> Vec<Result<Drawn, Error>> {
    let mut recent = window.to_vec();
    let mut alts = [Alternative::default(); 4];
    (0..steps)
        .map(|_| {
            let mut report = Report::new(&mut alts);
            let input = Input {
                logits,
                recent: &recent,
                bias: &[],
            };
            let c = sampler.sample(input, Some(&mut report))?;
            let listed = report
                .written()
                .iter()
                .map(|a| (a.id, a.logprob.to_bits()))
                .collect();
            let survivors = report.survivors;
            if !recent.is_empty() {
                recent.remove(0);
                recent.push(c.id);
            }
            Ok((c.id, c.logprob.to_bits(), listed, survivors))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/reference.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_restarted_sampler_draws_as_a_new_one(
        logits in logits_strategy(),
        (before, after) in (config_strategy(), config_strategy()),
        (seed, again) in (any::<u64>(), any::<u64>()),
        window_raw in prop::collection::vec(any::<u32>(), 0..64),
    ) {
        let v = logits.len() as u32;
        let window: Vec<u32> = window_raw.iter().map(|r| r % v).collect();
        let mut used_scratch = vec![Candidate::default(); logits.len()];
        let mut used = Sampler::new(before, seed, &mut used_scratch).unwrap();
        run_steps(&mut used, &logits, &window, 3);
        used.restart(after, again).unwrap();
        prop_assert_eq!(used.step(), 0);
        prop_assert_eq!(used.config(), &after);
        let mut fresh_scratch = vec![Candidate::default(); logits.len()];
        let mut fresh = Sampler::new(after, again, &mut fresh_scratch).unwrap();
        prop_assert_eq!(
            run_steps(&mut used, &logits, &window, 4),
            run_steps(&mut fresh, &logits, &window, 4)
        );

        // Refused settings leave the sampler as it was.
        let step = used.step();
        let bad = Config { temperature: f32::NAN, ..after };
        prop_assert_eq!(used.restart(bad, 1), Err(Error::NonFiniteTemperature));
        prop_assert_eq!(used.config(), &after);
        prop_assert_eq!(used.step(), step);
    }
}

/// Upper chi-square quantile for `df` degrees of freedom at about p = 1e-6
/// (Wilson-Hilferty).
fn chi_square_limit(df: usize) -> f64 {
    let df = df as f64;
    let z = 4.75;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/reference.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn draw_frequencies_follow_the_final_distribution(
        logits in prop::collection::vec(-3.0f32..3.0, 2..12),
        temperature in 0.3f32..2.0,
        top_k in 0u32..12,
        top_p in 0.5f32..1.0,
        min_p in 0.0f32..0.2,
        llama in any::<bool>(),
    ) {
        let order = if llama { Order::LLAMA_CPP } else { Order::TALKBACK };
        let config = Config { temperature, top_k, top_p, min_p, order, ..Config::default() };
        let v = logits.len();
        let draws = 20_000u64;
        let mut counts = vec![0u64; v];
        let mut scratch = vec![Candidate::default(); v];
        let mut alts = vec![Alternative::default(); v];
        let mut report = Report::new(&mut alts);
        let input = Input::new(&logits);
        for seed in 0..draws {
            let mut s = Sampler::new(config, seed, &mut scratch).unwrap();
            let with = if seed == 0 { Some(&mut report) } else { None };
            counts[s.sample(input, with).unwrap().id as usize] += 1;
        }
        let survivors: Vec<u32> = report.written().iter().map(|a| a.id).collect();
        let c = ranked(&logits);
        let (len, t) = reference_chain(&c, v, &config, &report.survivors)?;
        prop_assert_eq!(len, survivors.len());
        let w = weights(&c[..len], t);
        let z: f64 = w.iter().sum();
        // Draws fall only on survivors.
        let outside: u64 = (0..v as u32)
            .filter(|id| !survivors.contains(id))
            .map(|id| counts[id as usize])
            .sum();
        prop_assert_eq!(outside, 0);
        // Chi-square over survivors, pooling cells expected below 5 draws.
        let mut stat = 0.0;
        let mut cells = 0usize;
        let (mut pooled_o, mut pooled_e) = (0.0, 0.0);
        for (i, &(id, _)) in c[..len].iter().enumerate() {
            let e = draws as f64 * w[i] / z;
            let o = counts[id as usize] as f64;
            if e < 5.0 {
                pooled_o += o;
                pooled_e += e;
            } else {
                stat += (o - e).powi(2) / e;
                cells += 1;
            }
        }
        if pooled_e >= 5.0 {
            stat += (pooled_o - pooled_e).powi(2) / pooled_e;
            cells += 1;
        }
        if cells >= 2 {
            let limit = chi_square_limit(cells - 1);
            prop_assert!(stat < limit, "chi-square {} over {} cells, limit {}", stat, cells, limit);
        }
    }
}

/// Top-p is decided on the integer weights, as the crate documents: when
/// many tokens tied at one small logit all round up to a whole unit, their
/// rounding moves the total by more than the tolerance, and a cut that
/// real arithmetic puts at one token takes two.
#[test]
fn top_p_follows_the_integer_weights_where_many_ties_round_alike() {
    let tail = 60_000usize;
    let second = f32::from_bits(0xc00c_a463); // about -2.1975
    let mut logits = vec![-21.48f32; tail + 2];
    logits[0] = 0.0;
    logits[1] = second;
    let config = Config {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.9,
        min_p: 0.0,
        ..Config::default()
    };

    // In real arithmetic the top token alone holds 0.900005 of the mass.
    let real_tail = tail as f64 * (-21.48f64).exp();
    let real_top = 1.0 / (1.0 + f64::from(second).exp() + real_tail);
    assert!(real_top > 0.9 && real_top < 0.9 + 1e-5, "{real_top}");
    // In units of 2^-30 of the top weight each tail token weighs about
    // 0.5, and rounds up to 1: the top token now falls short of the target.
    let unit = 2f64.powi(30);
    let tail_weight = (-21.48f64).exp() * unit;
    assert!(tail_weight > 0.5 && tail_weight < 0.51, "{tail_weight}");
    let total = unit + (f64::from(second).exp() * unit).round() + tail as f64;
    let target = ((0.9 - sampler_core::TOP_P_TOLERANCE) * total).ceil();
    assert!(unit < target - 1000.0, "{unit} against {target}");

    let mut scratch = vec![Candidate::default(); logits.len()];
    let mut alts = vec![Alternative::default(); 4];
    let mut report = Report::new(&mut alts);
    let mut sampler = Sampler::new(config, 7, &mut scratch).unwrap();
    sampler
        .sample(Input::new(&logits), Some(&mut report))
        .unwrap();
    assert_eq!(report.survivors.after_top_p, 2);
}
