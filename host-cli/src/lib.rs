//! The `talkback` command's modules, as a library so that tests can drive
//! the generation loop in-process; `main.rs` only parses and dispatches.

pub mod app;
pub mod chat;
pub mod cli;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod output;
pub mod plot;
pub mod repl;
pub mod settings;
pub mod shape;
pub mod trace;
