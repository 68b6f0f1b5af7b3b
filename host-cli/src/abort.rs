//! llama.cpp's failed internal checks, reported as errors.
//!
//! llama.cpp checks much of a model only as it uses it, with `GGML_ASSERT`,
//! which aborts the process (status 134) after printing the failed
//! condition and, where gdb is installed, a backtrace that gdb writes to
//! stdout, into the middle of the output. The walk of the file in
//! [`crate::gguf`] refuses the faults known to reach such a check first;
//! this catches the others: the check is reported on stderr as one line,
//! the output files the run created are removed, and the process exits
//! with status 1 without going on.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::infile::named;

/// Set by the first failed check; worker threads may fail theirs at once.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// The model being loaded or run, for the message.
static MODEL: OnceLock<String> = OnceLock::new();

/// Routes llama.cpp's failed checks to `on_abort`.
#[allow(unsafe_code)]
pub fn install() {
    // SAFETY: the call only stores the function pointer in a global that
    // ggml reads when a check fails; `on_abort` has the signature ggml
    // expects and neither unwinds nor returns.
    unsafe {
        llama_cpp_sys_2::ggml_set_abort_callback(Some(on_abort));
    }
}

/// Names `model` in the message of a failed check.
pub fn set_model(model: &std::path::Path) {
    let _ = MODEL.set(crate::output::one_line(&named(model).to_string()));
}

/// The line that reports a failed check whose message is `what`.
fn report(what: &str, model: Option<&str>) -> String {
    // ggml's message starts with the source file's full path, and an
    // assertion reads `GGML_ASSERT(condition) failed`: the condition is
    // what failed to hold.
    let what = what.trim();
    let what = match what.find(": ") {
        Some(at) => {
            let (file, rest) = what.split_at(at);
            let file = file.rsplit('/').next().unwrap_or(file);
            let rest = rest
                .strip_prefix(": GGML_ASSERT(")
                .and_then(|r| r.strip_suffix(") failed"))
                .map_or_else(|| rest.to_owned(), |cond| format!(": {cond} does not hold"));
            format!("{file}{rest}")
        }
        None => what.to_owned(),
    };
    let model = model.map_or_else(|| "the model".to_owned(), |m| format!("model {m}"));
    let what = crate::output::one_line(&what);
    format!(
        "talkback: llama.cpp stopped on a failed check ({what}); {model} is corrupt or \
         uses something this build of llama.cpp does not support"
    )
}

#[allow(unsafe_code)]
extern "C" fn on_abort(message: *const c_char) {
    if REPORTED.swap(true, Ordering::SeqCst) {
        // Another thread is reporting and ending the process: one line,
        // and this thread goes no further into llama.cpp meanwhile.
        loop {
            std::thread::park();
        }
    }
    let what = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes a NUL-terminated buffer of its own that
        // lives until this call ends, and never a dangling pointer.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    };
    let line = report(&what, MODEL.get().map(String::as_str));
    crate::note!("{line}");
    crate::outfile::remove_unwritten();
    // Not a normal exit: other threads may be inside llama.cpp, whose
    // state no exit handler should see.
    #[cfg(unix)]
    signal_hook::low_level::exit(1);
    #[cfg(not(unix))]
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_file_line_check_and_model() {
        let line = report(
            "/build/llama.cpp/src/llama-model.cpp:1422: GGML_ASSERT(x > 0) failed\n",
            Some("m.gguf"),
        );
        assert_eq!(
            line,
            "talkback: llama.cpp stopped on a failed check (llama-model.cpp:1422: \
             x > 0 does not hold); model m.gguf is corrupt or uses something this \
             build of llama.cpp does not support"
        );
        assert!(report("odd", None).contains("(odd); the model is corrupt"));
        let aborted = report("/x/ggml.c:9: fatal error", None);
        assert!(aborted.contains("(ggml.c:9: fatal error);"), "{aborted}");
    }
}
