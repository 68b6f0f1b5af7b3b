//! The kernel cases: one sampling step, ours against llama.cpp's chain, per vocabulary size.
//!
//! Each group of contenders is timed interleaved on the same logits (see
//! [`crate::measure`]); every ratio printed compares medians from one group.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{anyhow, Result};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use sampler_core::{Alternative, Candidate, Config, Input, Order, Report, Sampler};

use crate::floor;
use crate::input::{self, WINDOW};
use crate::measure::{self, Contender, Pick, Timing};
use crate::KernelArgs;

/// Seed of both samplers' draws.
const SEED: u32 = 1;

/// Repetition penalty of the penalty cases.
const REPEAT_PENALTY: f32 = 1.1;

/// The targets the ratios are checked against.
const TARGET_DEFAULT: f64 = 10.0;
const TARGET_TOP_P: f64 = 8.0;
const TARGET_GREEDY: f64 = 10.0;
const TARGET_PENALTY_PCT: f64 = 5.0;

/// One line of the results table.
struct Row {
    case: String,
    label: String,
    median: f64,
    p10: f64,
    p90: f64,
    build: Option<f64>,
    ratio: Option<f64>,
}

/// A target and whether it was met.
struct Check {
    what: String,
    value: String,
    met: bool,
}

/// The groups of contenders; each is timed on its own, once per vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Chain,
    TopP,
    HotTopP,
    Greedy,
    Floor,
}

impl Group {
    /// Every group, in the order they run.
    const ALL: [Group; 5] = [
        Group::Chain,
        Group::TopP,
        Group::HotTopP,
        Group::Greedy,
        Group::Floor,
    ];

    /// The case names the group prints for vocabulary `v`.
    fn cases(self, v: usize) -> Vec<String> {
        match self {
            Group::Chain => chain_cases(v).into(),
            Group::TopP => vec![format!("top_p_p0.95_v{v}")],
            Group::HotTopP => vec![hot_top_p_case(v)],
            Group::Greedy => vec![format!("greedy_v{v}")],
            Group::Floor => floor_cases(v).into(),
        }
    }
}

/// The cases of the default chain, without and with penalties.
fn chain_cases(v: usize) -> [String; 2] {
    [
        format!("default_chain_v{v}"),
        format!("default_chain_penalties_w{WINDOW}_rp{REPEAT_PENALTY}_v{v}"),
    ]
}

/// The floor kernels' cases.
fn floor_cases(v: usize) -> [String; 3] {
    [
        format!("floor_max_v{v}"),
        format!("floor_max_sumexp_poly_v{v}"),
        format!("floor_max_sumexp_libm_v{v}"),
    ]
}

/// The groups `args` asks for, each with its vocabulary, in the order they run.
///
/// A group runs when the filter is part of any case name it prints, so
/// that every name in the table can be given back as a filter.
fn selected(args: &KernelArgs) -> Vec<(usize, Group)> {
    let wanted = |cases: Vec<String>| {
        args.filter
            .as_deref()
            .map_or(true, |f| cases.iter().any(|c| c.contains(f)))
    };
    args.vocab
        .iter()
        .flat_map(|&v| Group::ALL.map(|g| (v, g)))
        .filter(|&(v, g)| wanted(g.cases(v)))
        .collect()
}

/// Refuses arguments that would time nothing or the same thing twice.
///
/// # Errors
///
/// - a vocabulary size listed twice;
/// - a filter that no case name contains (the message lists them).
pub fn check(args: &KernelArgs) -> Result<(), String> {
    for (i, v) in args.vocab.iter().enumerate() {
        if args.vocab.get(..i).is_some_and(|before| before.contains(v)) {
            return Err(format!("--vocab lists {v} twice"));
        }
    }
    if let (Some(filter), true) = (&args.filter, selected(args).is_empty()) {
        let all: Vec<String> = args
            .vocab
            .iter()
            .flat_map(|&v| Group::ALL.into_iter().flat_map(move |g| g.cases(v)))
            .collect();
        return Err(format!(
            "--filter {filter:?} matches no case; the cases are {}",
            all.join(", ")
        ));
    }
    Ok(())
}

/// Runs every case `args` selects and returns the table.
///
/// # Errors
///
/// - the logits cannot be loaded; a sampler rejects its settings.
pub fn run(args: &KernelArgs) -> Result<String> {
    let real = input::load(args)?;
    let timing = Timing {
        rounds: args.rounds as usize,
        cold: args.cold,
    };
    let rounds = timing.rounds;
    let mut out = String::new();
    writeln!(out, "talkback-bench kernels")?;
    writeln!(out, "machine: {}", machine())?;
    writeln!(out, "logits:  {}", real.source)?;
    writeln!(
        out,
        "timing:  {rounds} rounds x {} steps per contender, interleaved; \
         medians per token in microseconds",
        real.steps.len()
    )?;
    if timing.cold {
        writeln!(
            out,
            "cold:    before each timed call, 64 MiB streamed through the caches, \
             then the step's logits read once"
        )?;
    } else {
        writeln!(
            out,
            "warm:    before each timed call, the step's logits read once, \
             as the decode step leaves them"
        )?;
    }
    writeln!(
        out,
        "larger vocabularies tile the real vector, later copies perturbed by up to +-0.125"
    )?;
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    let groups = selected(args);
    for &v in &args.vocab {
        let chosen: Vec<Group> = groups.iter().filter(|g| g.0 == v).map(|g| g.1).collect();
        if chosen.is_empty() {
            continue;
        }
        let steps: Vec<Vec<f32>> = real.steps.iter().map(|l| input::tile(l, v)).collect();
        for group in chosen {
            note!("talkback-bench: {}", group.cases(v).join(", "));
            match group {
                Group::Chain => chain_group(
                    v,
                    &steps,
                    &real.window,
                    &timing,
                    &mut rows,
                    &mut checks,
                    &mut notes,
                )?,
                Group::TopP => top_p_group(v, &steps, &timing, &mut rows, &mut checks)?,
                Group::HotTopP => hot_top_p_group(v, &steps, &timing, &mut rows)?,
                Group::Greedy => {
                    greedy_group(v, &steps, &timing, &mut rows, &mut checks, &mut notes)?;
                }
                Group::Floor => floor_group(v, &steps, &timing, &mut rows),
            }
        }
    }
    print_rows(&mut out, &rows)?;
    writeln!(out)?;
    if timing.cold {
        // The targets are set for the warm run; here they are only a guide.
        writeln!(
            out,
            "targets (judged on these cold calls; the targets are set for warm ones)"
        )?;
    } else {
        writeln!(out, "targets")?;
    }
    for c in &checks {
        let mark = if c.met { "met   " } else { "MISSED" };
        writeln!(out, "  {mark} {:<46} {}", c.what, c.value)?;
    }
    if !notes.is_empty() {
        writeln!(out)?;
        writeln!(out, "checks")?;
        for n in &notes {
            writeln!(out, "  {n}")?;
        }
    }
    Ok(out)
}

/// The CPU model and core count, from `/proc/cpuinfo`.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model}, {cpus} cores")
}

/// llama.cpp's default chain: top-k 40, top-p 0.95, min-p 0.05, temp 0.8, dist.
fn llama_default(prefix: Vec<LlamaSampler>) -> LlamaSampler {
    let mut chain = prefix;
    chain.extend([
        LlamaSampler::top_k(40),
        LlamaSampler::top_p(0.95, 1),
        LlamaSampler::min_p(0.05, 1),
        LlamaSampler::temp(0.8),
        LlamaSampler::dist(SEED),
    ]);
    LlamaSampler::chain_simple(chain)
}

/// One llama.cpp step as its users pay for it: build the candidate array, apply the chain.
fn llama_step(chain: &mut LlamaSampler, logits: &[f32]) -> Pick {
    let t0 = Instant::now();
    let mut cur = LlamaTokenDataArray::from_iter(
        (0i32..)
            .zip(logits)
            .map(|(id, &x)| LlamaTokenData::new(LlamaToken(id), x, 0.0)),
        false,
    );
    let build = t0.elapsed().as_nanos() as f64;
    chain.apply(&mut cur);
    let id = cur
        .selected_token()
        .and_then(|t| u32::try_from(t.0).ok())
        .unwrap_or(u32::MAX);
    Pick {
        id,
        build_ns: Some(build),
    }
}

/// One step of ours, without a report.
fn ours_step(s: &mut Sampler<'_>, logits: &[f32], recent: &[u32]) -> Pick {
    let input = Input {
        logits,
        recent,
        bias: &[],
    };
    Pick::id(s.sample(input, None).map_or(u32::MAX, |c| c.id))
}

/// One step of ours with an empty report, as the host's loop asks for it.
fn ours_step_report(s: &mut Sampler<'_>, logits: &[f32]) -> Pick {
    let mut alternatives: [Alternative; 0] = [];
    let mut report = Report::new(&mut alternatives);
    let id = s
        .sample(Input::new(logits), Some(&mut report))
        .map_or(u32::MAX, |c| c.id);
    Pick::id(id)
}

fn sampler(config: Config, scratch: &mut [Candidate]) -> Result<Sampler<'_>> {
    Sampler::new(config, u64::from(SEED), scratch).map_err(|e| anyhow!("settings: {e}"))
}

fn scratch(v: usize) -> Vec<Candidate> {
    vec![Candidate::default(); v]
}

/// Default chain, with and without penalties over a 64-token window.
fn chain_group(
    v: usize,
    steps: &[Vec<f32>],
    window: &[u32],
    timing: &Timing,
    rows: &mut Vec<Row>,
    checks: &mut Vec<Check>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let n_vocab = i32::try_from(v)?;
    let llama_order = Config {
        order: Order::LLAMA_CPP,
        ..Config::default()
    };
    let penalised = |c: Config| Config {
        repeat_penalty: REPEAT_PENALTY,
        ..c
    };
    let mut bufs: Vec<Vec<Candidate>> = (0..5).map(|_| scratch(v)).collect();
    let [b0, b1, b2, b3, b4] = bufs.as_mut_slice() else {
        return Err(anyhow!("scratch buffers"));
    };
    let mut ours_llama = sampler(llama_order, b0)?;
    let mut ours_talkback = sampler(Config::default(), b1)?;
    let mut ours_report = sampler(Config::default(), b2)?;
    let mut pen_llama = sampler(penalised(llama_order), b3)?;
    let mut pen_talkback = sampler(penalised(Config::default()), b4)?;
    let mut llama = llama_default(Vec::new());
    let mut llama_pen = llama_default(vec![LlamaSampler::penalties(
        n_vocab,
        i32::try_from(WINDOW)?,
        REPEAT_PENALTY,
        0.0,
        0.0,
    )]);
    // The window is fixed for the whole case: accepted once, never again.
    for &id in window {
        llama_pen.accept(LlamaToken(i32::try_from(id)?));
    }
    let agree = in_final_set(v, steps, llama_order, &mut llama)?;

    let mut cs = vec![
        Contender::new("llama.cpp", |l: &[f32]| llama_step(&mut llama, l)),
        Contender::new("ours, llama.cpp order", |l: &[f32]| {
            ours_step(&mut ours_llama, l, &[])
        }),
        Contender::new("ours, talkback order", |l: &[f32]| {
            ours_step(&mut ours_talkback, l, &[])
        }),
        Contender::new("ours, talkback order, report", |l: &[f32]| {
            ours_step_report(&mut ours_report, l)
        }),
        Contender::new("llama.cpp", |l: &[f32]| llama_step(&mut llama_pen, l)),
        Contender::new("ours, llama.cpp order", |l: &[f32]| {
            ours_step(&mut pen_llama, l, window)
        }),
        Contender::new("ours, talkback order", |l: &[f32]| {
            ours_step(&mut pen_talkback, l, window)
        }),
    ];
    measure::run(steps, timing, &mut cs);

    let [case, pen_case] = chain_cases(v);
    let (head, tail) = cs.split_at(4);
    push_group(rows, &case, head);
    push_group(rows, &pen_case, tail);
    for (label, i) in [("llama.cpp order", 1), ("talkback order", 2)] {
        let r = ratio(&cs, 0, i);
        checks.push(Check {
            what: format!("{case} ({label}) >= {TARGET_DEFAULT}x"),
            value: format!("{r:.2}x"),
            met: r >= TARGET_DEFAULT,
        });
    }
    for (label, plain, pen) in [("llama.cpp order", 1, 5), ("talkback order", 2, 6)] {
        let (Some(a), Some(b)) = (cs.get(plain), cs.get(pen)) else {
            continue;
        };
        let pct = (b.median() / a.median() - 1.0) * 100.0;
        checks.push(Check {
            what: format!("{pen_case} ({label}) adds < {TARGET_PENALTY_PCT}%"),
            value: format!("{pct:+.2}%"),
            met: pct < TARGET_PENALTY_PCT,
        });
    }
    notes.push(format!(
        "{case}: llama.cpp's token is in our final set (llama.cpp order) at {agree}/{} steps",
        steps.len()
    ));
    Ok(())
}

/// How many steps llama.cpp's choice lies in our final distribution.
fn in_final_set(
    v: usize,
    steps: &[Vec<f32>],
    config: Config,
    llama: &mut LlamaSampler,
) -> Result<usize> {
    let mut buf = scratch(v);
    let mut s = sampler(config, &mut buf)?;
    let mut alternatives = vec![Alternative::default(); 64];
    let mut agree = 0;
    for logits in steps {
        let mut report = Report::new(&mut alternatives);
        s.sample(Input::new(logits), Some(&mut report))
            .map_err(|e| anyhow!("sampling: {e}"))?;
        let theirs = llama_step(llama, logits).id;
        agree += usize::from(report.written().iter().any(|a| a.id == theirs));
    }
    Ok(agree)
}

/// Top-p 0.95 alone, at temperature 1.
fn top_p_group(
    v: usize,
    steps: &[Vec<f32>],
    timing: &Timing,
    rows: &mut Vec<Row>,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let llama =
        LlamaSampler::chain_simple([LlamaSampler::top_p(0.95, 1), LlamaSampler::dist(SEED)]);
    let case = format!("top_p_p0.95_v{v}");
    let r = time_top_p(&case, 1.0, llama, v, steps, timing, rows)?;
    checks.push(Check {
        what: format!("{case} >= {TARGET_TOP_P}x"),
        value: format!("{r:.2}x"),
        met: r >= TARGET_TOP_P,
    });
    Ok(())
}

/// Temperature of the hot top-p case.
const HOT_TEMPERATURE: f32 = 2.0;

/// The hot top-p case's name for vocabulary `v`.
fn hot_top_p_case(v: usize) -> String {
    format!("top_p_p0.95_t{HOT_TEMPERATURE}_v{v}")
}

/// Top-p 0.95 at temperature 2 (top-k off): a nucleus of thousands of
/// tokens, where finding the cut costs most. No target; it shows the other
/// end of top-p's range.
fn hot_top_p_group(
    v: usize,
    steps: &[Vec<f32>],
    timing: &Timing,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let llama = LlamaSampler::chain_simple([
        LlamaSampler::temp(HOT_TEMPERATURE),
        LlamaSampler::top_p(0.95, 1),
        LlamaSampler::dist(SEED),
    ]);
    time_top_p(
        &hot_top_p_case(v),
        HOT_TEMPERATURE,
        llama,
        v,
        steps,
        timing,
        rows,
    )?;
    Ok(())
}

/// Times top-p 0.95 with top-k off at `temperature` against llama.cpp's
/// `llama` chain, adds the rows of `case`, and returns llama.cpp / ours.
fn time_top_p(
    case: &str,
    temperature: f32,
    mut llama: LlamaSampler,
    v: usize,
    steps: &[Vec<f32>],
    timing: &Timing,
    rows: &mut Vec<Row>,
) -> Result<f64> {
    let config = Config {
        temperature,
        top_k: 0,
        top_p: 0.95,
        min_p: 0.0,
        ..Config::default()
    };
    let mut buf = scratch(v);
    let mut ours = sampler(config, &mut buf)?;
    let mut cs = vec![
        Contender::new("llama.cpp", |l: &[f32]| llama_step(&mut llama, l)),
        Contender::new("ours", |l: &[f32]| ours_step(&mut ours, l, &[])),
    ];
    measure::run(steps, timing, &mut cs);
    push_group(rows, case, &cs);
    Ok(ratio(&cs, 0, 1))
}

/// Greedy: the top token.
fn greedy_group(
    v: usize,
    steps: &[Vec<f32>],
    timing: &Timing,
    rows: &mut Vec<Row>,
    checks: &mut Vec<Check>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut b0 = scratch(v);
    let mut b1 = scratch(v);
    let mut ours = sampler(Config::greedy(), &mut b0)?;
    let mut ours_report = sampler(Config::greedy(), &mut b1)?;
    let mut llama = LlamaSampler::chain_simple([LlamaSampler::greedy()]);
    let mut cs = vec![
        Contender::new("llama.cpp", |l: &[f32]| llama_step(&mut llama, l)),
        Contender::new("ours", |l: &[f32]| ours_step(&mut ours, l, &[])),
        Contender::new("ours, report", |l: &[f32]| {
            ours_step_report(&mut ours_report, l)
        }),
    ];
    measure::run(steps, timing, &mut cs);
    let case = format!("greedy_v{v}");
    push_group(rows, &case, &cs);
    let r = ratio(&cs, 0, 1);
    checks.push(Check {
        what: format!("{case} >= {TARGET_GREEDY}x"),
        value: format!("{r:.2}x"),
        met: r >= TARGET_GREEDY,
    });
    let (Some(theirs), Some(mine)) = (cs.first(), cs.get(1)) else {
        return Ok(());
    };
    let same = theirs
        .picks
        .iter()
        .zip(&mine.picks)
        .filter(|(a, b)| a == b)
        .count();
    notes.push(format!(
        "{case}: both pick the same token at {same}/{} steps",
        steps.len()
    ));
    Ok(())
}

/// The floor kernels; their ratio column is llama.cpp's default chain... none: absolute only.
fn floor_group(v: usize, steps: &[Vec<f32>], timing: &Timing, rows: &mut Vec<Row>) {
    let bits = |x: f32| Pick::id(x.to_bits());
    let [max, poly, libm] = floor_cases(v);
    let mut cs = vec![
        Contender::new(max, |l: &[f32]| bits(floor::max(l))),
        Contender::new(poly, |l: &[f32]| bits(floor::max_sum_exp_poly(l))),
        Contender::new(libm, |l: &[f32]| bits(floor::max_sum_exp_libm(l))),
    ];
    measure::run(steps, timing, &mut cs);
    for c in &cs {
        rows.push(Row {
            case: c.label.clone(),
            label: "one pass each".into(),
            median: c.median() / 1e3,
            p10: measure::quantile(&c.times, 0.1) / 1e3,
            p90: measure::quantile(&c.times, 0.9) / 1e3,
            build: None,
            ratio: None,
        });
    }
}

/// Median of contender `a` over contender `b`.
fn ratio(cs: &[Contender<'_>], a: usize, b: usize) -> f64 {
    match (cs.get(a), cs.get(b)) {
        (Some(a), Some(b)) => a.median() / b.median(),
        _ => f64::NAN,
    }
}

/// Rows for a group whose first contender is llama.cpp.
fn push_group(rows: &mut Vec<Row>, case: &str, cs: &[Contender<'_>]) {
    let base = cs.first().map_or(f64::NAN, Contender::median);
    for (i, c) in cs.iter().enumerate() {
        let m = c.median();
        rows.push(Row {
            case: if i == 0 { case.into() } else { String::new() },
            label: c.label.clone(),
            median: m / 1e3,
            p10: measure::quantile(&c.times, 0.1) / 1e3,
            p90: measure::quantile(&c.times, 0.9) / 1e3,
            build: (!c.builds.is_empty()).then(|| measure::median(&c.builds) / 1e3),
            ratio: (i > 0).then_some(base / m),
        });
    }
}

fn print_rows(out: &mut String, rows: &[Row]) -> std::fmt::Result {
    writeln!(out)?;
    writeln!(
        out,
        "{:<42} {:<30} {:>9} {:>9} {:>9} {:>14}",
        "case", "contender", "median", "p10", "p90", "llama.cpp/ours"
    )?;
    for r in rows {
        if !r.case.is_empty() {
            writeln!(out)?;
        }
        let label = match r.build {
            Some(b) => format!("{} (array {b:.1})", r.label),
            None => r.label.clone(),
        };
        let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.1}x"));
        writeln!(
            out,
            "{:<42} {:<30} {:>9.2} {:>9.2} {:>9.2} {:>14}",
            r.case, label, r.median, r.p10, r.p90, ratio
        )?;
    }
    Ok(())
}
