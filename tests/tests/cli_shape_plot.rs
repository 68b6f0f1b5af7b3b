//! `shape` reproduces the core's worked examples from given logits and
//! agrees with generation on the model; `plot` writes a well-formed SVG with
//! one labelled line per setting.

// Helpers outside #[test] functions report failure by panicking too.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;

use serde_json::Value;
use talkback_tests::{ok, tb, Run, TempFile};

/// Every stage off but the one under test: temperature 1, no truncation.
const PLAIN: [&str; 8] = [
    "--temp", "1", "--top-k", "0", "--top-p", "1", "--min-p", "0",
];

/// The first worked example's logits.
const TEN: &str = "3.4,2.8,2.1,1.6,1.0,0.4,-0.2,-0.8,-1.3,-2.0";
/// Its probabilities in percent, rounded to one decimal.
const TEN_PERCENT: [f64; 10] = [45.8, 25.1, 12.5, 7.6, 4.2, 2.3, 1.3, 0.7, 0.4, 0.2];
/// The second worked example's logits.
const SEVEN: &str = "2.5,1.8,1.2,0.9,0.3,-0.2,-1.1";

/// `shape --logits` with the settings in `args`, as text or JSON.
fn shape(logits: &str, args: &[&str], json: bool) -> Run {
    let flag = format!("--logits={logits}");
    let format = if json { "json" } else { "text" };
    let run = tb(&[&["shape", flag.as_str(), "--format", format], args].concat());
    ok(&run);
    run
}

/// Settings with one value changed from [`PLAIN`].
fn plain_with(flag: &str, value: &'static str) -> Vec<&'static str> {
    let mut args = PLAIN.to_vec();
    let at = args.iter().position(|&a| a == flag).expect("a PLAIN flag");
    args[at + 1] = value;
    args
}

/// One row of the text table: id, logit and the percentage per column
/// (`None` for "-").
#[derive(Debug)]
struct Row {
    id: u32,
    logit: f64,
    percent: Vec<Option<f64>>,
}

/// One line of the stage summary: name, survivors, entropy as printed.
type StageLine = (String, usize, String);

/// The text table: the stage summary, the row header, then the rows.
fn parse_text(out: &str) -> (Vec<StageLine>, Vec<String>, Vec<Row>) {
    let (stages, rows) = out.split_once("\n\n").expect("two blocks");
    let mut stage_lines = stages.lines();
    assert_eq!(
        stage_lines
            .next()
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>),
        Some(vec!["stage", "survivors", "entropy", "(nats)"])
    );
    let stages = stage_lines
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{line}");
            (
                f[0].to_owned(),
                f[1].parse().expect("count"),
                f[2].to_owned(),
            )
        })
        .collect();
    let mut row_lines = rows.lines();
    let header: Vec<String> = row_lines
        .next()
        .expect("row header")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let rows = row_lines
        .filter(|line| !line.starts_with('('))
        .map(|line| {
            // No model, no pieces: id, logit, then one cell per column.
            let f: Vec<&str> = line.split_whitespace().collect();
            Row {
                id: f[0].parse().expect("id"),
                logit: f[1].parse().expect("logit"),
                percent: f[2..].iter().map(|c| c.parse().ok()).collect(),
            }
        })
        .collect();
    (stages, header, rows)
}

/// The column index of `stage` in the text table's rows.
fn column(header: &[String], stage: &str) -> usize {
    header
        .iter()
        .skip(3)
        .position(|h| h == &format!("{stage}%"))
        .unwrap_or_else(|| panic!("no {stage}% column in {header:?}"))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The ids whose probability after `stage` is not null, in JSON output.
fn kept(v: &Value, stage: &str) -> BTreeSet<u64> {
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter(|t| !t["probs"][stage].is_null())
        .map(|t| t["id"].as_u64().expect("id"))
        .collect()
}

fn stage<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {v}"))
}

#[test]
fn ten_logits_give_the_worked_probabilities_and_entropy() {
    let (stages, header, rows) = parse_text(shape(TEN, &PLAIN, false).text());
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["raw", "temp", "top-k", "top-p", "min-p"]);
    for (name, survivors, entropy) in &stages {
        assert_eq!(*survivors, 10, "{name}");
        assert_eq!(
            entropy.parse::<f64>().map(|e| format!("{e:.2}")),
            Ok("1.50".into())
        );
    }
    assert_eq!(rows.len(), 10);
    let raw = column(&header, "raw");
    let last = column(&header, "min-p");
    for (i, (row, want)) in rows.iter().zip(TEN_PERCENT).enumerate() {
        assert_eq!(row.id as usize, i, "most likely first");
        let p = row.percent[raw].expect("raw");
        assert_eq!(format!("{p:.1}"), format!("{want:.1}"), "token {i}: {p}");
        assert_eq!(row.percent[last], Some(p), "nothing is removed");
    }

    let v = shape(TEN, &PLAIN, true).json();
    assert_eq!(format!("{:.2}", num(&stage(&v, "raw")["entropy"])), "1.50");
    let tokens = v["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 10);
    for (i, (t, want)) in tokens.iter().zip(TEN_PERCENT).enumerate() {
        assert_eq!(t["id"], i);
        assert_eq!(t["piece"], Value::Null, "no model, no piece");
        let p = num(&t["probs"]["raw"]) * 100.0;
        assert_eq!(format!("{p:.1}"), format!("{want:.1}"), "token {i}: {p}");
        assert_eq!(num(&t["logit"]) as f32, rows[i].logit as f32);
    }
}

/// Checks that `stage` keeps exactly `ids` in both formats, and that the
/// kept probabilities are renormalised.
fn keeps(logits: &str, args: &[&str], stage_name: &str, ids: &[u64]) {
    let want: BTreeSet<u64> = ids.iter().copied().collect();
    let (stages, header, rows) = parse_text(shape(logits, args, false).text());
    let s = stages.iter().find(|s| s.0 == stage_name).expect("stage");
    assert_eq!(s.1, ids.len(), "{stages:?}");
    let col = column(&header, stage_name);
    let text_kept: BTreeSet<u64> = rows
        .iter()
        .filter(|r| r.percent[col].is_some())
        .map(|r| u64::from(r.id))
        .collect();
    assert_eq!(text_kept, want, "text");

    let v = shape(logits, args, true).json();
    assert_eq!(kept(&v, stage_name), want, "json: {v}");
    assert_eq!(stage(&v, stage_name)["survivors"], ids.len());
    let sum: f64 = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["probs"][stage_name].as_f64())
        .sum();
    assert!((sum - 1.0).abs() < 1e-5, "kept probabilities sum to {sum}");
}

#[test]
fn top_k_3_keeps_the_three_largest() {
    keeps(SEVEN, &plain_with("--top-k", "3"), "top-k", &[0, 1, 2]);
}

#[test]
fn top_p_0_7_keeps_the_three_largest() {
    keeps(SEVEN, &plain_with("--top-p", "0.7"), "top-p", &[0, 1, 2]);
}

#[test]
fn top_p_0_8_over_log_probabilities_keeps_two() {
    let logits: Vec<String> = [0.3_f64, 0.1, 0.1, 0.5]
        .iter()
        .map(|p| p.ln().to_string())
        .collect();
    let logits = logits.join(",");
    keeps(&logits, &plain_with("--top-p", "0.8"), "top-p", &[3, 0]);

    // 0.5 and 0.3 renormalise to 5/8 and 3/8.
    let v = shape(&logits, &plain_with("--top-p", "0.8"), true).json();
    let tokens = v["tokens"].as_array().expect("tokens");
    assert_eq!(tokens[0]["id"], 3);
    assert!(
        (num(&tokens[0]["probs"]["top-p"]) - 0.625).abs() < 1e-6,
        "{v}"
    );
    assert!(
        (num(&tokens[1]["probs"]["top-p"]) - 0.375).abs() < 1e-6,
        "{v}"
    );
    assert!((num(&tokens[0]["probs"]["raw"]) - 0.5).abs() < 1e-6, "{v}");
}

#[test]
fn a_stage_left_out_of_the_order_does_not_run() {
    // The default min-p, 0.05, drops id 6 (e^-3.6 = 0.027 of the top) when
    // it runs; an order without it keeps all seven. (Typing --min-p with
    // such an order is refused: see cli_usage.)
    keeps(
        SEVEN,
        &plain_with("--min-p", "0.05"),
        "min-p",
        &[0, 1, 2, 3, 4, 5],
    );

    let mut args = vec!["--temp", "1", "--top-k", "0", "--top-p", "1"];
    args.extend(["--sampler-order", "top-k,temp,top-p"]);
    let v = shape(SEVEN, &args, true).json();
    let names: Vec<&str> = v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("stage name"))
        .collect();
    assert_eq!(names, ["raw", "top-k", "temp", "top-p"], "{v}");
    assert_eq!(stage(&v, "top-p")["survivors"], 7, "{v}");
    assert_eq!(kept(&v, "top-p"), (0..7).collect(), "{v}");
}

#[test]
fn negative_logits_may_follow_the_flag_as_a_separate_argument() {
    let run = tb(&["shape", "--logits", "-1,-2,-3", "--format", "json"]);
    ok(&run);
    let v = run.json();
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["tokens"][0]["id"], 0);
}

#[test]
fn rows_limits_the_listing_and_says_how_many_are_left() {
    let run = tb(&["shape", &format!("--logits={TEN}"), "--rows", "4"]);
    ok(&run);
    let (_, _, rows) = parse_text(run.text());
    assert_eq!(rows.len(), 4);
    assert!(
        run.text().ends_with("(6 more tokens; --rows shows more)\n"),
        "{}",
        run.text()
    );
    let one_left = tb(&["shape", &format!("--logits={TEN}"), "--rows", "9"]);
    ok(&one_left);
    assert!(
        one_left
            .text()
            .ends_with("(1 more token; --rows shows more)\n"),
        "{}",
        one_left.text()
    );
}

#[test]
fn shape_refuses_the_flags_that_do_nothing_for_one_next_token() {
    for (flag, value) in [
        ("--seed", "1"),
        ("--repeat-penalty", "1.1"),
        ("--repeat-last-n", "8"),
        ("--presence-penalty", "0.5"),
        ("--frequency-penalty", "0.5"),
        ("--sampler", "talkback"),
        ("--sampler", "llama.cpp"),
    ] {
        let run = tb(&["shape", "--logits", TEN, flag, value]);
        assert_eq!(run.code, 2, "{flag}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{flag}");
        // Said why, not clap's tip about passing the flag after `--`.
        let want = format!("error: shape takes no {flag}: ");
        assert!(run.stderr.starts_with(&want), "{flag}: {}", run.stderr);
        assert!(!run.stderr.contains("tip:"), "{flag}: {}", run.stderr);
    }

    let help = tb(&["shape", "--help"]);
    ok(&help);
    let flags: BTreeSet<&str> = help
        .text()
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches([',', '.', ')']))
        .collect();
    for used in ["--temp", "--top-k", "--top-p", "--min-p", "--sampler-order"] {
        assert!(flags.contains(used), "{used} missing from {flags:?}");
    }
    for unused in [
        "--seed",
        "--repeat-penalty",
        "--repeat-last-n",
        "--presence-penalty",
        "--frequency-penalty",
        "--sampler",
    ] {
        assert!(!flags.contains(unused), "{unused} listed in {flags:?}");
    }
}

#[test]
fn shape_with_given_logits_refuses_every_model_flag() {
    for flags in [
        &["-m", "x.gguf"][..],
        &["-c", "64"],
        &["-b", "8"],
        &["-t", "1"],
        &["--gpu-layers", "0"],
        &["--mmap"],
    ] {
        let run = tb(&[&["shape", "--logits", TEN], flags].concat());
        assert_eq!(run.code, 2, "{flags:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{flags:?}");
        assert!(
            run.stderr.contains("cannot be used with"),
            "{flags:?}: {}",
            run.stderr
        );
    }
    // Given twice, the lists are joined.
    let twice = tb(&[
        "shape", "--logits", "1,2", "--logits", "3", "--format", "json",
    ]);
    ok(&twice);
    assert_eq!(
        twice.json()["stages"][0]["survivors"],
        3,
        "{}",
        twice.text()
    );
}

#[test]
fn verbose_shape_prints_the_settings_it_applies() {
    let logits = format!("--logits={TEN}");
    let run = tb(&[
        &[
            "-v",
            "shape",
            logits.as_str(),
            "--sampler-order",
            "llama.cpp",
        ],
        &plain_with("--top-k", "3")[..],
    ]
    .concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "talkback: temp 1 | top-k 3 | top-p 1 | min-p 0 | order top-k,top-p,min-p,temp\n"
    );

    let run = tb(&["-v", "shape", PROMPT, "--chat", "--ctx-size", "256"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].starts_with("talkback: model "), "{}", run.stderr);
    assert_eq!(
        lines[1],
        "talkback: temp 0.8 | top-k 40 | top-p 0.95 | min-p 0.05 \
         | order temp,top-k,top-p,min-p | ctx 256 | chat true"
    );
}

const PROMPT: &str = "The capital of France is";

#[test]
fn shape_on_the_model_matches_greedy_generation() {
    let run = tb(&["shape", PROMPT, "--rows", "5", "--format", "json"]);
    ok(&run);
    let v = run.json();
    let survivors: Vec<u64> = v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["survivors"].as_u64().expect("count"))
        .collect();
    assert_eq!(survivors[0], 49_152, "{v}");
    assert_eq!(survivors[1], 49_152, "temperature removes nothing: {v}");
    assert_eq!(survivors[2], 40, "default top-k: {v}");
    assert!(survivors.windows(2).all(|w| w[0] >= w[1]), "{v}");
    assert!(*survivors.last().expect("final") >= 1);

    let tokens = v["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 5);
    let raw: Vec<f64> = tokens.iter().map(|t| num(&t["probs"]["raw"])).collect();
    assert!(raw.windows(2).all(|w| w[0] >= w[1]), "{raw:?}");
    assert!(raw.iter().sum::<f64>() <= 1.0 + 1e-6);
    for t in tokens {
        assert!(t["piece"].is_string(), "{t}");
    }

    let greedy = tb(&[
        "complete", PROMPT, "--temp", "0", "-n", "1", "--format", "json",
    ]);
    ok(&greedy);
    let g = greedy.json();
    assert_eq!(
        g["tokens"][0], tokens[0]["id"],
        "shape's top row is the greedy pick"
    );
    assert_eq!(g["text"], tokens[0]["piece"]);

    let text = tb(&["shape", PROMPT, "--rows", "5"]);
    ok(&text);
    let out = text.text();
    assert!(
        out.ends_with("(49147 more tokens; --rows shows more)\n"),
        "{out}"
    );
    let piece = tokens[0]["piece"].as_str().expect("piece");
    assert!(out.contains(&format!("{piece:?}")), "{out}");
}

#[test]
fn shape_chat_matches_the_first_greedy_chat_token() {
    let run = tb(&[
        "shape", "Hello!", "--chat", "--rows", "1", "--format", "json",
    ]);
    ok(&run);
    let top = run.json()["tokens"][0]["id"].clone();
    // `shape --chat` renders the message alone, which is what `chat` does
    // without --system.
    let greedy = tb(&[
        "chat", "Hello!", "--temp", "0", "-n", "1", "--format", "json",
    ]);
    ok(&greedy);
    assert_eq!(greedy.json()["tokens"][0], top);
}

#[test]
fn shape_shows_control_tokens_by_their_spelling() {
    let run = tb(&["shape", "Hello!", "--chat", "--rows", "49152"]);
    ok(&run);
    let out = run.text();
    let row = |id: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for token {id}: {out}"))
            .to_owned()
    };
    // Control tokens print nothing; the table shows how the vocabulary
    // spells them, bare, apart from the quoted text of the others.
    let end = row("2");
    assert_eq!(end.split_whitespace().nth(1), Some("<|im_end|>"), "{end}");
    let start = row("1");
    assert_eq!(
        start.split_whitespace().nth(1),
        Some("<|im_start|>"),
        "{start}"
    );
    let json = tb(&[
        "shape", "Hello!", "--chat", "--rows", "49152", "--format", "json",
    ]);
    ok(&json);
    let tokens = json.json()["tokens"].as_array().expect("tokens").clone();
    let piece = tokens
        .iter()
        .find(|t| t["id"] == 2)
        .map(|t| t["piece"].clone())
        .expect("token 2");
    assert_eq!(piece, "", "JSON keeps what the token prints");
}

/// A chart's lines: (stroke colour, number of points) of every coloured
/// polyline, the text of every `<text>` element, the pixel height of each
/// data line's points, and the vertical axis' tick labels as (pixel
/// height, value).
struct Chart {
    lines: Vec<(String, usize)>,
    texts: Vec<String>,
    heights: Vec<Vec<f64>>,
    ticks: Vec<(f64, f64)>,
}

impl Chart {
    /// The values the data lines (legend swatches excluded) plot, read back
    /// through the vertical axis' tick labels.
    fn values(&self) -> Vec<Vec<f64>> {
        let first = self.ticks.first().expect("ticks");
        let per_pixel = self.tokens_per_pixel();
        self.heights
            .iter()
            .filter(|h| h.len() > 2)
            .map(|h| {
                h.iter()
                    .map(|y| first.1 + (y - first.0) * per_pixel)
                    .collect()
            })
            .collect()
    }

    /// How many tokens one pixel of height stands for.
    fn tokens_per_pixel(&self) -> f64 {
        match self.ticks.as_slice() {
            [first, .., last] => (last.1 - first.1) / (last.0 - first.0),
            _ => panic!("too few ticks: {:?}", self.ticks),
        }
    }

    /// The data lines' values as whole token counts.
    fn counts(&self) -> Vec<Vec<u64>> {
        // Points sit on whole pixels: a pixel must be well under one token
        // for the rounding to be read back exactly.
        let per_pixel = self.tokens_per_pixel().abs();
        assert!(per_pixel < 0.25, "{per_pixel} tokens per pixel");
        self.values()
            .iter()
            .map(|line| line.iter().map(|v| v.round() as u64).collect())
            .collect()
    }
}

fn parse_chart(svg: &str) -> Chart {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML ({e})"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut chart = Chart {
        lines: Vec::new(),
        texts: Vec::new(),
        heights: Vec::new(),
        ticks: Vec::new(),
    };
    for node in doc.descendants().filter(roxmltree::Node::is_element) {
        match node.tag_name().name() {
            "polyline" | "path" => {
                let stroke = node.attribute("stroke").unwrap_or("none");
                // The frame, axes and ticks are black; data lines are not.
                if stroke != "none" && stroke != "#000000" {
                    let points = node.attribute("points").unwrap_or_default();
                    let heights: Vec<f64> = points
                        .split_whitespace()
                        .map(|p| {
                            let (_, y) = p.split_once(',').expect("x,y");
                            y.parse().expect("a pixel height")
                        })
                        .collect();
                    chart.lines.push((stroke.to_owned(), heights.len()));
                    chart.heights.push(heights);
                }
            }
            "text" => {
                let text = node.text().unwrap_or_default().trim().to_owned();
                // The vertical axis' labels are the right-aligned numbers.
                if node.attribute("text-anchor") == Some("end") {
                    if let (Ok(value), Some(y)) = (text.parse::<f64>(), node.attribute("y")) {
                        chart
                            .ticks
                            .push((y.parse().expect("a pixel height"), value));
                    }
                }
                chart.texts.push(text);
            }
            _ => {}
        }
    }
    chart
}

fn read_chart(path: &TempFile) -> Chart {
    parse_chart(&std::fs::read_to_string(&path.0).expect("SVG written"))
}

/// Checks a chart with one series per label, each `steps` points long:
/// one line per series, one legend swatch of the same colour per label.
fn check_chart(chart: &Chart, labels: &[&str], steps: usize) {
    let series: Vec<&(String, usize)> = chart.lines.iter().filter(|l| l.1 > 2).collect();
    let swatches: Vec<&(String, usize)> = chart.lines.iter().filter(|l| l.1 == 2).collect();
    assert_eq!(series.len(), labels.len(), "series: {:?}", chart.lines);
    for (_, points) in &series {
        assert_eq!(*points, steps, "one point per generated token");
    }
    let colours: BTreeSet<&String> = series.iter().map(|l| &l.0).collect();
    assert_eq!(
        colours.len(),
        labels.len(),
        "each series has its own colour"
    );
    let legend: BTreeSet<&String> = swatches.iter().map(|l| &l.0).collect();
    assert_eq!(legend, colours, "the legend shows every series' colour");
    for label in labels {
        assert!(
            chart.texts.iter().any(|t| t == label),
            "label {label:?} missing from {:?}",
            chart.texts
        );
    }
}

#[test]
fn plot_draws_one_labelled_line_per_top_p() {
    let out = TempFile::new("top-p.svg");
    let run = tb(&[
        "plot",
        "Once upon a time",
        "--top-p",
        "0.1,0.5,0.9",
        "-n",
        "12",
        "-o",
        out.arg(),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.text());
    assert_eq!(
        run.stderr.trim_end(),
        format!("talkback: wrote {} (3 series)", out.arg())
    );
    let chart = read_chart(&out);
    check_chart(&chart, &["top-p 0.1", "top-p 0.5", "top-p 0.9"], 12);
    // Counts reach the hundreds here, so a pixel stands for some tokens.
    let per_pixel = chart.tokens_per_pixel().abs();
    for (line, top_p) in chart.values().iter().zip(["0.1", "0.5", "0.9"]) {
        let want = final_counts(&[
            "Once upon a time",
            "--temp",
            "0.8",
            "--top-k",
            "0",
            "--top-p",
            top_p,
            "--min-p",
            "0",
            "--seed",
            "0",
            "-n",
            "12",
        ]);
        assert_eq!(line.len(), want.len(), "top-p {top_p}");
        for (got, want) in line.iter().zip(&want) {
            assert!(
                (got - *want as f64).abs() <= per_pixel,
                "top-p {top_p}: {line:?} vs {want:?}"
            );
        }
    }
    assert!(
        chart
            .texts
            .iter()
            .any(|t| t == "Tokens to draw from per step (seed 0; temp 0.8, top-k 0, min-p 0)"),
        "{:?}",
        chart.texts
    );
}

/// The final distribution's size at each step of `complete` with `args`,
/// from its JSON-lines events.
fn final_counts(args: &[&str]) -> Vec<u64> {
    let run = tb(&[&["complete", "--format", "jsonl"], args].concat());
    ok(&run);
    run.text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
        .filter(|event| event["event"] == "token")
        .map(|event| event["survivors"]["final"].as_u64().expect("a count"))
        .collect()
}

#[test]
fn plot_counts_what_min_p_leaves_after_top_p() {
    let out = TempFile::new("min-p.svg");
    let story = "Tell me a story";
    let run = tb(&[
        "plot",
        story,
        "--top-p",
        "1",
        "--min-p",
        "0.1,0.2",
        "-n",
        "8",
        "-o",
        out.arg(),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let chart = read_chart(&out);
    assert!(
        chart
            .texts
            .iter()
            .any(|t| t == "tokens left after every stage"),
        "{:?}",
        chart.texts
    );
    let counts = chart.counts();
    // Plot's fixed settings, spelled out for `complete`.
    let same = [
        "--temp", "0.8", "--top-k", "0", "--top-p", "1", "--seed", "0", "-n", "8",
    ];
    let want: Vec<Vec<u64>> = ["0.1", "0.2"]
        .iter()
        .map(|min_p| final_counts(&[&[story, "--min-p", min_p], &same[..]].concat()))
        .collect();
    assert_eq!(counts, want);
    assert_ne!(counts[0], counts[1], "min-p must change the line");
    // Both start from the same context, where the stricter min-p keeps fewer.
    assert!(counts[1][0] < counts[0][0], "{counts:?}");
    // Top-p 1 alone would keep the whole vocabulary of 49152.
    assert!(counts.iter().flatten().all(|&n| n < 1000), "{counts:?}");
}

#[test]
fn plot_counts_what_top_k_leaves() {
    let out = TempFile::new("top-k.svg");
    let run = tb(&[
        "plot",
        "Once upon a time",
        "--top-p",
        "1",
        "--top-k",
        "5,20",
        "-n",
        "6",
        "-o",
        out.arg(),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let chart = read_chart(&out);
    check_chart(&chart, &["top-k 5", "top-k 20"], 6);
    assert_eq!(chart.counts(), [vec![5; 6], vec![20; 6]]);
}

#[test]
fn plot_to_a_dash_writes_the_chart_to_stdout() {
    let dir = TempFile::new("dash");
    std::fs::create_dir(&dir.0).expect("a folder");
    let out = std::process::Command::new(talkback_tests::binary())
        .args(["plot", "Once upon a time", "--top-p", "0.5,0.9", "-n", "4"])
        .args(["-o", "-", "--threads", "1"])
        .env("TALKBACK_MODEL", talkback_tests::model())
        .env_remove("RUST_LOG")
        .current_dir(&dir.0)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run talkback");
    let run = Run::from(out);
    let listed: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("the folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    std::fs::remove_dir_all(&dir.0).expect("remove the folder");
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "", "the chart is the only output");
    assert!(listed.is_empty(), "{listed:?}");
    check_chart(&parse_chart(run.text()), &["top-p 0.5", "top-p 0.9"], 4);
}

#[test]
fn plot_writes_its_chart_to_a_pipe_or_a_device() {
    // Neither can be cut to length, which a file about to be replaced is.
    let piped = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#""$0" plot "Once upon a time" --top-p 0.5 -n 3 --threads 1 -o >(cat) | cat"#)
        .arg(talkback_tests::binary())
        .env("TALKBACK_MODEL", talkback_tests::model())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run talkback");
    let run = Run::from(piped);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let label = "temp 0.8, top-k 0, top-p 0.5, min-p 0";
    check_chart(&parse_chart(run.text()), &[label], 3);

    let run = tb(&[
        "plot",
        "Once",
        "--top-p",
        "0.5",
        "-n",
        "2",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("wrote /dev/null (1 series)"),
        "{}",
        run.stderr
    );
}

#[test]
fn plot_help_says_where_the_chart_goes_and_why_lines_end_early() {
    let run = tb(&["plot", "--help"]);
    ok(&run);
    let help = run.text().split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "[default: talkback-plot.svg]",
        "`-` writes the chart to stdout",
        "tokens left after every stage",
        "A line ends early when its reply ends",
    ] {
        assert!(help.contains(want), "{want:?} missing from {help}");
    }
}

#[test]
fn plot_draws_every_combination_of_settings() {
    let out = TempFile::new("grid.svg");
    let run = tb(&[
        "-v",
        "plot",
        "Once upon a time",
        "--temp",
        "0.5,1.0",
        "--top-p",
        "0.5,0.9",
        "-n",
        "6",
        "--seed",
        "3",
        "-o",
        out.arg(),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let labels = [
        "temp 0.5, top-p 0.5",
        "temp 0.5, top-p 0.9",
        "temp 1, top-p 0.5",
        "temp 1, top-p 0.9",
    ];
    check_chart(&read_chart(&out), &labels, 6);
    // -v names what a run needs to be repeated, as the other commands do.
    let settings = format!(
        "talkback: seed 3 | n 6 | threads 1 | 4 series: {}",
        labels.join("; ")
    );
    assert!(
        run.stderr.lines().any(|l| l == settings),
        "{settings:?} missing from {}",
        run.stderr
    );
}

#[test]
fn plot_refuses_an_out_of_range_setting_before_writing() {
    let out = TempFile::new("refused.svg");
    let run = tb(&["plot", "x", "--top-p", "0.5,1.5", "-o", out.arg()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("1.5"), "{}", run.stderr);
    assert!(!out.0.exists());
}

#[test]
fn plot_refuses_an_unwritable_chart_path_before_loading_the_model() {
    let dir = std::env::temp_dir();
    let missing = TempFile::new("no-such-folder");
    let inside = missing.0.join("chart.svg");
    let inside = inside.to_str().expect("UTF-8 temp path");
    let dir = dir.to_str().expect("UTF-8 temp path");
    for out in [dir, inside] {
        // The model does not exist either: the chart's path must be the
        // first thing checked, before any model or generation.
        let run = tb(&["plot", "x", "-o", out, "--model", "/nonexistent/m.gguf"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stdout.is_empty());
        let want = format!("talkback: cannot write chart {out}: ");
        assert!(run.stderr.starts_with(&want), "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    assert!(!missing.0.exists());

    // A chart that fails after opening (here, no model) leaves no empty file.
    let out = TempFile::new("never-drawn.svg");
    let run = tb(&[
        "plot",
        "x",
        "-o",
        out.arg(),
        "--model",
        "/nonexistent/m.gguf",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(!out.0.exists());
}

#[test]
fn plot_refuses_more_settings_than_it_has_styles() {
    let out = TempFile::new("too-many.svg");
    let six = "0.1,0.2,0.3,0.4,0.5,0.6";
    let seven = "0.1,0.2,0.3,0.4,0.5,0.6,0.7";
    let run = tb(&[
        "plot",
        "x",
        "--top-p",
        six,
        "--min-p",
        seven,
        "-o",
        out.arg(),
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .starts_with("talkback: plot draws at most 36 settings"),
        "{}",
        run.stderr
    );
    assert!(!out.0.exists());
}

#[test]
fn plot_refuses_a_value_listed_twice() {
    // It drew the same line twice under the same label. Values are
    // compared as numbers, so 0.5 and 0.50 are one, and so are 0 and -0.
    let out = TempFile::new("twice.svg");
    for (flag, list, twice) in [
        ("--temp", "0.5,0.8,0.50", "0.5"),
        ("--top-k", "40,10,40", "40"),
        ("--min-p", "0,-0", "0"),
    ] {
        let args = [
            "plot",
            "x",
            flag,
            list,
            "-o",
            out.arg(),
            "--model",
            "/nonexistent/m.gguf",
        ];
        let run = tb(&args);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stdout.is_empty());
        assert_eq!(
            run.stderr,
            format!("talkback: {flag} lists {twice} twice\n")
        );
        assert!(!out.0.exists());
    }
}
