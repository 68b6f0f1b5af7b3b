//! The interactive chat: line editing, history, multi-turn context.
//!
//! `/reset` forgets the conversation (the system message stays), `/exit`,
//! `/quit` or end of input leaves, `/help` lists the commands. Any other
//! line of a single `/word` is an unknown command and is not sent. Ctrl-C
//! while the model replies stops the reply and returns to the prompt; at
//! the prompt it clears the line. A message that would not fit in the
//! context with the conversation before it is not sent.

use std::sync::atomic::Ordering;

use anyhow::{anyhow, Result};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::app::Turn;
use crate::chat::{Message, Template};
use crate::generate::{Finish, INTERRUPTED};
use crate::model::{PromptTooLarge, PromptTooLong};
use crate::output::error_line;

/// What `/help` prints.
const HELP: &str = "\
talkback: commands:
  /reset        forget the conversation (the system message stays)
  /exit, /quit  leave (as Ctrl-D at an empty prompt does)
  /help         show this list
Ctrl-C stops a reply; at the prompt it clears the line.";

/// One line typed at the prompt.
#[derive(Debug, PartialEq, Eq)]
enum Input<'a> {
    /// Nothing but blanks.
    Empty,
    /// `/exit` or `/quit`.
    Exit,
    /// `/reset`.
    Reset,
    /// `/help`.
    Help,
    /// A single `/word` that names no command.
    Unknown(&'a str),
    /// Text for the model, trimmed.
    Message(&'a str),
}

impl<'a> Input<'a> {
    /// Reads a line as a command or a message.
    fn of(line: &'a str) -> Self {
        // A byte-order mark pasted from a file is no text, as in files.
        let text = line.trim().trim_start_matches('\u{feff}').trim_start();
        match text {
            "" => Self::Empty,
            "/exit" | "/quit" => Self::Exit,
            "/reset" => Self::Reset,
            "/help" => Self::Help,
            // A mistyped command would otherwise reach the model as a
            // message; a path such as /etc/hosts or a sentence that starts
            // with a slash still does.
            _ if is_command_word(text) => Self::Unknown(text),
            _ => Self::Message(text),
        }
    }
}

/// Whether `text` is `/` and a word of letters, digits, `-` or `_`.
fn is_command_word(text: &str) -> bool {
    text.strip_prefix('/').is_some_and(|word| {
        word.starts_with(|c: char| c.is_ascii_alphabetic())
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Runs the read-reply loop until `/exit` or end of input.
///
/// # Errors
///
/// - the terminal cannot be read, or a turn fails to generate.
pub fn run(template: &Template<'_>, turn: &mut dyn Turn, start: Vec<Message>) -> Result<()> {
    let system: Vec<Message> = start;
    let mut messages = system.clone();
    let mut history: Vec<String> = Vec::new();
    crate::note!("talkback: chat started; /help lists the commands, /exit leaves");
    loop {
        let line = match crate::signals::at_prompt(|| read_line(&history)) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                // A byte that is not UTF-8 (a terminal in another encoding)
                // stops the read mid-line; what follows it must not become a
                // message of its own.
                discard_typed_input();
                crate::note!(
                    "talkback: the line was not valid UTF-8 and was dropped; type it again"
                );
                continue;
            }
            Err(e) if hung_up(&e) => {
                // The terminal closed: its SIGHUP may come a moment after
                // the failed read, and the chat ends as it would on it.
                crate::signals::hang_up();
                return Err(crate::app::Interrupted.into());
            }
            // Its own text only: as a source it would be printed twice.
            Err(e) => return Err(anyhow!("cannot read from the terminal: {e}")),
        };
        let text = match Input::of(&line) {
            Input::Empty => continue,
            Input::Exit => return Ok(()),
            Input::Reset => {
                messages = system.clone();
                crate::note!("talkback: conversation reset");
                continue;
            }
            Input::Help => {
                crate::note!("{HELP}");
                continue;
            }
            Input::Unknown(word) => {
                crate::note!(
                    "talkback: {}",
                    error_line(&format!("unknown command {word} (try /help)"))
                );
                continue;
            }
            Input::Message(text) => text,
        };
        history.push(text.to_owned());

        messages.push(Message::new("user", text));
        let rendered = match template.render(&messages) {
            Ok(rendered) => rendered,
            Err(e) => {
                // The template refused this conversation (it raised, or it
                // rewrites the text): the message is not sent, and the
                // conversation before it stands. A Ctrl-C meanwhile was for
                // this message only.
                INTERRUPTED.store(false, Ordering::Relaxed);
                messages.pop();
                crate::note!(
                    "talkback: {}",
                    error_line(&format!("{e:#}; the message was not sent"))
                );
                continue;
            }
        };
        let (reply, finish) = match turn.reply(&rendered) {
            Ok(done) => done,
            Err(e) if e.chain().any(|c| c.is::<crate::chat::Unsendable>()) => {
                INTERRUPTED.store(false, Ordering::Relaxed);
                messages.pop();
                crate::note!("talkback: {}", error_line(&format!("{e:#}")));
                continue;
            }
            Err(e) => {
                // A conversation that has outgrown the context ends no
                // session: the message is not sent, and the user can
                // /reset or leave.
                if let Some(large) = e.chain().find_map(|c| c.downcast_ref::<PromptTooLarge>()) {
                    INTERRUPTED.store(false, Ordering::Relaxed);
                    messages.pop();
                    crate::note!("talkback: {large}; it was not sent");
                    continue;
                }
                let Some(full) = e.chain().find_map(|c| c.downcast_ref::<PromptTooLong>()) else {
                    return Err(e);
                };
                INTERRUPTED.store(false, Ordering::Relaxed);
                messages.pop();
                crate::note!(
                    "talkback: the conversation is {} tokens with this message, more than \
                     the context of {}; it was not sent (/reset to start over)",
                    full.count(),
                    full.n_ctx
                );
                continue;
            }
        };
        if finish == Finish::Interrupted {
            if crate::signals::terminated() {
                // Asked to end, not only to stop this reply.
                return Err(crate::app::Interrupted.into());
            }
            INTERRUPTED.store(false, Ordering::Relaxed);
            if reply.is_empty() {
                // Stopped before any of the reply showed (while the
                // message was being read, say): taken back, as if it had
                // not been sent, rather than left unanswered in the
                // conversation.
                messages.pop();
                crate::note!(
                    "talkback: reply interrupted before it began; the message was taken back"
                );
                continue;
            }
            crate::note!("talkback: reply interrupted");
        }
        messages.push(Message::new("assistant", &reply));
    }
}

/// Points stdout at the terminal that stdin reads while it lives.
///
/// Only when stdout was sent elsewhere (`chat > log.txt`, `| tee
/// log.txt`): the line editor draws its prompt and echoes the keys on
/// stdout, and they belong on the terminal where they are typed, not in
/// the output with the replies. The terminal is the one stdin names,
/// which need not be the process's controlling terminal (it may have
/// none).
struct PromptScreen {
    /// The real stdout, put back when dropped.
    #[cfg(unix)]
    saved: Option<std::os::fd::OwnedFd>,
}

impl PromptScreen {
    fn take() -> Self {
        #[cfg(unix)]
        {
            Self {
                saved: Self::swap().ok().flatten(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Points stdout at stdin's terminal; returns the real stdout, or
    /// `None` when there is nothing to do.
    #[cfg(unix)]
    fn swap() -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        use std::io::{IsTerminal as _, Write as _};
        let out = std::io::stdout();
        if out.is_terminal() || !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        out.lock().flush()?;
        let terminal = Self::terminal()?;
        let saved = nix::unistd::dup(&out)?;
        nix::unistd::dup2_stdout(&terminal)?;
        Ok(Some(saved))
    }

    /// stdin's terminal, open for writing.
    ///
    /// That is stdin itself when it is open for reading and writing, as a
    /// shell opens a terminal; else the terminal it names, opened again;
    /// else the controlling terminal, if it is the same one (a terminal
    /// owned by another user may refuse to open by name).
    ///
    /// # Errors
    ///
    /// - none of the three can be had.
    #[cfg(unix)]
    fn terminal() -> std::io::Result<std::os::fd::OwnedFd> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::unix::fs::OpenOptionsExt as _;
        let stdin = std::io::stdin();
        let flags = fcntl(&stdin, FcntlArg::F_GETFL)?;
        if OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDWR {
            return Ok(nix::unistd::dup(&stdin)?);
        }
        let open = |path: &std::path::Path| {
            std::fs::File::options()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_NOCTTY)
                .open(path)
        };
        let by_name = nix::unistd::ttyname(&stdin)
            .map_err(std::io::Error::from)
            .and_then(|name| open(&name));
        let terminal = match by_name {
            Ok(file) => file,
            Err(e) => {
                let controlling = open(std::path::Path::new("/dev/tty")).map_err(|_| e)?;
                let same = nix::sys::stat::fstat(&controlling)?.st_rdev
                    == nix::sys::stat::fstat(&stdin)?.st_rdev;
                if !same {
                    return Err(std::io::ErrorKind::NotFound.into());
                }
                controlling
            }
        };
        Ok(terminal.into())
    }
}

impl Drop for PromptScreen {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = self.saved.take() {
            use std::io::Write as _;
            let _ = std::io::stdout().lock().flush();
            let _ = nix::unistd::dup2_stdout(&saved);
        }
    }
}

/// Whether a failed read means the terminal has gone.
///
/// A read from a terminal that hung up fails with EIO.
fn hung_up(e: &ReadlineError) -> bool {
    #[cfg(unix)]
    {
        let eio = nix::errno::Errno::EIO;
        match e {
            ReadlineError::Errno(errno) => *errno == eio,
            ReadlineError::Io(io) => io.raw_os_error() == Some(eio as i32),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Drops what was typed at the terminal and not read yet.
fn discard_typed_input() {
    #[cfg(unix)]
    {
        use nix::sys::termios::{tcflush, FlushArg};
        // Not a terminal after all: there is no typed input to drop.
        let _ = tcflush(std::io::stdin(), FlushArg::TCIFLUSH);
    }
}

/// Reads one line with editing, offering `history` to the arrow keys.
///
/// rustyline takes over SIGINT from the moment an editor is created until
/// it is dropped, and its handler only wakes its own reader. So an editor
/// lives only while a line is read: during the model's reply the process's
/// own Ctrl-C handler is back in place and stops the reply.
fn read_line(history: &[String]) -> rustyline::Result<String> {
    #[cfg(unix)]
    if let Err(nix::errno::Errno::EIO) = nix::sys::termios::tcgetattr(std::io::stdin()) {
        // The terminal closed during the reply, its SIGHUP ignored or
        // not yet taken: the editor would read it as an empty file.
        return Err(ReadlineError::Errno(nix::errno::Errno::EIO));
    }
    let _screen = PromptScreen::take();
    let mut editor = DefaultEditor::new()?;
    for entry in history {
        editor.add_history_entry(entry.as_str())?;
    }
    editor.readline("> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_and_the_rest_is_sent() {
        assert_eq!(Input::of("  "), Input::Empty);
        assert_eq!(Input::of("/exit"), Input::Exit);
        assert_eq!(Input::of(" /quit "), Input::Exit);
        assert_eq!(Input::of("/reset"), Input::Reset);
        assert_eq!(Input::of("/help\n"), Input::Help);
        assert_eq!(Input::of("/x"), Input::Unknown("/x"));
        assert_eq!(Input::of("/clear-all"), Input::Unknown("/clear-all"));
        assert_eq!(Input::of("\u{feff}"), Input::Empty);
        assert_eq!(Input::of("\u{feff}/exit\n"), Input::Exit);
        assert_eq!(Input::of(" \u{feff} Hi"), Input::Message("Hi"));
        assert_eq!(Input::of("a\u{feff}"), Input::Message("a\u{feff}"));
        for text in ["/etc/hosts", "/ x", "/help me", "/", "/2", "hello /x"] {
            assert_eq!(Input::of(text), Input::Message(text), "{text}");
        }
    }

    #[test]
    fn help_names_every_command() {
        for command in ["/reset", "/exit", "/quit", "/help"] {
            assert!(HELP.contains(command), "{command}");
        }
    }
}
