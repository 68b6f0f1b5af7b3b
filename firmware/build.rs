//! Turns the committed fixtures into Rust statics the firmware embeds.
//!
//! Reads `../fixtures/pieces/*.txt` (stream cases) and writes
//! `$OUT_DIR/vectors.rs`; places `memory.x` where the linker finds it.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let here = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fixtures = here.join("..").join("fixtures");

    fs::copy(here.join("memory.x"), out.join("memory.x"))?;
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rerun-if-changed=memory.x");

    let mut code = String::new();
    let pieces = fixtures.join("pieces");
    println!("cargo:rerun-if-changed={}", pieces.display());
    code.push_str("/// Stream cases from `fixtures/pieces/`.\n");
    code.push_str("static CASES: &[replay::Case<'static>] = &[\n");
    for file in txt_files(&pieces)? {
        for case in parse_pieces(&file)? {
            write_case(&mut code, &case)?;
        }
    }
    code.push_str("];\n");

    fs::write(out.join("vectors.rs"), code)?;
    Ok(())
}

/// The `*.txt` files of `dir`, sorted by name so the output order is stable.
fn txt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "txt") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// One stream case as read from a pieces file.
struct Case {
    name: String,
    stops: Vec<Vec<u8>>,
    pieces: Vec<Vec<u8>>,
}

/// Parses `case` / `stop HEX` / `piece ID HEX` / `end` records; `#` starts a comment line.
fn parse_pieces(path: &Path) -> Result<Vec<Case>> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cases = Vec::new();
    let mut open: Option<Case> = None;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match (words.as_slice(), open.as_mut()) {
            ([], _) => {}
            ([first, ..], _) if first.starts_with('#') => {}
            (["case", name], None) => {
                let name = (*name).to_owned();
                open = Some(Case {
                    name,
                    stops: Vec::new(),
                    pieces: Vec::new(),
                });
            }
            (["stop", hex], Some(case)) => case.stops.push(unhex(hex).map_err(|e| at() + e)?),
            (["piece", _id, hex], Some(case)) => {
                case.pieces.push(unhex(hex).map_err(|e| at() + e)?);
            }
            (["end"], Some(_)) => cases.extend(open.take()),
            _ => return Err(format!("{}: unexpected line {line:?}", at()).into()),
        }
    }
    if open.is_some() {
        return Err(format!("{}: last case has no `end`", path.display()).into());
    }
    Ok(cases)
}

/// Decodes lowercase or uppercase hex.
fn unhex(hex: &str) -> std::result::Result<Vec<u8>, &'static str> {
    if hex.len() % 2 != 0 {
        return Err(": odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or(": not hex")
        })
        .collect()
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
