//! Turns the committed fixtures into Rust statics the firmware embeds.
//!
//! Reads `../fixtures/pieces/*.txt` (stream cases) and writes
//! `$OUT_DIR/vectors.rs`; places `memory.x` where the linker finds it.

#[path = "fixtures.rs"]
mod fixtures;

use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

use fixtures::Case;

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
