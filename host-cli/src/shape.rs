//! `talkback shape`: the next-token distribution, stage by stage.
//!
//! The table comes from `sampler-core`'s own chain (no draw is made), so it
//! shows exactly what sampling would see: probabilities before any stage
//! ("raw", temperature 1), then after each stage in the configured order,
//! with the survivor count and entropy at every stage.

use std::io::Write;

use anyhow::{anyhow, Result};
use sampler_core::{shape, Candidate, Config, Input, ShapeReport, ShapeRow, Stage};
use serde_json::{json, Value};

use crate::settings::stage_name;

/// One column of the table: a stage and its statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// `raw` or the stage's name.
    pub name: &'static str,
    /// Tokens left after this stage.
    pub survivors: usize,
    /// Entropy of the distribution after this stage, in nats.
    pub entropy: f64,
}

/// The whole distribution, stage by stage.
#[derive(Debug, Clone)]
pub struct Table {
    /// `raw`, then one column per stage.
    pub columns: Vec<Column>,
    /// Every token, most likely first: id, effective logit, and its
    /// probability per column (`None` once removed).
    pub rows: Vec<(u32, f32, Vec<Option<f32>>)>,
}

fn entropy(probs: impl Iterator<Item = f32>) -> f64 {
    probs
        .map(f64::from)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum::<f64>()
        // A single survivor sums to -0.0; print it as 0.
        + 0.0
}

/// One line for `-v`: the settings that shape the distribution.
pub fn describe(config: &Config) -> String {
    let order: Vec<&str> = config
        .order
        .stages()
        .iter()
        .map(|&s| stage_name(s))
        .collect();
    let stages = config.order.stages();
    let value = |stage, v: String| {
        if stages.contains(&stage) {
            v
        } else {
            "-".to_owned()
        }
    };
    format!(
        "temp {} | top-k {} | top-p {} | min-p {} | order {}",
        config.temperature,
        value(Stage::TopK, config.top_k.to_string()),
        value(Stage::TopP, config.top_p.to_string()),
        value(Stage::MinP, config.min_p.to_string()),
        order.join(",")
    )
}

/// A logit in at most nine characters, as the table's column is wide: as
/// many of four decimals as fit, then three significant digits and an
/// exponent.
fn logit_cell(x: f32) -> String {
    (0..=4)
        .rev()
        .map(|decimals| format!("{x:.decimals$}"))
        .find(|plain| plain.len() <= 9)
        .unwrap_or_else(|| format!("{x:.2e}"))
}

/// Runs the core's chain over `logits` and collects every row.
///
/// # Errors
///
/// - the settings or logits are rejected by the core.
pub fn table(logits: &[f32], config: &Config) -> Result<Table> {
    let mut scratch = vec![Candidate::default(); logits.len()];
    let mut rows = vec![ShapeRow::default(); logits.len()];
    let mut report = ShapeReport::new(&mut rows);
    shape(Input::new(logits), config, &mut scratch, &mut report)
        .map_err(|e| anyhow!("cannot shape these logits: {e}"))?;

    let stages = report.order.stages().to_vec();
    let written = report.written();
    let mut columns = vec![Column {
        name: "raw",
        survivors: written
            .iter()
            .filter(|r| r.prob > 0.0 || r.logit.is_finite())
            .count(),
        entropy: entropy(written.iter().map(|r| r.prob)),
    }];
    for (j, &stage) in stages.iter().enumerate() {
        let cells = written
            .iter()
            .filter_map(|r| r.after.get(j).copied().flatten());
        columns.push(Column {
            name: stage_name(stage),
            survivors: cells.clone().count(),
            entropy: entropy(cells),
        });
    }
    let rows = written
        .iter()
        .map(|r| {
            let mut probs = vec![Some(r.prob)];
            probs.extend((0..stages.len()).map(|j| r.after.get(j).copied().flatten()));
            (r.id, r.logit, probs)
        })
        .collect();
    Ok(Table { columns, rows })
}

/// Prints the table for people: a stage summary, then the top `limit` rows.
///
/// `label` gives what the piece column shows for a token: its text quoted,
/// a control token's own spelling bare (it prints nothing), or nothing
/// without a model.
///
/// # Errors
///
/// - stdout cannot be written.
pub fn print_text(
    out: &mut impl Write,
    table: &Table,
    limit: usize,
    label: &dyn Fn(u32) -> String,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:>10} {:>14}",
        "stage", "survivors", "entropy (nats)"
    )?;
    for c in &table.columns {
        writeln!(out, "{:<8} {:>10} {:>14.4}", c.name, c.survivors, c.entropy)?;
    }
    writeln!(out)?;
    write!(out, "{:>7} {:<14} {:>9}", "id", "piece", "logit")?;
    for c in &table.columns {
        write!(out, " {:>8}", format!("{}%", c.name))?;
    }
    writeln!(out)?;
    for (id, logit, probs) in table.rows.iter().take(limit) {
        write!(out, "{id:>7} {:<14} {:>9}", label(*id), logit_cell(*logit))?;
        for p in probs {
            match p {
                Some(p) => write!(out, " {:>8.3}", p * 100.0)?,
                None => write!(out, " {:>8}", "-")?,
            }
        }
        writeln!(out)?;
    }
    if table.rows.len() > limit {
        let more = table.rows.len() - limit;
        let noun = if more == 1 { "token" } else { "tokens" };
        writeln!(out, "({more} more {noun}; --rows shows more)")?;
    }
    Ok(())
}

/// The table as data: stages with counts and entropies, then the rows.
pub fn to_json(table: &Table, limit: usize, piece: &dyn Fn(u32) -> Option<String>) -> Value {
    let stages: Vec<Value> = table
        .columns
        .iter()
        .map(|c| json!({"stage": c.name, "survivors": c.survivors, "entropy": c.entropy}))
        .collect();
    let tokens: Vec<Value> = table
        .rows
        .iter()
        .take(limit)
        .map(|(id, logit, probs)| {
            let by_stage: serde_json::Map<String, Value> = table
                .columns
                .iter()
                .zip(probs)
                .map(|(c, p)| (c.name.to_owned(), p.map_or(Value::Null, |p| json!(p))))
                .collect();
            json!({"id": id, "piece": piece(*id), "logit": logit, "probs": by_stage})
        })
        .collect();
    json!({"stages": stages, "tokens": tokens})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Config {
        Config {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Config::default()
        }
    }

    #[test]
    fn logits_fit_their_column() {
        assert_eq!(logit_cell(3.4), "3.4000");
        assert_eq!(logit_cell(-1234.5), "-1234.500");
        assert_eq!(logit_cell(-123_456.5), "-123456.5");
        assert_eq!(logit_cell(3.4e38), "3.40e38");
        assert_eq!(logit_cell(-3.4e38), "-3.40e38");
        assert_eq!(logit_cell(f32::NEG_INFINITY), "-inf");
        assert_eq!(logit_cell(1e-7), "0.0000");
        for x in [0.0f32, -99_999.9, 1e5, -1e30, f32::MAX, f32::MIN, f32::NAN] {
            assert!(logit_cell(x).len() <= 9, "{x}: {}", logit_cell(x));
        }
    }

    #[test]
    fn worked_example_probabilities_and_entropy() {
        let logits = [3.4, 2.8, 2.1, 1.6, 1.0, 0.4, -0.2, -0.8, -1.3, -2.0];
        let t = table(&logits, &plain()).expect("table");
        let want = [45.8, 25.1, 12.5, 7.6, 4.2, 2.3, 1.3, 0.7, 0.4, 0.2];
        for ((id, _, probs), w) in t.rows.iter().zip(want) {
            let p = probs[0].expect("raw") * 100.0;
            assert!((f64::from(p) - w).abs() < 0.06, "token {id}: {p} vs {w}");
        }
        assert!(
            (t.columns[0].entropy - 1.50).abs() < 0.005,
            "{}",
            t.columns[0].entropy
        );
    }

    #[test]
    fn top_k_and_top_p_columns_drop_the_tail() {
        let logits = [2.5, 1.8, 1.2, 0.9, 0.3, -0.2, -1.1];
        let t = table(
            &logits,
            &Config {
                top_k: 3,
                ..plain()
            },
        )
        .expect("table");
        let k = t
            .columns
            .iter()
            .position(|c| c.name == "top-k")
            .expect("top-k");
        assert_eq!(t.columns[k].survivors, 3);
        let kept: Vec<u32> = t
            .rows
            .iter()
            .filter(|r| r.2[k].is_some())
            .map(|r| r.0)
            .collect();
        assert_eq!(kept, vec![0, 1, 2]);

        let t = table(
            &logits,
            &Config {
                top_p: 0.7,
                ..plain()
            },
        )
        .expect("table");
        let p = t
            .columns
            .iter()
            .position(|c| c.name == "top-p")
            .expect("top-p");
        assert_eq!(t.columns[p].survivors, 3);
    }
}
