//! Turns the committed fixtures into Rust statics the firmware embeds.
//!
//! Reads what `fixtures.rs` finds under `../fixtures/` (sampler-core's
//! golden vectors, the runs over real logits, the stream cases), writes
//! them as statics to `$OUT_DIR/vectors.rs`, and places `memory.x` where
//! the linker finds it.

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

    // Every file `all_runs` and `all_cases` may read, and the folders, so
    // an added or removed file counts as a change too.
    for dir in ["golden", "logits", "pieces"] {
        let dir = fixtures.join(dir);
        println!("cargo:rerun-if-changed={}", dir.display());
        for file in fixtures::txt_files(&dir)? {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }

    let mut code = String::new();
    write_runs(&mut code, &fixtures::all_runs(&fixtures)?)?;
    code.push_str("/// Stream cases from `fixtures/pieces/`.\n");
    code.push_str("static CASES: &[replay::Case<'static>] = &[\n");
    for case in fixtures::all_cases(&fixtures)? {
        write_case(&mut code, &case)?;
    }
    code.push_str("];\n");

    fs::write(out.join("vectors.rs"), code)?;
    Ok(())
}

/// Writes the logits as f32 statics (each distinct vector once), the
/// buffer sizes and the `RUNS` table.
fn write_runs(code: &mut String, runs: &[Run]) -> Result<()> {
    let mut distinct: Vec<&[f32]> = Vec::new();
    let mut index = Vec::new();
    for run in runs {
        let same = |l: &&[f32]| {
            l.iter()
                .map(|x| x.to_bits())
                .eq(run.logits.iter().map(|x| x.to_bits()))
        };
        let i = distinct.iter().position(same).unwrap_or_else(|| {
            distinct.push(&run.logits);
            distinct.len() - 1
        });
        index.push(i);
    }
    for (i, logits) in distinct.iter().enumerate() {
        writeln!(code, "static LOGITS_{i}: [f32; {}] = [", logits.len())?;
        for row in logits.chunks(8) {
            let row: Vec<String> = row.iter().map(|&x| float(x)).collect();
            writeln!(code, "    {},", row.join(", "))?;
        }
        writeln!(code, "];")?;
    }
    let max_vocab = runs
        .iter()
        .map(|r| r.logits.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let max_shifted = runs
        .iter()
        .filter(|r| r.shift != 0)
        .map(|r| r.logits.len())
        .max();
    writeln!(code, "/// Largest vocabulary: the scratch capacity.")?;
    writeln!(code, "const MAX_VOCAB: usize = {max_vocab};")?;
    writeln!(code, "/// Largest vocabulary of a run whose logits rotate.")?;
    writeln!(
        code,
        "const MAX_ROTATED: usize = {};",
        max_shifted.unwrap_or(0).max(1)
    )?;

    writeln!(
        code,
        "/// Sampling runs: the golden vectors, then `fixtures/logits/runs.txt`."
    )?;
    writeln!(code, "static RUNS: &[replay::Vector<'static>] = &[")?;
    for (run, i) in runs.iter().zip(index) {
        write_run(code, run, i)?;
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
    writeln!(code, "        shift: {},", run.shift)?;
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
        // Keeps the payload bits, so the firmware sees the very same NaN.
        format!("f32::from_bits({:#010x})", x.to_bits())
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
