//! Reads the fixture files the firmware replays (std only).
//!
//! Compiled twice from this one file: by `build.rs`, which turns the
//! fixtures into statics for the firmware, and by the x86-64 test, which
//! replays the same values on the host. Errors name the file and line.

use std::fs;
use std::path::{Path, PathBuf};

/// An error message naming the file and line at fault.
pub type Error = String;

/// One stream case as read from a pieces file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// Name, unique in the file.
    pub name: String,
    /// Stop strings.
    pub stops: Vec<Vec<u8>>,
    /// Token pieces, in order.
    pub pieces: Vec<Vec<u8>>,
}

/// The `*.txt` files of `dir`, sorted by name so the replay order is stable.
///
/// # Errors
///
/// - when `dir` cannot be read.
pub fn txt_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "txt") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses a pieces file: `case NAME`, `stop HEX`, `piece ID HEX`, `end`;
/// blank lines and lines starting with `#` are skipped.
///
/// # Errors
///
/// - when the file cannot be read, a line is not one of these records, a
///   record comes outside a case, or the last case has no `end`.
pub fn read_pieces(path: &Path) -> Result<Vec<Case>, Error> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cases = Vec::new();
    let mut open: Option<Case> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: &str| format!("{}:{}: {e}", path.display(), n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match (words.as_slice(), open.as_mut()) {
            ([], _) => {}
            ([first, ..], _) if first.starts_with('#') => {}
            (["case", name], None) => {
                open = Some(Case {
                    name: (*name).to_owned(),
                    stops: Vec::new(),
                    pieces: Vec::new(),
                });
            }
            (["stop", hex], Some(case)) => case.stops.push(unhex(hex).map_err(&at)?),
            (["piece", _id, hex], Some(case)) => case.pieces.push(unhex(hex).map_err(&at)?),
            (["end"], Some(_)) => cases.extend(open.take()),
            _ => return Err(at(&format!("unexpected line {line:?}"))),
        }
    }
    if open.is_some() {
        return Err(format!("{}: the last case has no `end`", path.display()));
    }
    Ok(cases)
}

/// Decodes hex digits, two per byte.
///
/// # Errors
///
/// - on an odd count or a character that is not a hex digit.
pub fn unhex(hex: &str) -> Result<Vec<u8>, &'static str> {
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or("not hex")
        })
        .collect()
}
