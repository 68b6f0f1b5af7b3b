//! Ctrl-C and termination requests.
//!
//! Until the model has loaded, either ends the process at once: nothing
//! has been generated, and the process may be waiting where it never looks
//! at a flag (opening a named pipe no one reads, reading a stdin that stays
//! open). Output files that opening created are removed first. From then
//! on both set [`INTERRUPTED`], which the generation loop and the prompt
//! decode look at between tokens and batches, so that a run asked to stop
//! still prints what it generated, its JSON summary and its trace; a
//! second request while the first is pending ends the process at once, as
//! the run may be stuck writing to a reader that stopped reading. Only one
//! that comes [`REPEAT_AFTER`] or more after the first counts: `timeout`
//! and a terminal may deliver one request twice, to the process and to its
//! group, microseconds apart. Ctrl-C
//! (SIGINT) exits with 130. SIGTERM, as sent by `kill`, `timeout` or a
//! service manager, also ends the interactive chat, and exits with 143; at
//! the chat's prompt nothing is in flight, so it exits at once. SIGHUP, as
//! when the terminal closes, is taken as SIGTERM is, and exits with 129;
//! SIGTERM's status wins when both come. A signal the process started
//! with ignored (`nohup`, a background job of a script) stays ignored.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::generate::INTERRUPTED;

/// The exit status of the first SIGTERM or SIGHUP that arrived, 0 before
/// one did; never cleared.
static TERMINATED: AtomicU8 = AtomicU8::new(0);

/// Set while the interactive chat waits for a line.
static AT_PROMPT: AtomicBool = AtomicBool::new(false);

/// When the pending stop request came; meaningful while [`INTERRUPTED`] is set.
static FIRST_REQUEST: Mutex<Option<Instant>> = Mutex::new(None);

/// How long after a stop request another one is taken as the same request
/// delivered twice, rather than as a second request that ends at once.
pub const REPEAT_AFTER: Duration = Duration::from_millis(500);

/// Cleared once the model has loaded (see [`defer`]).
static AT_ONCE: AtomicBool = AtomicBool::new(true);

/// Exit status of a run stopped by Ctrl-C.
const INTERRUPT_STATUS: u8 = 130;

/// Exit status of a run stopped by SIGTERM (128 + 15, as a shell reports it).
const TERMINATE_STATUS: u8 = 143;

/// Exit status of a run stopped by SIGHUP (128 + 1).
const HANGUP_STATUS: u8 = 129;

/// Installs the handlers; returns a line for each that could not be installed.
pub fn install() -> Vec<String> {
    let mut failed = Vec::new();
    let ignored = ignored_at_start();
    if !ignored.contains(&2) {
        if let Err(e) = ctrlc::set_handler(|| stop(INTERRUPT_STATUS)) {
            failed.push(format!("cannot install the Ctrl-C handler: {e}"));
        }
    }
    #[cfg(unix)]
    if let Err(e) = watch_terminate(&ignored) {
        failed.push(format!(
            "cannot install the SIGTERM and SIGHUP handler: {e}"
        ));
    }
    #[cfg(unix)]
    if let Err(e) = catch_file_size_limit(&ignored) {
        failed.push(format!("cannot install the SIGXFSZ handler: {e}"));
    }
    failed
}

/// Catches SIGXFSZ, which a write past the file size limit (`ulimit -f`)
/// raises, and whose default kills the process on the spot: caught, the
/// write fails with "File too large" instead, and the run ends as for a
/// full disk, its output printed and its files left whole.
#[cfg(unix)]
fn catch_file_size_limit(ignored: &[i32]) -> std::io::Result<()> {
    use signal_hook::consts::SIGXFSZ;
    if ignored.contains(&SIGXFSZ) {
        return Ok(());
    }
    // Only the failed write matters; the flag is never read.
    signal_hook::flag::register(SIGXFSZ, std::sync::Arc::new(AtomicBool::new(false))).map(drop)
}

/// The signals this process started with ignored, by number: a handler
/// would undo what `nohup`, or a shell starting a background job, asked.
///
/// Read from `/proc/self/status`, which needs no unsafe call; elsewhere
/// than Linux none are found, and every handler is installed.
fn ignored_at_start() -> Vec<i32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    (1..=64).filter(|&n| mask >> (n - 1) & 1 == 1).collect()
}

/// Turns each SIGTERM or SIGHUP into a stop request, on a thread of its
/// own; those in `ignored` are left alone.
#[cfg(unix)]
fn watch_terminate(ignored: &[i32]) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGTERM};
    let wanted: Vec<i32> = [SIGTERM, SIGHUP]
        .into_iter()
        .filter(|s| !ignored.contains(s))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            for signal in signals.forever() {
                let status = if signal == SIGHUP {
                    HANGUP_STATUS
                } else {
                    TERMINATE_STATUS
                };
                take_status(status);
                stop(status);
            }
        })?;
    Ok(())
}

/// Records the status a SIGTERM or SIGHUP gives the process: the first
/// one's, except that SIGTERM's replaces SIGHUP's. Both may be reported
/// at once, in signal-number order whatever order they came in, and a
/// service manager sends SIGTERM first.
fn take_status(status: u8) {
    if status == TERMINATE_STATUS {
        TERMINATED.store(status, Ordering::Relaxed);
    } else {
        let _ = TERMINATED.compare_exchange(0, status, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The status of a run whose terminal hung up: SIGHUP's, unless SIGTERM
/// came (the SIGHUP itself may come a moment after the failed write).
pub fn hung_up_status() -> u8 {
    match TERMINATED.load(Ordering::Relaxed) {
        0 => HANGUP_STATUS,
        status => status,
    }
}

/// Takes a stop request, on the thread that watches for it: ends the
/// process with `status` before the model has loaded, at the chat's
/// prompt, or when a request is already pending (the run may be stuck in
/// a write that a reader never takes), and otherwise sets [`INTERRUPTED`]
/// for the run to see.
fn stop(status: u8) {
    let pending = repeated(INTERRUPTED.swap(true, Ordering::Relaxed), Instant::now());
    #[cfg(unix)]
    if AT_PROMPT.load(Ordering::Relaxed) {
        leave_prompt(status);
    }
    if AT_ONCE.load(Ordering::Relaxed) || pending {
        crate::outfile::remove_unwritten();
        // As for a run that stops: SIGTERM's or SIGHUP's status once one came.
        exit_now(if terminated() {
            stopped_status()
        } else {
            status
        });
    }
}

/// Whether a stop request at `now` repeats a pending one (`pending`) from
/// [`REPEAT_AFTER`] or more before; records `now` as the first request
/// when none was pending.
fn repeated(pending: bool, now: Instant) -> bool {
    let Ok(mut first) = FIRST_REQUEST.lock() else {
        return pending;
    };
    match (pending, *first) {
        (true, Some(at)) => now.saturating_duration_since(at) >= REPEAT_AFTER,
        (true, None) => true,
        (false, _) => {
            *first = Some(now);
            false
        }
    }
}

/// Ends the process without running exit handlers: the main thread may be
/// in the middle of a system call or of llama.cpp's loader.
fn exit_now(status: u8) -> ! {
    #[cfg(unix)]
    {
        signal_hook::low_level::exit(i32::from(status))
    }
    #[cfg(not(unix))]
    {
        std::process::exit(i32::from(status))
    }
}

/// From now on a stop request only sets [`INTERRUPTED`]: the model has
/// loaded, and the prompt decode and the generation look at it.
pub fn defer() {
    AT_ONCE.store(false, Ordering::Relaxed);
}

/// The terminal's settings before the line editor changed them.
#[cfg(unix)]
static TERMINAL: std::sync::Mutex<Option<nix::sys::termios::Termios>> = std::sync::Mutex::new(None);

/// Ends the process from the chat's prompt, with the terminal as it was.
///
/// The main thread is inside the line editor, which has the terminal in
/// raw mode with bracketed paste on and would undo both only on its way
/// out; the process leaves with `_exit`, running no exit handlers, since
/// the main thread is still in the middle of its read.
#[cfg(unix)]
fn leave_prompt(status: u8) -> ! {
    use std::io::{IsTerminal, Write};
    if let Some(saved) = TERMINAL.lock().ok().and_then(|t| t.clone()) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &saved,
        );
        let mut out = std::io::stdout();
        if out.is_terminal() {
            // The editor's own way out: bracketed paste off, and the line
            // after the prompt ended, so the shell's prompt starts afresh.
            let _ = out.write_all(b"\x1b[?2004l\r\n");
            let _ = out.flush();
        }
    }
    signal_hook::low_level::exit(i32::from(status))
}

/// Whether SIGTERM or SIGHUP asked the process to end.
pub fn terminated() -> bool {
    TERMINATED.load(Ordering::Relaxed) != 0
}

/// Runs `read` as the chat's wait for a line, during which SIGTERM or
/// SIGHUP exits at once.
pub fn at_prompt<T>(read: impl FnOnce() -> T) -> T {
    #[cfg(unix)]
    if let Ok(mut saved) = TERMINAL.lock() {
        *saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    }
    AT_PROMPT.store(true, Ordering::Relaxed);
    if terminated() {
        std::process::exit(i32::from(stopped_status()));
    }
    let line = read();
    AT_PROMPT.store(false, Ordering::Relaxed);
    line
}

/// Takes a hang-up seen before its SIGHUP (a read from the terminal that
/// failed because it closed), so that the run ends with SIGHUP's status.
pub fn hang_up() {
    take_status(HANGUP_STATUS);
}

/// The exit status of a run that stopped on request.
pub fn stopped_status() -> u8 {
    match TERMINATED.load(Ordering::Relaxed) {
        0 => INTERRUPT_STATUS,
        status => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_s_status_wins_over_sighup_s() {
        take_status(HANGUP_STATUS);
        take_status(TERMINATE_STATUS);
        take_status(HANGUP_STATUS);
        assert_eq!(stopped_status(), TERMINATE_STATUS);
        assert_eq!(hung_up_status(), TERMINATE_STATUS);
    }

    #[test]
    fn signals_ignored_at_start_are_read_from_proc() {
        // Whatever the test process ignores, the numbers are signals.
        let ignored = ignored_at_start();
        assert!(ignored.iter().all(|&n| (1..=64).contains(&n)));
        if cfg!(target_os = "linux") {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            assert!(status.contains("SigIgn:"), "{status}");
        }
    }

    #[test]
    fn a_request_repeats_only_from_half_a_second_after_the_first() {
        let start = Instant::now();
        assert!(!repeated(false, start));
        // The same request delivered twice, as `timeout` does.
        assert!(!repeated(true, start + Duration::from_micros(40)));
        assert!(!repeated(true, start + Duration::from_millis(499)));
        assert!(repeated(true, start + REPEAT_AFTER));
        // After the run took the request (the chat clears it), a new
        // request starts its own wait.
        let later = start + Duration::from_secs(5);
        assert!(!repeated(false, later));
        assert!(!repeated(true, later + Duration::from_millis(100)));
        assert!(repeated(true, later + Duration::from_secs(1)));
    }
}
