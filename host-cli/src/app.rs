//! The subcommands: chat (one-shot and interactive), raw completion, replay.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, bail, Context as _, Result};
use llama_cpp_2::token::LlamaToken;

use crate::chat::{self, Message, Rendered, Template};
use crate::cli::{
    ChatArgs, Cli, Command, CompleteArgs, Format, GenerationArgs, ModelArgs, PlotArgs, ReplayArgs,
    ShapeArgs, ShapeFormat,
};
use crate::generate::{Engine, Finish, Generator, Outcome, Request, Sink, Step, INTERRUPTED};
use crate::infile::{named, shown};
use crate::model::{resolve_path, ContextTooLong, Model, PromptTooLarge, PromptTooLong, Session};
use crate::outfile::ReservedFile;
use crate::output::{many, summary, CollectSink, JsonlSink, TextSink};
use crate::settings::{number, Settings};
use crate::trace::{self, Prompt, Trace, TraceFile};

/// How many alternatives a JSON-lines token event lists.
const ALTERNATIVES: usize = 5;

/// What `chat` can do for a model without a chat template.
const CHAT_WITHOUT_TEMPLATE: &str = "use `complete`, or give one with --chat-template FILE";

/// What `shape --chat` and `plot --chat` can do instead, as they take no
/// template file.
const WITHOUT_CHAT_FLAG: &str = "leave out --chat to give the prompt as raw text";

/// Ctrl-C or SIGTERM ended the run; the process exits with 130 or 143.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Flags that parse one by one but not together; the process exits with 2.
#[derive(Debug)]
pub struct Usage(Cow<'static, str>);

impl Usage {
    fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Runs the parsed command line.
///
/// # Errors
///
/// - anything that stops the command from completing; [`Interrupted`] for Ctrl-C or SIGTERM;
///   [`Usage`] for flags that cannot be used together.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Chat(args) => chat_command(&args, cli.verbose),
        Command::Complete(args) => complete_command(&args, cli.verbose),
        Command::Replay(args) => replay_command(&args, cli.verbose),
        Command::Plot(args) => plot_command(&args, cli.verbose),
        Command::Shape(args) => shape_command(&args, cli.verbose),
    }
}

/// Reads all of stdin as UTF-8 text: the `what` (message or prompt) it
/// holds, without a leading byte-order mark, as for input files.
fn read_stdin(what: &str) -> Result<String> {
    let mut bytes = crate::infile::read_bounded(io::stdin(), crate::infile::MAX_TEXT)
        .with_context(|| format!("cannot read the {what} from stdin"))?;
    let bom = bytes.len() - crate::infile::without_bom(&bytes).len();
    // A usage error, as the same text given as an argument is.
    String::from_utf8(bytes.split_off(bom)).map_err(|e| {
        Usage::new(format!(
            "the {what} on stdin is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to() + bom
        ))
        .into()
    })
}

/// Loads the model, then stops if Ctrl-C or SIGTERM came meanwhile; from
/// then on they stop the run instead of ending the process at once.
pub fn load(args: &ModelArgs, verbose: u8) -> Result<Model> {
    let model = Model::load(args, verbose)?;
    crate::signals::defer();
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    if verbose > 0 {
        crate::note!(
            "talkback: model {} ({} tokens in vocabulary)",
            crate::output::one_line(&named(model.path()).to_string()),
            model.vocab_size()
        );
    }
    Ok(model)
}

/// [`load`], and with `traced` the file's SHA-256 taken at once, so that
/// the trace names the weights in use even if the file is written to later.
/// Warns of each of `stops` that only a control token spells.
fn load_for(args: &ModelArgs, verbose: u8, traced: bool, stops: &[String]) -> Result<Model> {
    let model = load(args, verbose)?;
    if traced {
        model.sha256()?;
    }
    for (i, stop) in stops.iter().enumerate() {
        if stops.get(..i).is_some_and(|before| before.contains(stop)) {
            continue;
        }
        if let Some((id, text)) = model.unprinted_token(stop)? {
            let line = format!(
                "warning: --stop {stop:?} never matches where the model generates token {id} \
                 ({text:?}), a control token that prints nothing: stop strings see only \
                 printed text (end-of-generation tokens stop the run themselves, unless \
                 --ignore-eos)"
            );
            crate::note!("talkback: {}", crate::output::error_line(&line));
        }
    }
    Ok(model)
}

/// The request a run's settings describe.
fn request<'s>(settings: &'s Settings, alternatives: usize) -> Result<Request<'s>> {
    Ok(Request {
        config: settings.config()?,
        seed: settings.seed,
        n_predict: settings.n_predict,
        stops: &settings.stops,
        ignore_eos: settings.ignore_eos,
        repeat_last_n: settings.repeat_last_n as usize,
        alternatives,
        engine: settings.sampler,
    })
}

/// Runs one prompt and prints it in `format`; returns the outcome and the
/// text that was released.
fn generate(
    model: &Model,
    generator: &mut Generator,
    session: &mut Session<'_>,
    prompt: &[LlamaToken],
    settings: &Settings,
    format: Format,
    save: impl FnOnce(&Outcome, &[u8]) -> Result<()>,
) -> Result<(Outcome, Vec<u8>)> {
    let alternatives = if format == Format::Jsonl {
        ALTERNATIVES
    } else {
        0
    };
    let req = request(settings, alternatives)?;
    let stdout = crate::output::stdout();
    // A step that fails ends the run with what it generated so far printed
    // in every format (in JSON, with `finish_reason` `error`), no trace,
    // and then the error.
    match format {
        Format::Text => {
            let mut sink = TeeSink {
                inner: TextSink::new(stdout),
                text: Vec::with_capacity(req.text_bound(model, session.n_ctx())),
            };
            let (outcome, failure) =
                generator.run_partial(model, session, prompt, &req, &mut sink)?;
            if let Some(e) = failure {
                // The error goes on a line of its own, as after Ctrl-C.
                let open_line = sink.text.last().is_some_and(|&b| b != b'\n');
                if open_line && io::stdout().is_terminal() {
                    let mut out = crate::output::stdout();
                    let _ = writeln!(out).and_then(|()| out.flush());
                }
                return Err(e);
            }
            saved(save, &outcome, &sink.text)??;
            Ok((outcome, sink.text))
        }
        Format::Json => {
            let mut sink = CollectSink::new(model, &req, session.n_ctx());
            let (outcome, failure) =
                generator.run_partial(model, session, prompt, &req, &mut sink)?;
            let traced = match failure {
                Some(_) => Ok(()),
                None => saved(save, &outcome, &sink.text)?,
            };
            let mut out = stdout;
            let printed = writeln!(out, "{}", summary(&sink.text, &outcome, settings, false))
                .and_then(|()| out.flush());
            failure.map_or(Ok(()), Err)?;
            // A trace that could not be written outranks a reader that
            // left, which would exit 0.
            traced?;
            printed?;
            Ok((outcome, sink.text))
        }
        Format::Jsonl => {
            let mut sink = JsonlSink::new(stdout, model, &req, session.n_ctx());
            let (outcome, failure) =
                generator.run_partial(model, session, prompt, &req, &mut sink)?;
            let traced = match failure {
                Some(_) => Ok(()),
                None => saved(save, &outcome, &sink.text)?,
            };
            let text = std::mem::take(&mut sink.text);
            let printed = sink.finish(summary(&text, &outcome, settings, true));
            failure.map_or(Ok(()), Err)?;
            traced?;
            printed?;
            Ok((outcome, text))
        }
    }
}

/// Runs `save` (which writes the trace) on a finished run, before the
/// summary, so that a reader of the summary finds the trace written.
///
/// Returns the trace's own result to report after the summary: the run's
/// output is printed whole even when its trace cannot be written, as it
/// is in text, where it was streamed before.
///
/// # Errors
///
/// - the run ended because stdout's reader left, which exits 0 quietly.
fn saved(
    save: impl FnOnce(&Outcome, &[u8]) -> Result<()>,
    outcome: &Outcome,
    text: &[u8],
) -> Result<Result<()>> {
    let traced = save(outcome, text);
    if outcome.stdout_closed {
        traced?;
        return Err(crate::output::stdout_closed().into());
    }
    Ok(traced)
}

/// Streams text and keeps a copy, so a chat can remember the reply.
struct TeeSink<S> {
    inner: S,
    text: Vec<u8>,
}

impl<S: Sink> Sink for TeeSink<S> {
    fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.text.extend_from_slice(bytes);
        self.inner.text(bytes)
    }

    fn token(&mut self, step: &Step<'_>) -> io::Result<()> {
        self.inner.token(step)
    }

    fn statistics(&self) -> bool {
        self.inner.statistics()
    }
}

/// Refuses a chat message of nothing but blanks, or an empty raw prompt,
/// before loading anything; `chat` tells which of the two `prompt` is.
fn check_prompt(prompt: &str, chat: bool) -> Result<()> {
    if chat && prompt.trim().is_empty() {
        return Err(Usage::new("the message is empty: give some text to send").into());
    }
    if prompt.is_empty() {
        return Err(Usage::new("the prompt is empty: nothing to continue from").into());
    }
    Ok(())
}

/// Checks the turns of a `--messages` file: their roles (see
/// [`check_roles`]), and that none is empty, as an empty prompt is refused.
fn check_messages(messages: &[Message]) -> Result<()> {
    check_roles(messages)?;
    for (i, m) in messages.iter().enumerate() {
        if m.content.trim().is_empty() {
            bail!("turn {} ({}) is empty", i + 1, m.role);
        }
    }
    Ok(())
}

/// Checks that every role is a name (`user`, `assistant`, `system`,
/// `tool`, ...).
///
/// The template writes the role into the prompt as it stands, and the
/// prompt is read with control tokens parsed, so a role such as
/// `<|im_start|>` would inject one: user text is only kept apart inside
/// message content.
fn check_roles(messages: &[Message]) -> Result<()> {
    let name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    for (i, m) in messages.iter().enumerate() {
        if m.role.is_empty() || m.role.len() > 64 || !m.role.chars().all(name) {
            bail!(
                "turn {} has the role {:?}; a role is a name of at most 64 letters, \
                 digits, '-' or '_', such as user or assistant",
                i + 1,
                m.role
            );
        }
    }
    Ok(())
}

/// Checks flags that only make sense together, before loading anything.
fn check_generation(gen: &GenerationArgs, settings: &Settings) -> Result<()> {
    settings
        .check()
        .map_err(|e| e.context(Usage::new("invalid settings")))?;
    if settings.sampler == Engine::LlamaCpp && gen.trace.is_some() {
        return Err(Usage::new(
            "--trace needs --sampler talkback: llama.cpp's sampler cannot be replayed",
        )
        .into());
    }
    Ok(())
}

/// The flag among `inputs` whose path is `-` (stdin), if any.
///
/// # Errors
///
/// - more than one of them is `-`: stdin can be read only once.
fn stdin_input<'f>(inputs: &[(&'f str, Option<&Path>)]) -> Result<Option<&'f str>> {
    let mut dashes = inputs
        .iter()
        .filter(|(_, p)| p.is_some_and(crate::infile::is_stdin))
        .map(|&(flag, _)| flag);
    match (dashes.next(), dashes.next()) {
        (Some(a), Some(b)) => Err(Usage::new(format!(
            "{a} and {b} both name stdin (`-`), which can be read only once"
        ))
        .into()),
        (first, _) => Ok(first),
    }
}

/// Refuses a `--trace` or `--dump-logits` file that is the model, one of
/// `inputs`, or the other output, before anything is opened or loaded.
fn check_outputs(gen: &GenerationArgs, model: &ModelArgs, inputs: &[(&str, &Path)]) -> Result<()> {
    let model = resolve_path(model.model.as_deref());
    let mut read = vec![("the model", model.as_path())];
    // Stdin itself is checked apart, whatever names it.
    read.extend(inputs.iter().filter(|(_, p)| !crate::infile::is_stdin(p)));
    let mut written = Vec::new();
    if let Some(path) = &gen.trace {
        written.push(("--trace", path.as_path()));
    }
    if let Some(path) = &gen.dump_logits {
        written.push(("--dump-logits", path.as_path()));
    }
    if let Some((flag, _)) = written.iter().find(|(_, p)| p.as_os_str() == "-") {
        // Elsewhere `-` means stdout, which carries the generated text here.
        return Err(Usage::new(format!(
            "{flag} takes a file path, and stdout carries the generated text; for a file \
             named `-`, write ./-"
        ))
        .into());
    }
    crate::outfile::check_distinct(&written, &read).map_err(|e| Usage::new(e.to_string()).into())
}

/// Opens the `--dump-logits` file, if any, before the model loads, so that
/// a path that cannot be written fails first.
fn dump_file(gen: &GenerationArgs) -> Result<Option<ReservedFile>> {
    gen.dump_logits
        .as_deref()
        .map(|path| ReservedFile::open(path, "logits dump"))
        .transpose()
}

/// A generator for `model`, dumping logits into `dump` when given; the
/// file is emptied at the first step's logits, not before.
fn generator(model: &Model, dump: Option<ReservedFile>) -> Generator {
    let mut generator = Generator::new(model);
    if let Some(dump) = dump {
        let path = dump.path().to_path_buf();
        generator.dump_logits(Box::new(crate::outfile::LazyStream::new(dump)), &path);
    }
    generator
}

/// Ends the output line, reports the finish on stderr, maps Ctrl-C to 130.
fn report_finish(outcome: &Outcome, format: Format, verbose: u8) -> Result<()> {
    if format == Format::Text && io::stdout().is_terminal() {
        let mut out = crate::output::stdout();
        writeln!(out)?;
        out.flush()?;
    }
    if verbose > 0 || outcome.finish == Finish::ContextFull {
        note_finish(outcome);
    }
    if outcome.finish == Finish::Interrupted {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Prints how a run finished, with its counts and speed, on stderr.
fn note_finish(outcome: &Outcome) {
    let t = outcome.timings;
    let speed = t
        .tokens_per_second()
        .map(|r| format!(", {r:.1} tokens/s"))
        .unwrap_or_default();
    crate::note!(
        "talkback: finished: {} ({}, {} generated{speed}, sampling {:.3} ms)",
        outcome.finish.as_str().replace('_', " "),
        counted(outcome.prompt_tokens, "prompt"),
        outcome.tokens.len(),
        t.sampling.as_secs_f64() * 1e3,
    );
}

fn ids(tokens: &[LlamaToken]) -> Vec<u32> {
    tokens
        .iter()
        .map(|t| u32::try_from(t.0).unwrap_or(u32::MAX))
        .collect()
}

fn save_trace(
    out: TraceFile,
    model: &Model,
    prompt: Prompt,
    tokens: &[LlamaToken],
    settings: &Settings,
    outcome: &Outcome,
    text: &[u8],
) -> Result<()> {
    let sha = model.sha256()?.to_owned();
    Trace::new(
        model.path(),
        sha,
        prompt,
        ids(tokens),
        settings.clone(),
        outcome,
        text,
    )
    .save(out)
}

/// Reads and compiles the `--chat-template` file, if any, before the model
/// loads: the read may wait (a named pipe) and compiling a deeply nested
/// template takes seconds, and until the model loads a signal ends the run.
fn chat_template_file(args: &ChatArgs) -> Result<Option<Template<'static>>> {
    args.chat_template
        .as_deref()
        .map(|path| {
            let source = crate::infile::read_text(path, crate::infile::MAX_TEXT)
                .with_context(|| format!("cannot read chat template {}", shown(path)))?;
            Template::new(&source, String::new(), String::new())
                .map(|t| t.with_file(shown(path).to_string()))
                .with_context(|| format!("chat template {}", shown(path)))
        })
        .transpose()
}

/// The `--chat-template` file's template given the model's BOS and EOS
/// texts, or the model's own.
fn chat_template<'m>(file: Option<Template<'static>>, model: &'m Model) -> Result<Template<'m>> {
    match file {
        Some(mut template) => {
            template.set_tokens(
                model.bos_text().unwrap_or_default(),
                model.eos_text().unwrap_or_default(),
            );
            Ok(template)
        }
        None => Template::from_model(model, CHAT_WITHOUT_TEMPLATE),
    }
}

fn chat_command(args: &ChatArgs, verbose: u8) -> Result<()> {
    let gen = &args.generation;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        if system.trim().is_empty() {
            return Err(Usage::new("--system is empty: give the system turn's text").into());
        }
        messages.push(Message::new("system", system));
    }
    let from_stdin = stdin_input(&[
        ("--messages", args.messages.as_deref()),
        ("--chat-template", args.chat_template.as_deref()),
    ])?;
    if let (Some(flag), None, None) = (from_stdin, &args.prompt, &args.messages) {
        return Err(Usage::new(format!(
            "{flag} - reads stdin, so the message must be given as an argument"
        ))
        .into());
    }
    if let Some(path) = &args.messages {
        let text = crate::infile::read_text(path, crate::infile::MAX_TEXT)
            .with_context(|| format!("cannot read messages {}", shown(path)))?;
        let earlier: Vec<Message> =
            crate::infile::from_json(text.as_bytes()).map_err(
                |e| match crate::infile::json_kind(text.as_bytes()) {
                    "an array" | "no JSON" => anyhow!(
                    "messages {} must be a JSON array of {{\"role\", \"content\"}} objects: {e}",
                    shown(path)
                ),
                    kind => anyhow!(
                        "messages {} must be a JSON array of {{\"role\", \"content\"}} objects, \
                     and it holds {kind}",
                        shown(path)
                    ),
                },
            )?;
        check_messages(&earlier).with_context(|| format!("messages {}", shown(path)))?;
        warn_of_unrendered_fields(text.as_bytes(), &earlier, path);
        // `--system` replaces the file's system turns rather than adding a
        // second one, which templates do not expect.
        let keep = |m: &Message| args.system.is_none() || m.role != "system";
        messages.extend(earlier.into_iter().filter(keep));
    }
    let prompt = match &args.prompt {
        Some(p) => Some(p.clone()),
        // Stdin holds the `-` input, not the message.
        None if from_stdin.is_some() => None,
        None if io::stdin().is_terminal() => None,
        None => {
            // A piped message ends with the newline that `echo` or an editor
            // adds; it is not part of what the user asked.
            let piped = read_stdin("message")?
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            // After a messages file, an empty stdin (such as /dev/null) or
            // one of blanks adds no turn: the file may end with the user's
            // turn itself.
            (args.messages.is_none() || !piped.trim().is_empty()).then_some(piped)
        }
    };
    if let Some(prompt) = &prompt {
        check_prompt(prompt, true)?;
    }
    let answerable = |m: &Message| m.role == "user" || m.role == "assistant";
    if args.messages.is_some() && prompt.is_none() && !messages.iter().any(answerable) {
        return Err(Usage::new(
            "nothing to answer: the --messages file holds no \"user\" or \"assistant\" turn \
             (roles are matched exactly) and no message was given",
        )
        .into());
    }
    let interactive = prompt.is_none() && args.messages.is_none();
    if interactive && (gen.trace.is_some() || gen.format != Format::Text || args.render_only) {
        return Err(Usage::new(
            "--trace, --render-only and --format json/jsonl need a prompt (argument or stdin)",
        )
        .into());
    }
    let outputs = gen.trace.is_some() || gen.dump_logits.is_some();
    if args.render_only && (outputs || gen.format != Format::Text) {
        // Nothing is generated, so there is nothing to trace or dump, and
        // the prompt is printed as the model reads it, not as JSON.
        return Err(Usage::new(
            "--render-only prints the prompt as text: it takes no --trace, --dump-logits \
             or --format",
        )
        .into());
    }
    let mut settings = Settings::new(&args.sampling, gen, &args.model);
    check_generation(gen, &settings)?;
    let mut inputs = Vec::new();
    if let Some(path) = &args.messages {
        inputs.push(("--messages", path.as_path()));
    }
    if let Some(path) = &args.chat_template {
        inputs.push(("--chat-template", path.as_path()));
    }
    check_outputs(gen, &args.model, &inputs)?;
    let trace_file = gen.trace.as_deref().map(TraceFile::open).transpose()?;
    let dump = dump_file(gen)?;
    let file = chat_template_file(args)?;
    let model = load_for(&args.model, verbose, trace_file.is_some(), &gen.stops)?;
    settings.ctx_size = model.ctx_size();
    let template = chat_template(file, &model)?;
    chat::warn_of_foreign_turn_ends(&model, &template);
    if let Some(prompt) = &prompt {
        messages.push(Message::new("user", prompt));
    }
    model.check_turns(messages.len())?;
    if args.render_only {
        let rendered = template.render(&messages)?;
        // The checks a run makes (the template's, the context's) are made
        // here too: a prompt it would refuse is not shown as if it were sent.
        let (bos, body) = chat::tokenize_split(&model, &rendered)?;
        let tokens: Vec<_> = bos.into_iter().chain(body).collect();
        model.session(&args.model)?.check_prompt(&tokens)?;
        let mut out = crate::output::stdout();
        // The BOS the vocabulary adds is part of what the model reads.
        if bos.is_some() {
            out.write_all(model.bos_text().unwrap_or_default().as_bytes())?;
        }
        out.write_all(rendered.text.as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    let mut session = model.session(&args.model)?;
    let mut generator = generator(&model, dump);
    if verbose > 0 {
        crate::note!("talkback: {}", settings.describe());
    }

    if interactive {
        let mut turn = ChatTurn {
            model: &model,
            generator: &mut generator,
            session: &mut session,
            settings: &settings,
            verbose,
        };
        return crate::repl::run(&template, &mut turn, messages);
    }
    let rendered = template.render(&messages)?;
    if verbose > 1 {
        crate::note!("talkback: rendered prompt:\n{}", rendered.text);
    }
    let tokens = chat::tokenize(&model, &rendered)?;
    let save = |outcome: &Outcome, text: &[u8]| match trace_file {
        Some(out) => {
            let prompt = Prompt::Chat {
                messages,
                chat_template: template.source().to_owned(),
            };
            save_trace(out, &model, prompt, &tokens, &settings, outcome, text)
        }
        None => Ok(()),
    };
    let (outcome, _) = generate(
        &model,
        &mut generator,
        &mut session,
        &tokens,
        &settings,
        gen.format,
        save,
    )?;
    report_finish(&outcome, gen.format, verbose)
}

/// Warns, once, when a messages file's turns hold fields besides `role`
/// and `content` (tool calls, a speaker's `name`): the template never sees
/// them, so the prompt leaves them out.
fn warn_of_unrendered_fields(json: &[u8], turns: &[Message], path: &Path) {
    // Read again as plain objects: the file has parsed as turns already.
    let Ok(objects) =
        serde_json::from_slice::<Vec<serde_json::Map<String, serde_json::Value>>>(json)
    else {
        return;
    };
    let mut fields: Vec<&str> = Vec::new();
    let mut holding = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let mut extra = object
            .keys()
            .filter(|k| *k != "role" && *k != "content")
            .peekable();
        if extra.peek().is_some() {
            holding.push(i);
        }
        for key in extra {
            if !fields.contains(&key.as_str()) {
                fields.push(key);
            }
        }
    }
    let Some(&first) = holding.first() else {
        return;
    };
    let role = turns.get(first).map_or("", |m| m.role.as_str());
    let which = match holding.len() {
        1 => format!("turn {} ({role}) holds", first + 1),
        n => format!("{n} turns, from turn {} ({role}), hold", first + 1),
    };
    let mut named: Vec<String> = fields.iter().take(3).map(|f| format!("`{f}`")).collect();
    if fields.len() > 3 {
        named.push(format!("{} more", fields.len() - 3));
    }
    let line = format!(
        "warning: messages {}: {which} {}, which the chat template is not given: it renders \
         each turn's `role` and `content` only",
        shown(path),
        named.join(", "),
    );
    crate::note!("talkback: {}", crate::output::error_line(&line));
}

/// Runs one chat turn from rendered messages; the REPL calls it.
pub trait Turn {
    /// Generates and prints the assistant's reply; returns its text and finish.
    ///
    /// # Errors
    ///
    /// - the turn cannot be generated.
    fn reply(&mut self, rendered: &Rendered) -> Result<(String, Finish)>;
}

struct ChatTurn<'a, 'm> {
    model: &'m Model,
    generator: &'a mut Generator,
    session: &'a mut Session<'m>,
    settings: &'a Settings,
    verbose: u8,
}

impl Turn for ChatTurn<'_, '_> {
    fn reply(&mut self, rendered: &Rendered) -> Result<(String, Finish)> {
        let tokens = chat::tokenize(self.model, rendered)?;
        let (outcome, text) = generate(
            self.model,
            self.generator,
            self.session,
            &tokens,
            self.settings,
            Format::Text,
            |_, _| Ok(()),
        )?;
        let mut out = crate::output::stdout();
        writeln!(out)?;
        out.flush()?;
        if self.verbose > 0 {
            note_finish(&outcome);
        }
        if outcome.finish == Finish::ContextFull {
            crate::note!("talkback: the context is full; /reset to start over");
        }
        Ok((String::from_utf8_lossy(&text).into_owned(), outcome.finish))
    }
}

fn complete_command(args: &CompleteArgs, verbose: u8) -> Result<()> {
    let gen = &args.generation;
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None if io::stdin().is_terminal() => {
            return Err(Usage::new("give the text to continue as an argument or on stdin").into())
        }
        None => read_stdin("prompt")?,
    };
    check_prompt(&prompt, false)?;
    let mut settings = Settings::new(&args.sampling, gen, &args.model);
    check_generation(gen, &settings)?;
    check_outputs(gen, &args.model, &[])?;
    let trace_file = gen.trace.as_deref().map(TraceFile::open).transpose()?;
    let dump = dump_file(gen)?;
    let model = load_for(&args.model, verbose, trace_file.is_some(), &gen.stops)?;
    settings.ctx_size = model.ctx_size();
    let mut session = model.session(&args.model)?;
    let mut generator = generator(&model, dump);
    if verbose > 0 {
        crate::note!("talkback: {}", settings.describe());
    }
    let tokens = model.tokenize_prompt(&prompt, args.parse_special)?;
    let save = |outcome: &Outcome, text: &[u8]| match trace_file {
        Some(out) => {
            let prompt = Prompt::Complete {
                text: prompt,
                parse_special: args.parse_special,
            };
            save_trace(out, &model, prompt, &tokens, &settings, outcome, text)
        }
        None => Ok(()),
    };
    let (outcome, _) = generate(
        &model,
        &mut generator,
        &mut session,
        &tokens,
        &settings,
        gen.format,
        save,
    )?;
    report_finish(&outcome, gen.format, verbose)
}

/// `n` tokens of a kind, as "1 prompt token" or "4 prompt tokens".
fn counted(n: usize, kind: &str) -> String {
    many(n, &format!("{kind} token"))
}

fn replay_command(args: &ReplayArgs, verbose: u8) -> Result<()> {
    let name = shown(&args.trace);
    let trace = Trace::load(&args.trace)?;
    // What `chat` and `complete` refuse, a trace cannot have recorded.
    match &trace.prompt {
        Prompt::Chat { messages, .. } => check_messages(messages).and_then(|()| {
            let answerable = |m: &Message| m.role == "user" || m.role == "assistant";
            if messages.iter().any(answerable) {
                Ok(())
            } else {
                Err(anyhow!(
                    "its messages hold no \"user\" or \"assistant\" turn (roles are matched \
                     exactly)"
                ))
            }
        }),
        Prompt::Complete { text, .. } if text.is_empty() => Err(anyhow!("its prompt is empty")),
        Prompt::Complete { .. } => Ok(()),
    }
    .with_context(|| format!("trace {name}"))?;
    let path = resolve_path(args.model.as_deref());
    let settings = trace.settings.clone();
    settings.config().with_context(|| format!("trace {name}"))?;
    let model_args = ModelArgs {
        model: Some(path),
        ctx_size: Some(settings.ctx_size),
        batch_size: settings.batch_size,
        // llama.cpp's logits depend on the thread count.
        threads: args.threads.or(settings.threads),
        gpu_layers: 0,
        mmap: false,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(t) = settings
        .threads
        .filter(|&t| args.threads.is_none() && t as usize > cores)
    {
        // Only a warning: another count could change the logits.
        crate::note!(
            "talkback: warning: the trace was recorded with {t} threads, more than this \
             machine's {cores} cores; the replay uses them too and may be slow"
        );
    }
    let model = load(&model_args, verbose)?;
    // Taken of the file loaded, whatever its path names by now.
    let sha = model.sha256()?;
    if !sha.eq_ignore_ascii_case(&trace.model_sha256) {
        bail!(
            "trace {} was recorded with model {} (SHA-256 {}), but {} has SHA-256 {sha}",
            name,
            trace.model_file,
            trace.model_sha256,
            named(model.path())
        );
    }
    if verbose > 0 {
        crate::note!("talkback: {}", settings.describe());
    }
    let n_vocab = model.vocab_size();
    let outside = |id: u32| id as usize >= n_vocab;
    if let Some((step, s)) = (0..).zip(&trace.steps).find(|(_, s)| outside(s.id)) {
        bail!(
            "trace {}: step {step} records token {}, but the model's vocabulary holds \
             {n_vocab} tokens",
            name,
            s.id
        );
    }
    if let Some((i, id)) = (0..).zip(&trace.prompt_tokens).find(|(_, &id)| outside(id)) {
        bail!(
            "trace {}: prompt token {i} is {id}, but the model's vocabulary holds \
             {n_vocab} tokens",
            name
        );
    }
    // The prompt is the trace's: its faults name the trace, and a replay
    // has no --ctx-size to raise.
    let prompt_fault = |e: &anyhow::Error| {
        if let Some(p) = e.downcast_ref::<PromptTooLong>() {
            return Some(anyhow!(
                "trace {}: its prompt is {} tokens but its context holds only {}",
                name,
                p.count(),
                p.n_ctx
            ));
        }
        e.downcast_ref::<PromptTooLarge>().map(|p| {
            anyhow!(
                "trace {}: its prompt is {} bytes of text, more than the {} talkback \
                 tokenizes at once{}",
                name,
                p.bytes,
                crate::stack::max_prompt_bytes(),
                crate::stack::reduced_note()
            )
        })
    };
    let too_long = |e: anyhow::Error| prompt_fault(&e).unwrap_or(e);
    let tokens = prompt_tokens(&model, &trace.prompt)
        .map_err(|e| prompt_fault(&e).unwrap_or_else(|| e.context(format!("trace {name}"))))?;
    let prompt_ids = ids(&tokens);
    if let Some(d) = trace::compare(&trace, &prompt_ids, &[], Finish::Length, "")
        .filter(|d| matches!(d, trace::Divergence::PromptToken { .. }))
    {
        bail!("replay diverged: {d}");
    }
    // A run ends on `context_full` once its prompt and the tokens it made
    // hold one token more than the context (the last one is never decoded
    // into it), and no run makes more. (A prompt longer than the context
    // is refused below, as a run would refuse it.)
    let ctx = settings.ctx_size as usize;
    if prompt_ids.len() <= ctx {
        let room = ctx + 1 - prompt_ids.len();
        let steps = trace.steps.len();
        let prompt = counted(prompt_ids.len(), "prompt");
        if steps > room {
            bail!(
                "trace {name} records {steps} steps after {prompt}, but its context of {ctx} \
                 has room for {} at most",
                many(room, "step")
            );
        }
        // The end of the turn is seen before a step is added, so it ends a
        // run one step short of a full context at most.
        if trace.finish_reason == Finish::EndOfTurn.as_str() && steps >= room {
            bail!(
                "trace {name} ends on `end_of_turn` after {}, but after {prompt} its context \
                 of {ctx} is full at step {room}",
                many(steps, "step")
            );
        }
        if trace.finish_reason == Finish::ContextFull.as_str() && steps < room {
            bail!(
                "trace {name} ends on `context_full` after {}, but after {prompt} its \
                 context of {ctx} fills only at step {room}",
                many(steps, "step")
            );
        }
    }
    let interrupted = trace.finish_reason == Finish::Interrupted.as_str();

    // A trace's settings come from a run that had them accepted, so a
    // context that does not fit means the trace was edited; replay has no
    // flag that could change it.
    let mut session =
        model
            .session(&model_args)
            .map_err(|e| match e.downcast_ref::<ContextTooLong>() {
                Some(c) => anyhow!(
                    "trace {} asks for a context of {} tokens, more than the {} that model {} \
                 was trained on",
                    name,
                    c.asked,
                    c.trained,
                    named(&c.path)
                ),
                None => e,
            })?;
    if interrupted && trace.steps.is_empty() {
        // Stopped before its first token: the prompt's tokens were all
        // there is to compare, and decoding them would only cost time.
        session.check_prompt(&tokens).map_err(too_long)?;
        // A stop that came meanwhile is no match either.
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        if let Some(d) = trace::compare(&trace, &prompt_ids, &[], Finish::Interrupted, "") {
            bail!("replay diverged: {d}");
        }
        return replay_ok(prompt_ids.len(), 0, Finish::Interrupted);
    }
    let mut generator = Generator::new(&model);
    let mut req = request(&settings, 0)?;
    // A replay that goes on past the recorded steps has diverged already;
    // one step more shows how, without generating to the end of the
    // context first.
    let past = u32::try_from(trace.steps.len() + 1).unwrap_or(u32::MAX);
    req.n_predict = Some(req.n_predict.map_or(past, |n| n.min(past)));
    // Ctrl-C ended the recorded run between two steps, so its replay
    // regenerates the steps it recorded and stops there as it did.
    if interrupted {
        req.n_predict = Some(u32::try_from(trace.steps.len()).unwrap_or(u32::MAX));
    }
    let mut sink = CollectSink::default();
    let outcome = generator
        .run(&model, &mut session, &tokens, &req, &mut sink)
        .map_err(too_long)?;
    let finish = match outcome.finish {
        Finish::Interrupted => return Err(Interrupted.into()),
        // The recorded run was stopped from outside after its last step.
        // Its replay stops there on `length`, unless that step would have
        // ended the run anyway: a stop string it completed (the recorded
        // run stopped on writing the text before it), or the end of the
        // turn. Either way it is the recorded run.
        _ if interrupted && outcome.tokens.len() == trace.steps.len() => Finish::Interrupted,
        other => other,
    };
    let text = String::from_utf8_lossy(&sink.text);
    if let Some(d) = trace::compare(&trace, &prompt_ids, &outcome.tokens, finish, &text) {
        // llama.cpp's logits depend on the thread count and the machine.
        let used = model_args.threads();
        let threads = |n: u32| many(n as usize, "thread");
        // The same tokens cannot make other text, or meet a stop string in
        // one run and not the other, unless the trace's text or its stop
        // strings changed, or another version decodes them otherwise.
        let stop = Finish::StopString.as_str();
        // What matched, and the fields that could have been changed.
        let matched = match &d {
            trace::Divergence::Text { .. } => Some(("every token matched", "`text` or `stops`")),
            trace::Divergence::Length {
                recorded, replayed, ..
            } if recorded == stop || replayed == stop => Some((
                "every token matched until one run met a stop string where the other did not",
                "`steps` or `stops`",
            )),
            _ => None,
        };
        let hint = match (matched, settings.threads) {
            (Some((matched, fields)), _) if trace.talkback_version == env!("CARGO_PKG_VERSION") => {
                format!("{matched}, so the trace's {fields} was changed after it was recorded")
            }
            (Some((matched, fields)), _) => format!(
                "{matched}: either the trace's {fields} was changed, or the versions turn \
                 tokens into text differently"
            ),
            (None, Some(t)) if t == used => format!(
                "recorded and replayed with {}; either the trace was changed after it was \
                 recorded, or llama.cpp's logits differ between this machine and the one \
                 that recorded it",
                threads(t)
            ),
            (None, Some(t)) => format!(
                "recorded with {}, replayed with {}; llama.cpp's logits depend on the \
                 count: replay without --threads",
                threads(t),
                threads(used)
            ),
            (None, None) => format!(
                "the trace does not record its thread count, and this replay used {}; \
                 llama.cpp's logits depend on the count and the machine: replay with \
                 the recorded run's --threads, on its machine",
                threads(used)
            ),
        };
        // Another version's sampler or loop may differ from this one's.
        let this = env!("CARGO_PKG_VERSION");
        let version = if trace.talkback_version == this {
            String::new()
        } else {
            format!(
                "; the trace was recorded by talkback {}, and this is {this}",
                trace.talkback_version
            )
        };
        bail!("replay diverged: {d} ({hint}{version})");
    }
    replay_ok(prompt_ids.len(), outcome.tokens.len(), finish)
}

/// Renders and tokenizes a trace's prompt as its run did.
fn prompt_tokens(model: &Model, prompt: &Prompt) -> Result<Vec<llama_cpp_2::token::LlamaToken>> {
    Ok(match prompt {
        Prompt::Chat {
            messages,
            chat_template,
        } => {
            // The model's own template renders as it did when recorded,
            // llama.cpp's built-in fallback included.
            let own = Template::model_source(model).ok();
            let template = if own.as_deref() == Some(chat_template.as_str()) {
                Template::from_model(model, CHAT_WITHOUT_TEMPLATE)?
            } else {
                Template::new(
                    chat_template,
                    model.bos_text().unwrap_or_default(),
                    model.eos_text().unwrap_or_default(),
                )?
            };
            model.check_turns(messages.len())?;
            chat::tokenize(model, &template.render(messages)?)?
        }
        Prompt::Complete {
            text,
            parse_special,
        } => model.tokenize_prompt(text, *parse_special)?,
    })
}

/// Says that a replay matched its trace.
fn replay_ok(prompt: usize, generated: usize, finish: Finish) -> Result<()> {
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "replay ok: {} and {} match (finish: {})",
        counted(prompt, "prompt"),
        counted(generated, "generated"),
        finish.as_str()
    )?;
    out.flush()?;
    Ok(())
}

fn plot_command(args: &PlotArgs, verbose: u8) -> Result<()> {
    let base = sampler_core::Config {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..sampler_core::Config::default()
    };
    // A value listed twice would only draw the same line twice, under the
    // same label.
    let repeats = [
        ("--temp", first_repeat(&args.temp)),
        ("--top-k", first_repeat(&args.top_k)),
        ("--top-p", first_repeat(&args.top_p)),
        ("--min-p", first_repeat(&args.min_p)),
    ];
    if let Some((flag, Some(v))) = repeats.into_iter().find(|(_, v)| v.is_some()) {
        return Err(Usage::new(format!("{flag} lists {v} twice")).into());
    }
    let combinations = [
        args.temp.len(),
        args.top_k.len(),
        args.top_p.len(),
        args.min_p.len(),
    ]
    .iter()
    .try_fold(1_usize, |n, &len| n.checked_mul(len));
    if !combinations.is_some_and(|n| n <= crate::plot::MAX_SERIES) {
        return Err(Usage::new(format!(
            "plot draws at most {} settings (the combinations of --temp, --top-k, \
             --top-p and --min-p); list fewer values",
            crate::plot::MAX_SERIES
        ))
        .into());
    }
    let varies = [
        args.temp.len() > 1,
        args.top_k.len() > 1,
        args.top_p.len() > 1,
        args.min_p.len() > 1,
    ];
    let show_all = !varies.iter().any(|&v| v);
    // The settings no line differs in, named once in the title.
    let fixed_values = [
        (!varies[0]).then(|| format!("temp {}", number(args.temp.first().copied().unwrap_or(0.8)))),
        (!varies[1]).then(|| format!("top-k {}", args.top_k.first().copied().unwrap_or(0))),
        (!varies[2]).then(|| {
            format!(
                "top-p {}",
                number(args.top_p.first().copied().unwrap_or(1.0))
            )
        }),
        (!varies[3]).then(|| {
            format!(
                "min-p {}",
                number(args.min_p.first().copied().unwrap_or(0.0))
            )
        }),
    ];
    let fixed: Vec<String> = fixed_values.into_iter().flatten().collect();
    let mut configs = Vec::new();
    for &temp in &args.temp {
        for &top_k in &args.top_k {
            for &top_p in &args.top_p {
                for &min_p in &args.min_p {
                    let mut parts = Vec::new();
                    let values = [
                        format!("temp {}", number(temp)),
                        format!("top-k {top_k}"),
                        format!("top-p {}", number(top_p)),
                        format!("min-p {}", number(min_p)),
                    ];
                    for (value, &vary) in values.into_iter().zip(&varies) {
                        if vary || show_all {
                            parts.push(value);
                        }
                    }
                    let config = sampler_core::Config {
                        temperature: temp,
                        top_k,
                        top_p,
                        min_p,
                        ..base
                    };
                    config
                        .validate()
                        .map_err(|e| anyhow!("invalid setting {}: {e}", parts.join(", ")))?;
                    configs.push((parts.join(", "), config));
                }
            }
        }
    }

    check_prompt(&args.prompt, args.chat)?;
    if args.out != Path::new("-") {
        let model = resolve_path(args.model.model.as_deref());
        crate::outfile::check_distinct(&[("-o", &args.out)], &[("the model", &model)])
            .map_err(|e| Usage::new(e.to_string()))?;
    }
    let out = crate::plot::Output::open(&args.out)?;
    let model = load(&args.model, verbose)?;
    let mut session = model.session(&args.model)?;
    let tokens = if args.chat {
        let template = Template::from_model(&model, WITHOUT_CHAT_FLAG)?;
        chat::tokenize(
            &model,
            &template.render(&[Message::new("user", &args.prompt)])?,
        )?
    } else {
        model.tokenize_prompt(&args.prompt, false)?
    };
    let runs: Vec<(String, Request<'_>)> = configs
        .into_iter()
        .map(|(label, config)| {
            let req = Request {
                config,
                seed: args.seed,
                n_predict: Some(args.n_predict),
                stops: &[],
                ignore_eos: false,
                repeat_last_n: 0,
                alternatives: 0,
                engine: Engine::Talkback,
            };
            (label, req)
        })
        .collect();
    if verbose > 0 {
        let labels: Vec<&str> = runs.iter().map(|(label, _)| label.as_str()).collect();
        crate::note!(
            "talkback: seed {} | n {} | threads {} | {} series: {}",
            args.seed,
            args.n_predict,
            args.model.threads(),
            runs.len(),
            labels.join("; ")
        );
    }
    let series = crate::plot::collect(&model, &mut session, &tokens, &runs)?;
    let title = if show_all || fixed.is_empty() {
        format!("Tokens to draw from per step (seed {})", args.seed)
    } else {
        format!(
            "Tokens to draw from per step (seed {}; {})",
            args.seed,
            fixed.join(", ")
        )
    };
    // stdout carries the chart itself; a note would only be noise there.
    let to_stdout = out.is_stdout();
    crate::plot::draw(out, &title, &series)?;
    if !to_stdout {
        crate::note!(
            "talkback: wrote {} ({} series)",
            named(&args.out),
            series.len()
        );
    }
    Ok(())
}

/// The first value equal to one before it, shown as that earlier one is.
fn first_repeat<T: PartialEq + ToString>(values: &[T]) -> Option<String> {
    values.iter().enumerate().find_map(|(i, v)| {
        let before = values.get(..i)?;
        before.iter().find(|b| *b == v).map(T::to_string)
    })
}

fn shape_command(args: &ShapeArgs, verbose: u8) -> Result<()> {
    let stages = &args.stages;
    let config = sampler_core::Config {
        temperature: stages.temp,
        top_k: stages.top_k,
        top_p: stages.top_p,
        min_p: stages.min_p,
        order: stages.sampler_order,
        ..sampler_core::Config::default()
    };
    config
        .validate()
        .map_err(|e| anyhow!("invalid sampling settings: {e}"))?;
    let mut out = crate::output::stdout();

    let (table, model) = if let Some(logits) = &args.logits {
        if verbose > 0 {
            crate::note!("talkback: {}", crate::shape::describe(&config));
        }
        // What the core refuses in logits typed on the command line (all
        // NaN or -inf) is a usage error, as a bad flag value is.
        let table =
            crate::shape::table(logits, &config).map_err(|e| Usage::new(format!("{e:#}")))?;
        (table, None)
    } else {
        let prompt = args.prompt.as_deref().unwrap_or_default();
        check_prompt(prompt, args.chat)?;
        let model = load(&args.model, verbose)?;
        if verbose > 0 {
            crate::note!(
                "talkback: {} | ctx {} | chat {}",
                crate::shape::describe(&config),
                model.ctx_size(),
                args.chat
            );
        }
        let tokens = if args.chat {
            let template = Template::from_model(&model, WITHOUT_CHAT_FLAG)?;
            chat::tokenize(&model, &template.render(&[Message::new("user", prompt)])?)?
        } else {
            model.tokenize_prompt(prompt, false)?
        };
        let table = {
            let mut session = model.session(&args.model)?;
            if !session.set_prompt(&tokens)? {
                return Err(Interrupted.into());
            }
            crate::shape::table(session.checked_logits(None)?, &config)?
        };
        (table, Some(model))
    };
    let piece = |id: u32| {
        model.as_ref().map(|m| {
            let mut bytes = Vec::new();
            m.piece_into(id, &mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let label = |id: u32| match (&model, piece(id)) {
        // Bare, but escaped as the quoted pieces are: the vocabulary's
        // spelling may hold line breaks or terminal escapes.
        (Some(m), Some(p)) if p.is_empty() => m
            .control_text(id)
            .map_or_else(|| "\"\"".into(), |t| t.escape_debug().to_string()),
        (_, Some(p)) => format!("{p:?}"),
        (_, None) => String::new(),
    };
    match args.format {
        ShapeFormat::Text => crate::shape::print_text(&mut out, &table, args.rows, &label)?,
        ShapeFormat::Json => {
            writeln!(out, "{}", crate::shape::to_json(&table, args.rows, &piece))?;
        }
    }
    out.flush()?;
    Ok(())
}
