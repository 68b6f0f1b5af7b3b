//! The interactive chat: line editing, history, multi-turn context.
//!
//! `/reset` forgets the conversation (the system message stays), `/exit`
//! or end of input leaves. Ctrl-C while the model replies stops the reply
//! and returns to the prompt.

use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::app::Turn;
use crate::chat::{Message, Template};
use crate::generate::{Finish, INTERRUPTED};

/// Runs the read-reply loop until `/exit` or end of input.
///
/// # Errors
///
/// - the terminal cannot be read, or a turn fails to generate.
pub fn run(template: &Template<'_>, turn: &mut dyn Turn, start: Vec<Message>) -> Result<()> {
    let system: Vec<Message> = start;
    let mut messages = system.clone();
    let mut history: Vec<String> = Vec::new();
    crate::note!("talkback: chat started; /reset forgets the conversation, /exit leaves");
    loop {
        let line = match read_line(&history) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(e).context("cannot read from the terminal"),
        };
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages = system.clone();
                crate::note!("talkback: conversation reset");
                continue;
            }
            _ => {}
        }
        history.push(text.to_owned());

        messages.push(Message::new("user", text));
        let rendered = template.render(&messages)?;
        let (reply, finish) = turn.reply(&rendered)?;
        if finish == Finish::Interrupted {
            INTERRUPTED.store(false, Ordering::Relaxed);
            crate::note!("talkback: reply interrupted");
        }
        messages.push(Message::new("assistant", &reply));
    }
}

/// Reads one line with editing, offering `history` to the arrow keys.
///
/// rustyline takes over SIGINT from the moment an editor is created until
/// it is dropped, and its handler only wakes its own reader. So an editor
/// lives only while a line is read: during the model's reply the process's
/// own Ctrl-C handler is back in place and stops the reply.
fn read_line(history: &[String]) -> rustyline::Result<String> {
    let mut editor = DefaultEditor::new()?;
    for entry in history {
        editor.add_history_entry(entry.as_str())?;
    }
    editor.readline("> ")
}
