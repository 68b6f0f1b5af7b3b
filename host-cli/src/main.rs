//! `talkback`: chat and completion with GGUF models, sampled by sampler-core.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use talkback::{app, cli, output, signals};

fn main() -> ExitCode {
    // The largest stack that can be reserved (see `talkback::stack`).
    let mut refused = None;
    for size in talkback::stack::candidates() {
        let worker = std::thread::Builder::new()
            .name("talkback".into())
            .stack_size(size)
            .spawn(move || {
                talkback::stack::set(size);
                run()
            });
        match worker {
            // A panic has already been reported on stderr; 101 is what Rust
            // exits with after one on the main thread.
            Ok(handle) => return handle.join().unwrap_or(ExitCode::from(101)),
            Err(e) => refused = Some(e),
        }
    }
    let why = refused.map_or_else(String::new, |e| format!(": {e}"));
    talkback::note!(
        "talkback: cannot start a thread, even with a stack of {} MiB{why}{}",
        talkback::stack::SMALLEST >> 20,
        talkback::stack::address_space_note()
    );
    ExitCode::FAILURE
}

fn run() -> ExitCode {
    let parsed = cli::Cli::command()
        .try_get_matches()
        .and_then(|m| cli::Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // `args()` panics on an argument that is not UTF-8; clap has
            // already said what is wrong with it, the lossy form only finds
            // the subcommand.
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let e = cli::explain_unknown(&e, &args).unwrap_or(e);
            if e.use_stderr() {
                // A value quoted in the error is written on one line, as in
                // every other error, and a line of thousands of characters
                // (a value quoted twice) is cut; either gives up clap's
                // colours for that error only.
                let mut text = e.render().to_string();
                for arg in &args {
                    let shown = output::one_line(arg);
                    if shown != *arg {
                        text = text.replace(arg.as_str(), &shown);
                    }
                }
                let long = |l: &str| l.chars().count() > output::MAX_ERROR_CHARS;
                if text != e.render().to_string() || text.lines().any(long) {
                    for line in text.lines() {
                        talkback::note!("{}", output::cut_line(line.to_owned()));
                    }
                } else {
                    let _ = e.print();
                }
                return ExitCode::from(2);
            }
            let printed = e.print();
            // Help and version go to stdout: a reader that left early is
            // fine, a stdout that cannot take them is a failure.
            return match printed {
                Err(why) if why.kind() != std::io::ErrorKind::BrokenPipe => {
                    talkback::note!("talkback: cannot write to stdout: {why}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            };
        }
    };
    if let Err(e) = cli::check_stage_flags(&matches) {
        talkback::note!("talkback: {e}");
        return ExitCode::from(2);
    }
    output::remember_terminal();
    init_logging(cli.verbose);
    talkback::abort::install();
    for failed in signals::install() {
        talkback::note!("talkback: {failed}");
    }

    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A terminal that hung up ends the run as SIGHUP does.
        Err(e) if output::is_stdout_closed(&e) && output::hung_up() => {
            ExitCode::from(signals::hung_up_status())
        }
        Err(e) if output::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) if e.is::<app::Interrupted>() => ExitCode::from(signals::stopped_status()),
        // One line, whatever a file name in it holds, of a bounded length.
        Err(e) if e.is::<app::Usage>() => {
            talkback::note!("talkback: {}", output::error_line(&format!("{e:#}")));
            ExitCode::from(2)
        }
        Err(e) => {
            talkback::note!("talkback: {}", output::error_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Its own report of a failed write goes through `eprintln!`, which
        // panics when stderr is what failed.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in a log file or a
        // pipe they are noise around every line.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
