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
pub fn run(template: &Template, turn: &mut dyn Turn, start: Vec<Message>) -> Result<()> {
    let mut editor = DefaultEditor::new().context("cannot open the terminal for editing")?;
    let system: Vec<Message> = start;
    let mut messages = system.clone();
    eprintln!("talkback: chat started; /reset forgets the conversation, /exit leaves");
    loop {
        let line = match editor.readline("> ") {
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
                eprintln!("talkback: conversation reset");
                continue;
            }
            _ => {}
        }
        let _ = editor.add_history_entry(text);

        messages.push(Message::new("user", text));
        let rendered = template.render(&messages)?;
        let (reply, finish) = turn.reply(&rendered)?;
        if finish == Finish::Interrupted {
            INTERRUPTED.store(false, Ordering::Relaxed);
            eprintln!("talkback: reply interrupted");
        }
        messages.push(Message::new("assistant", &reply));
    }
}
