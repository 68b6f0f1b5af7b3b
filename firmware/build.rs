//! Turns the committed fixtures into Rust statics the firmware embeds.
//!
//! Reads `../fixtures/logits/runs.txt` (sampling runs) with the logits
//! files they name, and `../fixtures/pieces/*.txt` (stream cases); writes
//! `$OUT_DIR/vectors.rs`; places `memory.x` where the linker finds it.

#[path = "fixtures.rs"]
mod fixtures;

use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

use fixtures::{Case, Run};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let here = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fixtures = here.join("..").join("fixtures");

    fs::copy(here.join("memory.x"), out.join("memory.x"))?;
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=fixtures.rs");

    let mut code = String::new();
    write_runs(&mut code, &fixtures.join("logits"))?;
    let pieces = fixtures.join("pieces");
    println!("cargo:rerun-if-changed={}", pieces.display());
    code.push_str("/// Stream cases from `fixtures/pieces/`.\n");
    code.push_str("static CASES: &[replay::Case<'static>] = &[\n");
    for file in fixtures::txt_files(&pieces)? {
        println!("cargo:rerun-if-changed={}", file.display());
        for case in fixtures::read_pieces(&file)? {
            write_case(&mut code, &case)?;
        }
    }
    code.push_str("];\n");

    fs::write(out.join("vectors.rs"), code)?;
    Ok(())
}

/// Writes the logits as f32 statics, `MAX_VOCAB` and the `RUNS` table.
fn write_runs(code: &mut String, dir: &std::path::Path) -> Result<()> {
    let list = dir.join("runs.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let runs = fixtures::read_runs(&list)?;

    let mut names: Vec<&str> = runs.iter().map(|r| r.logits.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut max_vocab = 1;
    for (i, name) in names.iter().enumerate() {
        let file = dir.join(format!("{name}.txt"));
        println!("cargo:rerun-if-changed={}", file.display());
        let logits = fixtures::read_logits(&file)?;
        max_vocab = max_vocab.max(logits.len());
        writeln!(code, "/// Logits of `fixtures/logits/{name}.txt`.")?;
        writeln!(code, "static LOGITS_{i}: [f32; {}] = [", logits.len())?;
        for row in logits.chunks(8) {
            let row: Vec<String> = row.iter().map(|&x| float(x)).collect();
            writeln!(code, "    {},", row.join(", "))?;
        }
        writeln!(code, "];")?;
    }
    writeln!(code, "/// Longest logits vector: the scratch capacity.")?;
    writeln!(code, "const MAX_VOCAB: usize = {max_vocab};")?;

    writeln!(code, "/// Sampling runs from `fixtures/logits/runs.txt`.")?;
    writeln!(code, "static RUNS: &[replay::Vector<'static>] = &[")?;
    for run in &runs {
        let index = names.iter().position(|n| *n == run.logits).unwrap_or(0);
        write_run(code, run, index)?;
    }
    writeln!(code, "];")?;
    Ok(())
}

fn write_run(code: &mut String, run: &Run, logits: usize) -> Result<()> {
    let s = &run.settings;
    let bias: Vec<String> = run
        .bias
        .iter()
        .map(|(id, v)| format!("({id}, {})", float(*v)))
        .collect();
    writeln!(code, "    replay::Vector {{")?;
    writeln!(code, "        name: {:?},", run.name)?;
    writeln!(code, "        logits: &LOGITS_{logits},")?;
    writeln!(code, "        config: sampler_core::Config {{")?;
    writeln!(code, "            temperature: {},", float(s.temperature))?;
    writeln!(code, "            top_k: {},", s.top_k)?;
    writeln!(code, "            top_p: {},", float(s.top_p))?;
    writeln!(code, "            min_p: {},", float(s.min_p))?;
    writeln!(
        code,
        "            repeat_penalty: {},",
        float(s.repeat_penalty)
    )?;
    writeln!(
        code,
        "            presence_penalty: {},",
        float(s.presence_penalty)
    )?;
    writeln!(
        code,
        "            frequency_penalty: {},",
        float(s.frequency_penalty)
    )?;
    writeln!(code, "            order: sampler_core::Order::TALKBACK,")?;
    writeln!(code, "        }},")?;
    writeln!(code, "        order: {:?},", run.order)?;
    writeln!(code, "        seed: {},", run.seed)?;
    writeln!(code, "        steps: {},", run.steps)?;
    writeln!(code, "        window: {},", run.window)?;
    writeln!(code, "        bias: &[{}],", bias.join(", "))?;
    writeln!(code, "    }},")?;
    Ok(())
}

/// An f32 as a Rust expression of exactly that value.
fn float(x: f32) -> String {
    if x.is_nan() {
        "f32::NAN".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 {
            "f32::INFINITY"
        } else {
            "f32::NEG_INFINITY"
        }
        .to_owned()
    } else {
        // Debug prints the shortest decimal that reads back as the same f32.
        format!("{x:?}_f32")
    }
}

fn write_case(code: &mut String, case: &Case) -> Result<()> {
    writeln!(code, "    replay::Case {{")?;
    writeln!(code, "        name: {:?},", case.name)?;
    writeln!(code, "        stops: &[{}],", byte_strings(&case.stops))?;
    writeln!(code, "        pieces: &[{}],", byte_strings(&case.pieces))?;
    writeln!(code, "    }},")?;
    Ok(())
}

fn byte_strings(items: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for item in items {
        s.push_str("b\"");
        for b in item {
            let _ = write!(s, "\\x{b:02x}");
        }
        s.push_str("\", ");
    }
    s
}
