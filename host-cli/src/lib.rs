//! The `talkback` command's modules, as a library so that tests can drive
//! the generation loop in-process; `main.rs` only parses and dispatches.

/// Writes one line to stderr like `eprintln!`, but never panics.
///
/// `eprintln!` panics when stderr cannot be written (a closed pipe, a full
/// disk), which turned a run that had succeeded into a crash with exit 101.
/// A diagnostic that cannot be shown is dropped instead.
///
/// The line goes out in one write: stderr is unbuffered, and `writeln!`
/// writes each piece of the format on its own, so a reader (a terminal, a
/// log collector, another process writing to the same file) could see half
/// a line.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let mut line = ::std::format!($($arg)*);
        line.push('\n');
        let _ = ::std::io::stderr().write_all(line.as_bytes());
    }};
}

pub mod abort;
pub mod app;
pub mod chat;
pub mod cli;
pub mod generate;
pub mod gguf;
pub mod infile;
pub mod model;
pub mod outfile;
pub mod output;
pub mod plot;
pub mod repl;
pub mod settings;
pub mod shape;
pub mod signals;
pub mod stack;
pub mod trace;
