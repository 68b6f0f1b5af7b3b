//! Chat templates: rendering a conversation the way the model was tuned on it.
//!
//! The model's own Jinja template (from its GGUF metadata, or a file given
//! with `--chat-template`) is rendered with `minijinja`. A model template that
//! `minijinja` cannot render (a syntax or a filter it lacks) falls back to the
//! llama.cpp built-in template its text matches, with a warning on stderr;
//! a template that raises an exception is obeyed, not bypassed. So that a user who
//! types `<|im_end|>` sends text rather than a control token, only the
//! template's own text is read with special-token parsing: the prompt is cut
//! at the control tokens found there, and the text between them, template and
//! message text together, is tokenized without it.

use std::cell::Cell;

use anyhow::{anyhow, bail, Context as _, Result};
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::infile::named;
use crate::model::Model;

mod pyjson;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl<'de> Deserialize<'de> for Message {
    /// Reads a `{"role", "content"}` object; other fields are ignored.
    ///
    /// Only an object: a derived reader also took a list such as
    /// `["user", "Hi"]` for a turn, fields by position.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TurnVisitor)
    }
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// Reads one [`Message`] from an object.
struct TurnVisitor;

impl<'de> serde::de::Visitor<'de> for TurnVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a {\"role\", \"content\"} object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        use serde::de::{Error, IgnoredAny};
        let (mut role, mut content) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            let (name, slot) = match key.as_str() {
                "role" => ("role", &mut role),
                "content" => ("content", &mut content),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(A::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value::<String>()?);
        }
        Ok(Message {
            role: role.ok_or_else(|| A::Error::missing_field("role"))?,
            content: content.ok_or_else(|| A::Error::missing_field("content"))?,
        })
    }
}

/// Work one render may do, in minijinja's fuel: about one unit per
/// instruction and per 64 bytes of data made. Real chat templates use a few
/// dozen units per message; the budget stops a template that loops or
/// builds text without end (it would otherwise hang, deaf to Ctrl-C, until
/// memory ran out) while leaving room for hundreds of megabytes of messages.
pub const FUEL: u64 = 10_000_000;

/// The private-use characters that content marks are chosen from (see
/// [`marks`]). Templates pass content through, so the marks show where user
/// text lies without guessing.
const MARKS: std::ops::RangeInclusive<u32> = 0xE000..=0xF8FF;

/// Detail of the error `raise_exception` gives: a template that raises means
/// it, so such an error never sends rendering to the fallback.
const RAISED: &str = "the template raised: ";

/// Largest conversation, in bytes, handed to llama.cpp's built-in templates,
/// whose buffer length is an `i32`.
const BUILTIN_MAX_BYTES: usize = 1 << 28;

/// How many roles [`Template::render`] tries trimming one at a time when
/// there are too many to try every set.
const SINGLE_TRIMS: usize = 16;

/// A chat template ready to render.
pub struct Template<'m> {
    env: Environment<'static>,
    /// Whether `env` holds the template; false when it did not parse.
    parsed: bool,
    bos: String,
    eos: String,
    source: String,
    fallback: Option<Builtin<'m>>,
    /// The file the template was read from, which render errors name.
    file: Option<String>,
}

/// llama.cpp's built-in template for a model whose own one cannot be rendered.
struct Builtin<'m> {
    model: &'m Model,
    template: LlamaChatTemplate,
    /// Whether the switch to it has been announced on stderr.
    warned: Cell<bool>,
}

/// A conversation the template cannot render into a prompt that keeps
/// message text apart from control tokens; the interactive chat drops the
/// message and goes on.
#[derive(Debug)]
pub struct Unsendable(pub String);

impl std::fmt::Display for Unsendable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsendable {}

/// A rendered prompt: its text and which byte ranges are message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt exactly as the model sees it.
    pub text: String,
    /// Byte ranges of `text` that hold message content.
    pub content: Vec<std::ops::Range<usize>>,
    /// What [`tokenize`] checks before it sends the prompt; `None` when
    /// the template would not render the stand-ins and every message is in
    /// place.
    pub checks: Option<Box<Checks>>,
    /// The file of the template that rendered it, which the faults of the
    /// template that [`tokenize`] finds name.
    pub file: Option<String>,
}

/// The checks that no control token in a prompt comes from message text.
///
/// Message text kept whole between its marks is never read as control
/// tokens, but a template may also write message text elsewhere: cut where
/// a mark lay (as `split('</think>')[-1]` does), as a piece, rewritten
/// (reversed, re-cased), or copied with the marks filtered out. So the
/// template's own text (all but the marked spans) must read as the same
/// control tokens as in renders where every message is one of
/// `STAND_INS` (two, so that control tokens the template writes only for
/// some text show up as a difference); and when some message is not whole
/// and in place, no message may hold text that reads as a control token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// The conversation rendered once with each stand-in.
    pub stand_ins: Vec<Rendered>,
    /// Every message's text when some message is out of place; else empty.
    pub contents: Vec<String>,
}

/// The texts every message holds in the renders of [`Checks::stand_ins`]:
/// two different letters.
const STAND_INS: [&str; 2] = ["x", "q"];

/// Two private-use characters that appear in no message and not in the
/// template: the content marks for one render.
fn marks(messages: &[Message], source: &str) -> Option<(char, char)> {
    let mut used = std::collections::BTreeSet::new();
    let texts = messages.iter().map(|m| m.content.as_str()).chain([source]);
    for c in texts.flat_map(str::chars) {
        if MARKS.contains(&u32::from(c)) {
            used.insert(u32::from(c));
        }
    }
    let mut free = MARKS
        .filter(|c| !used.contains(c))
        .filter_map(char::from_u32);
    Some((free.next()?, free.next()?))
}

/// `source` with Hugging Face's `{% generation %}` and `{% endgeneration %}`
/// tags, which mark the assistant's text for training and render their body
/// as it is, written as `{% if true %}` and `{% endif %}`: the same output
/// and the same whitespace control, in tags `minijinja` knows.
///
/// Only tags are rewritten: not text inside `{% raw %}` blocks, comments or
/// string literals. Tags that do not pair up are left as written, so that
/// the parse error names them.
fn without_generation_tags(source: &str) -> String {
    let tags = generation_tags(source);
    let mut depth = 0_usize;
    for &(_, opens) in &tags {
        depth = match (opens, depth.checked_sub(1)) {
            (true, _) => depth + 1,
            (false, Some(outer)) => outer,
            (false, None) => return source.to_owned(),
        };
    }
    if depth != 0 {
        return source.to_owned();
    }
    let mut out = String::with_capacity(source.len());
    let mut at = 0;
    for (word, opens) in tags {
        out.push_str(source.get(at..word.start).unwrap_or_default());
        out.push_str(if opens { "if true" } else { "endif" });
        at = word.end;
    }
    out.push_str(source.get(at..).unwrap_or_default());
    out
}

/// Where `generation` and `endgeneration` stand as the whole of a tag, and
/// whether each opens a block (`generation`) or closes one.
fn generation_tags(source: &str) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut tags = Vec::new();
    let mut at = 0;
    while let Some(open) = source
        .get(at..)
        .and_then(|rest| rest.find('{'))
        .map(|o| at + o)
    {
        let rest = source.get(open..).unwrap_or_default();
        at = if rest.starts_with("{#") {
            source
                .get(open + 2..)
                .and_then(|r| r.find("#}"))
                .map_or(source.len(), |end| open + 2 + end + 2)
        } else if rest.starts_with("{{") {
            tag_end(source, open + 2, "}}")
        } else if rest.starts_with("{%") {
            let end = tag_end(source, open + 2, "%}");
            let inner = source
                .get(open + 2..end.saturating_sub(2))
                .unwrap_or_default();
            let body = inner.strip_prefix(['-', '+']).unwrap_or(inner);
            let body = body.strip_suffix(['-', '+']).unwrap_or(body);
            let word = body.trim();
            let word_at = open
                + 2
                + (inner.len() - inner.trim_start_matches(['-', '+']).len())
                + (body.len() - body.trim_start().len());
            if word == "generation" || word == "endgeneration" {
                tags.push((word_at..word_at + word.len(), word == "generation"));
            }
            if word == "raw" {
                raw_end(source, end)
            } else {
                end
            }
        } else {
            open + 1
        };
    }
    tags
}

/// Where a tag whose text starts at `from` ends, past its `close`; quotes
/// inside it open string literals, which `close` does not end.
fn tag_end(source: &str, from: usize, close: &str) -> usize {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in source.get(from..).unwrap_or_default().char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None => {
                let here = from + i;
                if source.get(here..).is_some_and(|r| r.starts_with(close)) {
                    return here + close.len();
                }
            }
        }
    }
    source.len()
}

/// Where the `{% endraw %}` that closes a raw block opened before `from`
/// ends.
fn raw_end(source: &str, from: usize) -> usize {
    let mut at = from;
    while let Some(open) = source.get(at..).and_then(|r| r.find("{%")).map(|o| at + o) {
        let end = tag_end(source, open + 2, "%}");
        let inner = source
            .get(open + 2..end.saturating_sub(2))
            .unwrap_or_default();
        if inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace()) == "endraw" {
            return end;
        }
        at = open + 2;
    }
    source.len()
}

impl<'m> Template<'m> {
    /// Compiles a Jinja chat template.
    ///
    /// # Errors
    ///
    /// - the template does not parse.
    pub fn new(source: &str, bos: String, eos: String) -> Result<Self> {
        let (template, parsed) = Self::compile(source, bos, eos);
        parsed?;
        Ok(template)
    }

    /// Names `file` as where the template came from in its render errors.
    #[must_use]
    pub fn with_file(mut self, file: String) -> Self {
        self.file = Some(file);
        self
    }

    /// Sets the BOS and EOS texts the template sees as `bos_token` and
    /// `eos_token`.
    pub fn set_tokens(&mut self, bos: String, eos: String) {
        self.bos = bos;
        self.eos = eos;
    }

    /// The template, and whether it parsed.
    fn compile(source: &str, bos: String, eos: String) -> (Self, Result<()>) {
        let mut env = Environment::new();
        let most = crate::stack::max_template();
        if source.len() > most {
            let template = Self {
                env,
                parsed: false,
                bos,
                eos,
                source: source.to_owned(),
                fallback: None,
                file: None,
            };
            let e = anyhow!(
                "the chat template is {} bytes; talkback takes templates of at most {most}{}",
                source.len(),
                crate::stack::reduced_note()
            );
            return (template, Err(e));
        }
        // Hugging Face renders chat templates with both on, as the model
        // was tuned: block tags on lines of their own leave no blank line
        // or indentation behind.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", pyjson::tojson);
        env.add_function("raise_exception", |msg: String| -> Result<(), JinjaError> {
            Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("{RAISED}{msg}"),
            ))
        });
        // Jinja2, which Hugging Face renders with, writes every line break
        // of the template's text (`\r\n`, `\r` or `\n`) as `\n`; a file
        // saved with Windows or old Mac line breaks would otherwise put
        // carriage returns into the prompt.
        let text = source.replace("\r\n", "\n").replace('\r', "\n");
        let parsed = env
            .add_template_owned("chat", without_generation_tags(&text))
            // `{e:#}` would add minijinja's source excerpt over several lines;
            // the plain form names the error, template and line in one.
            .map_err(|e| anyhow!("the chat template does not parse: {e}"));
        let template = Self {
            env,
            parsed: parsed.is_ok(),
            bos,
            eos,
            source: source.to_owned(),
            fallback: None,
            file: None,
        };
        (template, parsed)
    }

    /// The model's own template, from its GGUF metadata; `instead` says
    /// what the command can do without one.
    ///
    /// # Errors
    ///
    /// - the model has no chat template (the message ends with `instead`);
    /// - it does not parse with `minijinja` and matches none of llama.cpp's
    ///   built-in templates.
    pub fn from_model(model: &'m Model, instead: &str) -> Result<Self> {
        let source = Self::model_source(model).map_err(|e| anyhow!("{e}; {instead}"))?;
        let (mut template, parsed) = Self::compile(
            &source,
            model.bos_text().unwrap_or_default(),
            model.eos_text().unwrap_or_default(),
        );
        // llama.cpp takes the template text and picks the built-in one whose
        // markers it contains.
        let builtin = LlamaChatTemplate::new(&source)
            .ok()
            .filter(|t| matches_a_builtin(model, t));
        template.fallback = builtin.map(|t| Builtin {
            model,
            template: t,
            warned: Cell::new(false),
        });
        if let Err(e) = parsed {
            let Some(fallback) = &template.fallback else {
                return Err(anyhow!(
                    "{e:#}, and it matches no llama.cpp built-in template"
                ));
            };
            fallback.warn(&e);
        }
        Ok(template)
    }

    /// The model's chat template text.
    ///
    /// # Errors
    ///
    /// - the model has no chat template, or one that cannot be used (see
    ///   [`Model::template_fault`]).
    pub fn model_source(model: &Model) -> Result<String> {
        if let Some(fault) = model.template_fault() {
            bail!(
                "the chat template of model {} cannot be used: {fault}",
                named(model.path())
            );
        }
        model
            .inner()
            .meta_val_str("tokenizer.chat_template")
            .map_err(|_| anyhow!("model {} has no chat template", named(model.path())))
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`, ending with the assistant's generation prompt.
    ///
    /// A template that trims the text of some messages (a mark keeps the
    /// spaces next to it from being trimmed) is rendered with those
    /// messages trimmed beforehand. They are found by trying sets of roles
    /// until the prompt is the template's own: every set, fewest first,
    /// for up to four roles with padded text; otherwise none, each of the
    /// first 16 alone, and all. Failing that (a template that trims the
    /// last message, or one end of a message), two padded renders tell
    /// message by message.
    ///
    /// # Errors
    ///
    /// - the template fails to render (for example it raises an exception);
    /// - the template rewrites message content in a way that hides where it is;
    /// - the template leaves out the last message's text.
    ///
    /// Each names the template's file, if it came from one.
    pub fn render(&self, messages: &[Message]) -> Result<Rendered> {
        let mut rendered = naming(self.file.as_deref(), self.render_unnamed(messages))?;
        rendered.file.clone_from(&self.file);
        Ok(rendered)
    }

    fn render_unnamed(&self, messages: &[Message]) -> Result<Rendered> {
        let plain = self.render_raw(messages)?;
        if plain.is_empty() && !messages.is_empty() {
            return Err(Unsendable(
                "the chat template writes nothing for these messages, so the model would \
                 see none of them"
                    .to_owned(),
            )
            .into());
        }
        if let Some(last) = messages.last().filter(|m| !m.content.trim().is_empty()) {
            // Other text in its place changes a prompt that holds it, in
            // whatever form the template writes it (trimmed or re-cased,
            // say, so the other text differs in those forms too).
            let plain_form = last.content.trim().to_lowercase();
            let other = if plain_form == "x" { "y" } else { "x" };
            let mut probe = messages.to_vec();
            probe.pop();
            probe.push(Message::new(&last.role, other));
            if self.render_raw(&probe)? == plain {
                return Err(Unsendable(format!(
                    "the chat template leaves out the text of the last message ({}), so \
                     the model would never see it",
                    last.role
                ))
                .into());
            }
        }
        // Trimming changes only text with whitespace around it, so only the
        // roles of such messages are worth trimming.
        let mut roles: Vec<&str> = Vec::new();
        for m in messages {
            let padded = m.content.trim() != m.content;
            if padded && !roles.contains(&m.role.as_str()) {
                roles.push(&m.role);
            }
        }
        // A template that trims some roles only names them; try those first.
        let named = |r: &&str| {
            let quoted = |q: char| self.source.contains(&format!("{q}{r}{q}"));
            !(quoted('\'') || quoted('"'))
        };
        roles.sort_by_key(named);
        // Every set of roles while there are few; otherwise none, each of
        // the first few roles alone (each a render of the whole
        // conversation), and all.
        let sets: Vec<Vec<&str>> = if roles.len() <= 4 {
            let mut sets: Vec<Vec<&str>> = (0..1_usize << roles.len())
                .map(|bits| {
                    let chosen = roles.iter().enumerate().filter(|(i, _)| bits >> i & 1 == 1);
                    chosen.map(|(_, &r)| r).collect()
                })
                .collect();
            sets.sort_by_key(Vec::len);
            sets
        } else {
            let single = roles.iter().take(SINGLE_TRIMS).map(|&r| vec![r]);
            [vec![]]
                .into_iter()
                .chain(single)
                .chain([roles.clone()])
                .collect()
        };
        for set in sets {
            let candidate: Vec<Message> = messages
                .iter()
                .map(|m| match set.contains(&m.role.as_str()) {
                    true => Message::new(&m.role, m.content.trim()),
                    false => m.clone(),
                })
                .collect();
            if let Some(rendered) = self.render_marked(&candidate, &plain, true)? {
                return Ok(rendered);
            }
        }
        // Too many roles to try every set, or a template that trims by
        // something else than the role (the last message, say): which
        // messages it trims is read from one marked render.
        if let Some(trims) = self.trimmed_messages(messages)? {
            let candidate: Vec<Message> = messages
                .iter()
                .zip(trims)
                .map(|(m, (start, end))| {
                    let mut text = m.content.as_str();
                    if start {
                        text = text.trim_start();
                    }
                    if end {
                        text = text.trim_end();
                    }
                    Message::new(&m.role, text)
                })
                .collect();
            if let Some(rendered) = self.render_marked(&candidate, &plain, true)? {
                return Ok(rendered);
            }
        }
        Err(Unsendable(
            "the chat template writes message text differently once it is marked \
             (it rewrites it, or tests how it starts or ends), so user text \
             cannot be kept apart from control tokens"
                .to_owned(),
        )
        .into())
    }

    /// Which ends of each message's text the template trims: (start, end).
    ///
    /// Each message's text goes between marks, trimmed, once bare and once
    /// with a tab before the opening mark and a line feed after the closing
    /// one. Where the template keeps the start of a message's text as it
    /// is, its tab stands before the mark in the second render, and the
    /// same for the end and its line feed (a template may strip one end
    /// only, as one that strips the system text and the first message
    /// joined does). Lining up one render against the plain one instead
    /// cannot tell which side of a mark whitespace belongs to. Gives `None`
    /// when the marks do not come out once each, in order.
    fn trimmed_messages(&self, messages: &[Message]) -> Result<Option<Vec<(bool, bool)>>> {
        let Some((open, close)) = marks(messages, &self.source) else {
            return Ok(None);
        };
        let pieces = |lead: &str, trail: &str| -> Result<Option<Vec<String>>> {
            let marked: Vec<Message> = messages
                .iter()
                .map(|m| {
                    let text = m.content.trim();
                    Message::new(&m.role, &format!("{lead}{open}{text}{close}{trail}"))
                })
                .collect();
            let rendered = self.render_raw(&marked)?;
            // The template's text around the messages': one piece more.
            let mut pieces = Vec::with_capacity(messages.len() + 1);
            let mut rest = rendered.as_str();
            while let Some((piece, after)) = rest.split_once(open) {
                let Some((_, after)) = after.split_once(close) else {
                    return Ok(None);
                };
                pieces.push(piece.to_owned());
                rest = after;
            }
            pieces.push(rest.to_owned());
            let whole =
                pieces.len() == messages.len() + 1 && !pieces.iter().any(|p| p.contains(close));
            Ok(whole.then_some(pieces))
        };
        let (Some(bare), Some(padded)) = (pieces("", "")?, pieces("\t", "\n")?) else {
            return Ok(None);
        };
        // Piece j of the padded render is piece j of the bare one, after
        // message j - 1's line feed and before message j's tab where the
        // template kept them; the two are told apart by which they are.
        let n = messages.len();
        let (mut leads, mut tails) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (j, (bare, padded)) in bare.iter().zip(&padded).enumerate() {
            let tails_here: &[&str] = if j > 0 { &["", "\n"] } else { &[""] };
            let leads_here: &[&str] = if j < n { &["", "\t"] } else { &[""] };
            let split = tails_here.iter().find_map(|&tail| {
                leads_here.iter().find_map(|&lead| {
                    let inner = padded.strip_prefix(tail)?.strip_suffix(lead)?;
                    (inner == bare).then_some((!tail.is_empty(), !lead.is_empty()))
                })
            });
            let Some((tail, lead)) = split else {
                return Ok(None);
            };
            if j > 0 {
                tails.push(tail);
            }
            if j < n {
                leads.push(lead);
            }
        }
        let trims = leads
            .into_iter()
            .zip(tails)
            .map(|(lead, tail)| (!lead, !tail));
        Ok(Some(trims.collect()))
    }

    /// Renders with content marks; `None` unless the result, marks taken
    /// out, is `plain`. With `with_checks`, also renders the stand-ins for
    /// [`Checks`].
    fn render_marked(
        &self,
        messages: &[Message],
        plain: &str,
        with_checks: bool,
    ) -> Result<Option<Rendered>> {
        let Some((open, close)) = marks(messages, &self.source) else {
            return Err(Unsendable(
                "the messages and the template hold nearly every private-use character \
                 (U+E000 to U+F8FF), and two free ones are needed to mark where message \
                 text lies"
                    .to_owned(),
            )
            .into());
        };
        let marked: Vec<Message> = messages
            .iter()
            .map(|m| Message {
                role: m.role.clone(),
                content: format!("{open}{}{close}", m.content),
            })
            .collect();
        let with_marks = self.render_raw(&marked)?;

        let mut text = String::with_capacity(plain.len());
        let mut content = Vec::new();
        let mut start = None;
        // A mark out of its pair: the template cut a message where it lay.
        let mut cut = false;
        for ch in with_marks.chars() {
            if ch == open {
                cut |= start.is_some();
                start = Some(text.len());
            } else if ch == close {
                match start.take() {
                    Some(s) => content.push(s..text.len()),
                    None => cut = true,
                }
            } else {
                text.push(ch);
            }
        }
        cut |= start.is_some();
        if text != *plain {
            return Ok(None);
        }
        // Every message whole between its marks, in order: nothing of
        // theirs can lie among the template's text.
        let in_place = !cut
            && content.len() == messages.len()
            && content
                .iter()
                .zip(messages)
                .all(|(span, m)| text.get(span.clone()) == Some(m.content.as_str()));
        let checks = if !with_checks {
            None
        } else {
            match self.render_stand_ins(messages) {
                Ok(stand_ins) => Some(Box::new(Checks {
                    stand_ins,
                    contents: if in_place {
                        Vec::new()
                    } else {
                        messages.iter().map(|m| m.content.clone()).collect()
                    },
                })),
                // Every message in place: nothing of theirs is read with
                // control tokens unless the template copies it elsewhere,
                // which a template that refuses the stand-ins is not checked
                // for.
                Err(_) if in_place => None,
                Err(e) => {
                    return Err(Unsendable(format!(
                        "the chat template moves message text out of place, and the \
                         check that it writes no control token from it failed: {e:#}"
                    ))
                    .into())
                }
            }
        };
        Ok(Some(Rendered {
            text,
            content,
            checks,
            file: None,
        }))
    }

    /// The conversation rendered once with each of [`STAND_INS`] as every
    /// message's text.
    fn render_stand_ins(&self, messages: &[Message]) -> Result<Vec<Rendered>> {
        STAND_INS
            .iter()
            .map(|&stand_in| {
                let stand_ins: Vec<Message> = messages
                    .iter()
                    .map(|m| Message::new(&m.role, stand_in))
                    .collect();
                let plain = self.render_raw(&stand_ins)?;
                let marked = self.render_marked(&stand_ins, &plain, false)?;
                Ok(marked.unwrap_or(Rendered {
                    text: plain,
                    content: Vec::new(),
                    checks: None,
                    file: None,
                }))
            })
            .collect()
    }

    fn render_raw(&self, messages: &[Message]) -> Result<String> {
        let jinja = if self.parsed {
            self.render_jinja(messages)
        } else {
            Err(JinjaError::new(
                ErrorKind::SyntaxError,
                "the chat template does not parse",
            ))
        };
        match (jinja, &self.fallback) {
            (Ok(text), _) => Ok(text),
            // A template that raised or ran out of fuel was rendered as
            // written; another template would hide that, not mend it.
            (Err(e), _) if e.kind() == ErrorKind::OutOfFuel => Err(anyhow!(
                "the chat template failed to render {}: it ran out of its budget of \
                 {FUEL} steps; does it loop without end, or is the conversation far longer \
                 than any context?",
                crate::output::many(messages.len(), "message")
            )),
            (Err(e), Some(fallback)) if !raised(&e) => {
                fallback.warn(&anyhow!(
                    "the chat template failed to render: {e}{}",
                    why(&e)
                ));
                fallback.render(messages)
            }
            (Err(e), _) => Err(anyhow!(
                "the chat template failed to render: {e}{}",
                why(&e)
            )),
        }
    }

    fn render_jinja(&self, messages: &[Message]) -> Result<String, JinjaError> {
        self.env.get_template("chat")?.render(context! {
            messages => messages.iter().map(message_value).collect::<Value>(),
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
    }
}

/// Why a render error is talkback's choice, where it is: the clock is left
/// out so that a prompt renders the same on any day, and its trace replays.
fn why(e: &JinjaError) -> &'static str {
    // minijinja's detail is "NAME is unknown".
    let clock = e.kind() == ErrorKind::UnknownFunction
        && e.detail().and_then(|d| d.split(' ').next()) == Some("strftime_now");
    if clock {
        "; talkback gives templates no `strftime_now`, so that a prompt renders the same on \
         any day and its trace replays"
    } else {
        ""
    }
}

/// Whether a render error is the template's own `raise_exception`.
fn raised(e: &JinjaError) -> bool {
    e.kind() == ErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.starts_with(RAISED))
}

/// Whether llama.cpp recognises `template` as one of its built-in templates.
fn matches_a_builtin(model: &Model, template: &LlamaChatTemplate) -> bool {
    LlamaChatMessage::new("user".into(), "x".into()).is_ok_and(|m| {
        model
            .inner()
            .apply_chat_template(template, &[m], true)
            .is_ok()
    })
}

impl Builtin<'_> {
    /// Says once, on stderr, that llama.cpp's built-in template is in use and why.
    fn warn(&self, why: &anyhow::Error) {
        if !self.warned.replace(true) {
            let line = format!(
                "warning: {why:#}; using llama.cpp's built-in template that matches it \
                 instead, which may differ (a default system turn, for one)"
            );
            note!("talkback: {}", crate::output::error_line(&line));
        }
    }

    fn render(&self, messages: &[Message]) -> Result<String> {
        let bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        if bytes > BUILTIN_MAX_BYTES {
            return Err(anyhow!(
                "the conversation is {bytes} bytes; llama.cpp's built-in templates \
                 take at most {BUILTIN_MAX_BYTES}"
            ));
        }
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow!("a message holds a NUL byte, which llama.cpp cannot take"))?;
        self.model
            .inner()
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| anyhow!("llama.cpp's built-in chat template failed: {e}"))
    }
}

/// A message as the template sees it: a map with `role` and `content`.
fn message_value(m: &Message) -> Value {
    // In this order, as Python's dicts keep it for `items()` and `tojson`.
    Value::from_pairs([
        ("role", Value::from(m.role.as_str())),
        ("content", Value::from(m.content.as_str())),
    ])
}

/// Warns, once, when the template ends an assistant turn with what looks
/// like a turn marker but holds no token this model ends a reply on: a
/// template written for another family of models (`<|eot_id|>` or
/// `<end_of_turn>` on a ChatML model), whose marker the model reads as
/// plain text and writes in its replies without their ending there.
///
/// Read from a probe conversation of a user, an assistant and a user turn:
/// the text the template writes between the assistant's text and the next
/// user's. A template that cannot render the probe, or writes nothing
/// marker-like there (a plain `User:`/`Assistant:` layout), is passed over.
pub fn warn_of_foreign_turn_ends(model: &Model, template: &Template) {
    let (asked, reply, next) = ("Qz1user", "Qz2assistant", "Qz3user");
    let probe = [
        Message::new("user", asked),
        Message::new("assistant", reply),
        Message::new("user", next),
    ];
    // Rendered as a prompt would be, but with no fallback: a template that
    // fails on the probe alone must not announce a switch it never makes.
    let text = if template.parsed {
        template.render_jinja(&probe).ok()
    } else {
        template
            .fallback
            .as_ref()
            .and_then(|f| f.render(&probe).ok())
    };
    let Some(text) = text else {
        return;
    };
    let between = text
        .find(reply)
        .and_then(|at| text.get(at + reply.len()..))
        .and_then(|rest| rest.find(next).and_then(|end| rest.get(..end)));
    let Some(between) = between else {
        return;
    };
    let Ok(tokens) = model.tokenize(between, true) else {
        return;
    };
    let ends = tokens
        .iter()
        .any(|t| u32::try_from(t.0).is_ok_and(|id| model.is_eog(id)));
    let foreign: Vec<&str> = marker_like(between)
        .filter(|m| model.tokenize(m, true).is_ok_and(|t| t.len() > 1))
        .collect();
    if ends || foreign.is_empty() {
        return;
    }
    // The EOS where it ends a reply, as it does for a chat model; else the
    // first token that does.
    let eos = model
        .eos_text()
        .filter(|t| model.tokenize(t, true).is_ok_and(|t| t.len() == 1));
    let theirs = eos
        .or_else(|| {
            model
                .eog_tokens()
                .iter()
                .find_map(|&id| model.token_text(id))
        })
        .map_or_else(String::new, |t| format!(" (such as `{t}`)"));
    let foreign: Vec<String> = foreign.iter().take(3).map(|m| format!("`{m}`")).collect();
    let file = template
        .file
        .as_deref()
        .map_or_else(String::new, |f| format!(" {f}"));
    let line = format!(
        "warning: the chat template{file} writes {} after an assistant turn, which this \
         model reads as plain text, and no token it ends a reply on{theirs}: is the template \
         for another model? Replies may run on past their turn",
        foreign.join(", "),
    );
    note!("talkback: {}", crate::output::error_line(&line));
}

/// Every distinct run of text that looks like a turn marker, in order:
/// `<...>` of at most 40 bytes with no whitespace or angle bracket inside,
/// holding a bar, an underscore or `▁` as special tokens do
/// (`<|eot_id|>`, `<end_of_turn>`, `<｜end▁of▁sentence｜>`), or `<s>` or
/// `</s>`; not HTML such as `<br>` or `</b>`.
fn marker_like(text: &str) -> impl Iterator<Item = &str> {
    markup(text).filter(|m| m.contains(['|', '｜', '_', '▁']) || *m == "<s>" || *m == "</s>")
}

/// Every distinct run of `<...>` of at most 40 bytes with no whitespace or
/// angle bracket inside, in order.
fn markup(text: &str) -> impl Iterator<Item = &str> {
    let mut seen: Vec<&str> = Vec::new();
    let mut rest = text;
    std::iter::from_fn(move || loop {
        let open = rest.find('<')?;
        let after = rest.get(open + 1..)?;
        let stop = after.find(|c: char| c == '>' || c == '<' || c.is_whitespace());
        let closed = stop.filter(|&len| {
            (1..=40).contains(&len) && after.get(len..).is_some_and(|t| t.starts_with('>'))
        });
        let Some(len) = closed else {
            rest = after;
            continue;
        };
        let marker = rest.get(open..open + len + 2)?;
        rest = after.get(len + 1..)?;
        if !seen.contains(&marker) {
            seen.push(marker);
            return Some(marker);
        }
    })
}

/// Tokenizes a rendered prompt: control tokens only where the template's
/// own text spells them, the text between them as the whole text would
/// tokenize, and a BOS only where the template did not already write one.
pub fn tokenize(model: &Model, rendered: &Rendered) -> Result<Vec<LlamaToken>> {
    let (bos, body) = tokenize_split(model, rendered)?;
    Ok(bos.into_iter().chain(body).collect())
}

/// As [`tokenize`], with the BOS added before the rendered text, if one is,
/// apart from the text's own tokens.
pub fn tokenize_split(
    model: &Model,
    rendered: &Rendered,
) -> Result<(Option<LlamaToken>, Vec<LlamaToken>)> {
    // Each part is checked as it is tokenized; the whole first, so that
    // many parts that each fit are not tokenized only to be refused.
    model.check_fits(&rendered.text, true)?;
    let parts = template_parts(rendered);
    let part_tokens = parts
        .iter()
        .map(|part| model.tokenize(part, true))
        .collect::<Result<Vec<_>>>()?;
    let checked = check_template(model, rendered, &parts, &part_tokens);
    naming(rendered.file.as_deref(), checked)?;
    let cuts = cuts(model, rendered, &parts, part_tokens)?;
    let body = tokenize_around(model, &rendered.text, &cuts)?;
    // Unless the template opens the prompt with the BOS itself (a message
    // that starts with its text gives text, not the token).
    let bos = model.bos().filter(|bos| body.first() != Some(bos));
    Ok((bos, body))
}

/// Tokenizes `text` with each of `cuts` (in order, not overlapping)
/// standing for its own tokens and the text between them read as ordinary
/// text, less the whitespace a cut swallows.
fn tokenize_around(model: &Model, text: &str, cuts: &[Cut]) -> Result<Vec<LlamaToken>> {
    let mut tokens = Vec::new();
    let mut at = 0;
    let mut swallowed = false;
    for cut in cuts {
        let run = text.get(at..cut.range.start).context("cut out of order")?;
        read_run(model, run, swallowed, cut.lstrip, &mut tokens)?;
        tokens.extend(&cut.tokens);
        at = cut.range.end;
        swallowed = cut.rstrip;
    }
    let rest = text.get(at..).context("cut out of bounds")?;
    read_run(model, rest, swallowed, false, &mut tokens)?;
    Ok(tokens)
}

/// Appends the tokens of `run`, ordinary text between two cuts, less the
/// whitespace at its start when the cut before swallows it and at its end
/// when the cut after (`lstrip`) does.
fn read_run(
    model: &Model,
    run: &str,
    swallowed: bool,
    lstrip: bool,
    tokens: &mut Vec<LlamaToken>,
) -> Result<()> {
    let mut run = run;
    if swallowed {
        run = run.trim_start_matches(is_c_space);
    }
    if lstrip {
        run = run.trim_end_matches(is_c_space);
    }
    if !run.is_empty() {
        tokens.extend(model.tokenize(run, false)?);
    }
    Ok(())
}

/// A stretch of a rendered prompt that is not tokenized as ordinary text:
/// one control token the template writes, or a whole template part whose
/// control tokens could not be placed.
struct Cut {
    /// Where it lies in the prompt's text.
    range: std::ops::Range<usize>,
    /// The tokens it stands for.
    tokens: Vec<LlamaToken>,
    /// Whether it swallows the whitespace before it.
    lstrip: bool,
    /// Whether it swallows the whitespace after it.
    rstrip: bool,
}

/// Where the prompt is cut for tokenizing, in order.
///
/// The text between cuts (template text and message text together) is
/// tokenized in one piece without special-token parsing, so that the model
/// gets the tokens of the whole rendered text, as the template's makers
/// tokenize it, and message text still never reads as a control token. A
/// part whose control tokens cannot be placed, so that its pieces would not
/// give the tokens it gives whole, is cut whole.
fn cuts(
    model: &Model,
    rendered: &Rendered,
    parts: &[&str],
    part_tokens: Vec<Vec<LlamaToken>>,
) -> Result<Vec<Cut>> {
    let mut cuts = Vec::new();
    let mut start = 0;
    for ((i, part), tokens) in parts.iter().enumerate().zip(part_tokens) {
        match place_controls(model, part, &tokens)? {
            Some(placed) => cuts.extend(placed.into_iter().map(|mut cut| {
                cut.range = cut.range.start + start..cut.range.end + start;
                cut
            })),
            None => cuts.push(Cut {
                range: start..start + part.len(),
                tokens,
                lstrip: false,
                rstrip: false,
            }),
        }
        start = rendered.content.get(i).map_or(start, |range| range.end);
    }
    Ok(cuts)
}

/// The control tokens among `tokens`, the tokens of `part` read with
/// special-token parsing, placed in `part`; `None` unless the text around
/// them, read without it, gives `tokens` again.
fn place_controls(model: &Model, part: &str, tokens: &[LlamaToken]) -> Result<Option<Vec<Cut>>> {
    let mut placed = Vec::new();
    let mut at = 0;
    for &token in tokens {
        let attr = model.attr(token);
        if !(attr.contains(LlamaTokenAttr::Control) || attr.contains(LlamaTokenAttr::Unknown)) {
            continue;
        }
        let text = u32::try_from(token.0)
            .ok()
            .and_then(|id| model.token_text(id))
            .unwrap_or_default();
        let found = part.get(at..).and_then(|rest| rest.find(&text));
        let Some(found) = found.filter(|_| !text.is_empty()) else {
            return Ok(None);
        };
        let range = at + found..at + found + text.len();
        at = range.end;
        placed.push(Cut {
            range,
            tokens: vec![token],
            lstrip: attr.contains(LlamaTokenAttr::LStrip),
            rstrip: attr.contains(LlamaTokenAttr::RStrip),
        });
    }
    let again = tokenize_around(model, part, &placed)?;
    Ok((again == tokens).then_some(placed))
}

/// Whitespace as llama.cpp's tokenizer strips it beside a token that
/// swallows it (C's `isspace`).
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// The template's text of `rendered`: all but the message spans, one part
/// before each span and one after the last.
fn template_parts(rendered: &Rendered) -> Vec<&str> {
    let mut at = 0;
    let mut parts = Vec::new();
    for range in &rendered.content {
        parts.push(rendered.text.get(at..range.start).unwrap_or_default());
        at = range.end;
    }
    parts.push(rendered.text.get(at..).unwrap_or_default());
    parts
}

/// Refuses a prompt whose template text spells a turn marker (BOS or an
/// end-of-generation token) that does not read as that token; `tokens`
/// are those of each of the template's `parts`.
///
/// A vocabulary that types such a token as ordinary text makes the
/// tokenizer split the marker into pieces: the model no longer sees where
/// turns start and end, and answers as if it were the user.
fn check_markers(model: &Model, parts: &[&str], tokens: &[Vec<LlamaToken>]) -> Result<()> {
    for id in model.markers() {
        let Some(text) = model.token_text(id).filter(|t| !t.is_empty()) else {
            continue;
        };
        let written: usize = parts.iter().map(|p| p.matches(text.as_str()).count()).sum();
        let read = tokens
            .iter()
            .flatten()
            .filter(|t| i64::from(t.0) == i64::from(id))
            .count();
        if read < written {
            bail!(
                "the chat template writes {text:?}, the text of token {id}, which marks \
                 turns, but the model's vocabulary does not read it as that token; the \
                 model would not see where turns start and end"
            );
        }
    }
    Ok(())
}

/// Checks that the template's own text in `rendered` reads as the control
/// tokens it should (see [`check_markers`] and [`Checks`]); `tokens` are
/// those of each of its `parts`.
fn check_template(
    model: &Model,
    rendered: &Rendered,
    parts: &[&str],
    tokens: &[Vec<LlamaToken>],
) -> Result<()> {
    check_markers(model, parts, tokens)?;
    if let Some(checks) = &rendered.checks {
        let real = control_tokens(model, tokens);
        for stand_in in &checks.stand_ins {
            let parts = template_parts(stand_in)
                .iter()
                .map(|part| model.tokenize(part, true))
                .collect::<Result<Vec<_>>>()?;
            if control_tokens(model, &parts) != real {
                return Err(Unsendable(
                    "the chat template writes message text outside the places marked for \
                     it, or writes control tokens that depend on what a message says, so \
                     a control token in the prompt might come from message text; it is \
                     not sent"
                        .to_owned(),
                )
                .into());
            }
        }
        for (i, text) in checks.contents.iter().enumerate() {
            if model.tokenize(text, true)? != model.tokenize(text, false)? {
                return Err(Unsendable(format!(
                    "the chat template moves message text out of the places marked for \
                     it, and message {} holds text that reads as a control token; it is \
                     not sent",
                    i + 1
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// `result`, its error naming the template's `file` if it came from one.
fn naming<T>(file: Option<&str>, result: Result<T>) -> Result<T> {
    match file {
        Some(file) => result.with_context(|| format!("chat template {file}")),
        None => result,
    }
}

/// The control tokens, in order, among the tokens of a template's parts.
fn control_tokens(model: &Model, tokens: &[Vec<LlamaToken>]) -> Vec<LlamaToken> {
    tokens
        .iter()
        .flatten()
        .copied()
        .filter(|&t| model.is_special(t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_a_block_that_always_renders() {
        let cases = [
            (
                "{% generation %}x{% endgeneration %}",
                "{% if true %}x{% endif %}",
            ),
            (
                "{%- generation -%}\n x \n{%+  endgeneration  +%}",
                "{%- if true -%}\n x \n{%+  endif  +%}",
            ),
            // Other tags, words that only start alike, raw blocks, comments
            // and strings are left alone.
            (
                "{% if generation %}{% generations %}{%generation%}{%endgeneration%}",
                "{% if generation %}{% generations %}{%if true%}{%endif%}",
            ),
            ("{% for m in messages %}{%", "{% for m in messages %}{%"),
            (
                "{% raw %}{% generation %}{% endraw %}{# {% generation %} #}\
                 {{ '{% generation %}' }}{% set x = \"%}{% generation %}\" %}",
                "{% raw %}{% generation %}{% endraw %}{# {% generation %} #}\
                 {{ '{% generation %}' }}{% set x = \"%}{% generation %}\" %}",
            ),
            // Unpaired, they are left for the parser to name.
            (
                "{% endgeneration %}{% generation %}",
                "{% endgeneration %}{% generation %}",
            ),
            ("{% generation %}", "{% generation %}"),
        ];
        for (source, want) in cases {
            assert_eq!(without_generation_tags(source), want, "{source}");
        }
        let t = Template::new(
            "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}\n\
             {{ m.content }}\n{% endgeneration %}{% else %}{{ m.content }}\n{% endif %}\
             {% endfor %}",
            String::new(),
            String::new(),
        )
        .unwrap();
        let text = t
            .render_raw(&[Message::new("user", "a"), Message::new("assistant", "b")])
            .unwrap();
        assert_eq!(text, "a\nb\n");
    }

    const CHATML: &str = "{% for message in messages %}{% if loop.first and \
        messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}\
        {% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + \
        '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn chatml() -> Template<'static> {
        Template::new(CHATML, String::new(), "<|im_end|>".into()).expect("template")
    }

    #[test]
    fn one_turn_adds_default_system_and_generation_prompt() {
        let r = chatml()
            .render(&[Message::new("user", "Hi")])
            .expect("render");
        assert_eq!(
            r.text,
            "<|im_start|>system\nYou are helpful<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r.content.len(), 1);
        assert_eq!(&r.text[r.content[0].clone()], "Hi");
    }

    #[test]
    fn marks_avoid_every_private_use_character_in_the_input() {
        let taken = Message::new("user", "a\u{E000}b\u{E003}");
        assert_eq!(marks(&[taken], "x"), Some(('\u{E001}', '\u{E002}')));
        assert_eq!(marks(&[], "\u{E001}"), Some(('\u{E000}', '\u{E002}')));
        let all: String = (0xE000..=0xF8FE).filter_map(char::from_u32).collect();
        assert_eq!(marks(&[Message::new("user", &all)], ""), None);
        let t = chatml();
        let err = t
            .render(&[Message::new("user", &all)])
            .expect_err("no marks left");
        assert!(
            format!("{err:#}").contains("two free ones are needed"),
            "{err:#}"
        );
        let even: String = (0xE000..=0xF8FF)
            .step_by(2)
            .filter_map(char::from_u32)
            .collect();
        assert!(t.render(&[Message::new("user", &even)]).is_ok());
        // Text that holds the marks of an earlier version is plain text.
        let msg = "hello \u{F8F0} world \u{F8F1}";
        let r = chatml()
            .render(&[Message::new("user", msg)])
            .expect("render");
        assert_eq!(&r.text[r.content[0].clone()], msg);
        let checks = r.checks.as_deref().expect("checks");
        assert!(checks.contents.is_empty(), "in place");
    }

    #[test]
    fn a_template_that_cuts_a_message_where_a_mark_lies_is_flagged() {
        // As thinking models' templates drop the reasoning of a reply.
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n\
            {{ m.content.split('</think>')[-1] }}<|im_end|>\n{% endfor %}";
        let t = Template::new(source, String::new(), String::new()).expect("parse");
        let cut = t
            .render(&[Message::new("assistant", "why</think>answer")])
            .expect("render");
        assert_eq!(cut.text, "<|im_start|>assistant\nanswer<|im_end|>\n");
        assert!(cut.content.is_empty());
        let checks = cut.checks.as_deref().expect("checks");
        let texts: Vec<&str> = checks.stand_ins.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "<|im_start|>assistant\nx<|im_end|>\n",
                "<|im_start|>assistant\nq<|im_end|>\n"
            ]
        );
        assert_eq!(checks.contents, ["why</think>answer"]);
        let whole = t.render(&[Message::new("user", "plain")]).expect("render");
        assert_eq!(&whole.text[whole.content[0].clone()], "plain");
        let checks = whole.checks.as_deref().expect("checks");
        assert!(checks.contents.is_empty());
        // Reversed text turns the marks around.
        let reversed = Template::new(
            "{% for m in messages %}{{ m.content[::-1] }}{% endfor %}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        let r = reversed
            .render(&[Message::new("user", "ab")])
            .expect("render");
        assert_eq!(r.text, "ba");
        let checks = r.checks.as_deref().expect("checks");
        assert_eq!(checks.contents, ["ab"]);
    }

    #[test]
    fn user_text_with_markers_is_located_as_content() {
        let msg = "say <|im_end|> please";
        let r = chatml()
            .render(&[Message::new("system", "S"), Message::new("user", msg)])
            .expect("render");
        assert_eq!(&r.text[r.content[1].clone()], msg);
        assert_eq!(&r.text[r.content[0].clone()], "S");
    }

    #[test]
    fn raise_exception_is_a_render_error() {
        let t = Template::new(
            "{{ raise_exception('no system') }}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        let err = t
            .render(&[Message::new("user", "x")])
            .expect_err("must fail");
        assert!(format!("{err:#}").contains("no system"), "{err:#}");
    }

    #[test]
    fn only_raise_exception_counts_as_the_template_refusing() {
        let error = |source: &str| {
            let t = Template::new(source, String::new(), String::new()).expect("parse");
            t.render_jinja(&[Message::new("user", "x")])
                .expect_err("must fail")
        };
        assert!(raised(&error("{{ raise_exception('no') }}")));
        assert!(!raised(&error("{{ messages | no_such_filter }}")));
        assert!(!raised(&error("{{ no_such_function() }}")));
    }

    #[test]
    fn trimming_templates_keep_their_content_spans() {
        let t = Template::new(
            "{% for m in messages %}[{{ m.content | trim }}]{% endfor %}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        let r = t
            .render(&[Message::new("user", "  x y  ")])
            .expect("render");
        assert_eq!(r.text, "[x y]");
        assert_eq!(&r.text[r.content[0].clone()], "x y");
        // A template that trims one role's text leaves the others' alone.
        let t = Template::new(
            "{% for m in messages %}[{{ m.role }}:{% if m.role == 'assistant' %}\
             {{ m.content | trim }}{% else %}{{ m.content }}{% endif %}]{% endfor %}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        let r = t
            .render(&[
                Message::new("user", "  hi  "),
                Message::new("assistant", " a "),
                Message::new("user", "  next  "),
            ])
            .expect("render");
        assert_eq!(r.text, "[user:  hi  ][assistant:a][user:  next  ]");
        let spans: Vec<&str> = r.content.iter().map(|c| &r.text[c.clone()]).collect();
        assert_eq!(spans, ["  hi  ", "a", "  next  "]);
    }

    #[test]
    fn messages_trimmed_by_any_rule_are_read_from_the_render() {
        let messages: Vec<Message> = ["system", "user", "assistant", "tool", "developer", "user"]
            .iter()
            .enumerate()
            .map(|(i, role)| Message::new(role, &format!(" {i}\n")))
            .collect();
        // Every role but one trimmed, among more roles than every set of
        // them is tried for; and only the last message trimmed.
        for (rule, trimmed) in [
            ("m.role != 'system'", [false, true, true, true, true, true]),
            ("loop.last", [false, false, false, false, false, true]),
        ] {
            let source = format!(
                "{{% for m in messages %}}<{{{{ m.role }}}}>{{% if {rule} %}}\
                 {{{{ m.content | trim }}}}{{% else %}}{{{{ m.content }}}}{{% endif %}}\
                 {{% endfor %}}"
            );
            let t = Template::new(&source, String::new(), String::new()).expect("parse");
            let r = t.render(&messages).expect(rule);
            let want: String = messages
                .iter()
                .zip(trimmed)
                .map(|(m, trim)| match trim {
                    true => format!("<{}>{}", m.role, m.content.trim()),
                    false => format!("<{}>{}", m.role, m.content),
                })
                .collect();
            assert_eq!(r.text, want, "{rule}");
            let spans: Vec<&str> = r.content.iter().map(|c| &r.text[c.clone()]).collect();
            let texts: Vec<&str> = messages
                .iter()
                .zip(trimmed)
                .map(|(m, trim)| if trim { m.content.trim() } else { &m.content })
                .collect();
            assert_eq!(spans, texts, "{rule}");
        }
    }

    #[test]
    fn whitespace_beside_a_message_is_told_from_the_templates() {
        // The first message trimmed, then a space after each: where the
        // first ends in a space and the second starts with one, lining
        // the text up took the first for untrimmed.
        let t = Template::new(
            "{% for m in messages %}{% if loop.first %}{{ m.content | trim }}{% else %}\
             {{ m.content }}{% endif %} {% endfor %}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        for (second, text) in [(" b ", "a  b  "), (" b", "a  b ")] {
            let messages = [Message::new("user", "a "), Message::new("user", second)];
            let r = t.render(&messages).expect(second);
            assert_eq!(r.text, text);
            let spans: Vec<&str> = r.content.iter().map(|c| &r.text[c.clone()]).collect();
            assert_eq!(spans, ["a", second]);
        }
    }

    #[test]
    fn a_message_stripped_at_one_end_only_is_rendered() {
        // Llama 2's template strips the system text and the first message
        // joined: the message keeps its start and loses its end.
        let t = Template::new(
            "{% set content = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' + \
             messages[1]['content'] %}{{ '[INST] ' + content.strip() + ' [/INST]' }}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        let messages = [
            Message::new("system", "sys"),
            Message::new("user", " plain "),
        ];
        let r = t.render(&messages).expect("render");
        assert_eq!(r.text, "[INST] <<SYS>>\nsys\n<</SYS>>\n\n plain [/INST]");
        let spans: Vec<&str> = r.content.iter().map(|c| &r.text[c.clone()]).collect();
        assert_eq!(spans, ["sys", " plain"]);
    }

    #[test]
    fn a_trimmed_role_is_found_among_many() {
        // Roles were told apart by bits of a u32, so the 33rd was taken
        // for the first, and only 31 were tried alone.
        for (roles, trimmed) in [(40, 39), (40, 0), (33, 32)] {
            let source = format!(
                "{{% for m in messages %}}[{{% if m.role == 'r{trimmed}' %}}\
                 {{{{ m.content | trim }}}}{{% else %}}{{{{ m.content }}}}{{% endif %}}]\
                 {{% endfor %}}"
            );
            let t = Template::new(&source, String::new(), String::new()).expect("parse");
            let messages: Vec<Message> = (0..roles)
                .map(|i| Message::new(&format!("r{i}"), &format!(" {i} ")))
                .collect();
            let r = t.render(&messages).expect("render");
            let want: String = (0..roles)
                .map(|i| match i == trimmed {
                    true => format!("[{i}]"),
                    false => format!("[ {i} ]"),
                })
                .collect();
            assert_eq!(r.text, want);
            let spans: Vec<&str> = r.content.iter().map(|c| &r.text[c.clone()]).collect();
            assert_eq!(spans[trimmed], trimmed.to_string());
            assert_eq!(spans[0], if trimmed == 0 { "0" } else { " 0 " });
        }
    }

    #[test]
    fn block_tags_on_lines_of_their_own_leave_no_blank_lines() {
        // Hugging Face's rendering: trim_blocks and lstrip_blocks.
        let t = Template::new(
            "{% for m in messages %}\n  <|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
             {% endfor %}\n{% if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}\n",
            String::new(),
            String::new(),
        )
        .expect("parse");
        let r = t.render(&[Message::new("user", "hi")]).expect("render");
        assert_eq!(
            r.text,
            "  <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn windows_line_breaks_in_a_template_render_as_line_feeds() {
        let unix =
            "{% for m in messages %}\n<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}\n";
        let render = |src: &str| {
            Template::new(src, String::new(), String::new())
                .expect("parse")
                .render(&[Message::new("user", "hi")])
                .expect("render")
                .text
        };
        assert_eq!(render(unix), "<|im_start|>user\nhi\n");
        // Windows and old Mac line breaks, also inside a string literal.
        for newline in ["\r\n", "\r"] {
            let other = unix.replace('\n', newline);
            assert_eq!(render(&other), render(unix), "{newline:?}");
            let literal = format!("{{{{ 'a{newline}b' }}}}{{{{ messages[0].content }}}}");
            assert_eq!(render(&literal), "a\nbhi", "{newline:?}");
        }
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let render = |src: &str, content: &str| {
            Template::new(src, String::new(), String::new())
                .expect("parse")
                .render(&[Message::new("user", content)])
                .expect("render")
                .text
        };
        // Keys in the message's order, spaced as Python spaces them.
        assert_eq!(
            render("{{ messages[0] | tojson }}", "hi"),
            r#"{"role": "user", "content": "hi"}"#
        );
        assert_eq!(
            render("{{ messages | tojson(indent=2) }}", "hi"),
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"hi\"\n  }\n]"
        );
        // HTML's characters as they are; JSON's own escapes kept, also a
        // backslash before text that spells an HTML escape.
        assert_eq!(
            render(
                "{{ messages[0].content | tojson }}",
                r#"It's <b> & "x" \u003c"#
            ),
            r#""It's <b> & \"x\" \\u003c""#
        );
        assert_eq!(
            render("{{ messages[0].content | tojson }}", "tab\t\u{1}é"),
            r#""tab\t\u0001é""#
        );
        // Python's other keyword arguments, and its way with floats.
        let dumps = |args: &str| {
            let src = format!("{{{{ messages[0] | tojson({args}) }}}}");
            render(&src, "é<")
        };
        assert_eq!(
            dumps("sort_keys=true"),
            r#"{"content": "é<", "role": "user"}"#
        );
        assert_eq!(
            dumps("separators=(',', ':')"),
            r#"{"role":"user","content":"é<"}"#
        );
        // With every character ASCII, message text is rewritten (its marks
        // too), which is refused; the template's own text is not.
        assert_eq!(
            render(
                "{{ 'é😀<' | tojson(ensure_ascii=true) }}{{ messages[0].content }}",
                "x"
            ),
            r#""\u00e9\ud83d\ude00<"x"#
        );
        assert_eq!(
            dumps("indent='\t'"),
            "{\n\t\"role\": \"user\",\n\t\"content\": \"é<\"\n}"
        );
        // Hugging Face's order for arguments given by place, and Python's
        // refusals and key order.
        assert_eq!(
            dumps("false, 1"),
            "{\n \"role\": \"user\",\n \"content\": \"é<\"\n}"
        );
        let refused = |src: &str| {
            Template::new(src, String::new(), String::new())
                .expect("parse")
                .render(&[Message::new("user", "x")])
                .expect_err("refused")
                .to_string()
        };
        for src in [
            "{{ {'a': 1, 2: 3} | tojson(sort_keys=true) }}{{ messages[0].content }}",
            "{{ 1 | tojson(separators=('a', 'b', 'c')) }}{{ messages[0].content }}",
            "{{ 1 | tojson(indent=2.0) }}{{ messages[0].content }}",
            "{% set ns = namespace() %}{% set ns.s = ns %}{{ ns | tojson }}{{ messages[0].content }}",
        ] {
            assert!(refused(src).contains("tojson"), "{src}: {}", refused(src));
        }
        assert_eq!(
            render(
                "{{ {10: 1, 9: 2, 100: 3} | tojson(sort_keys=true) }}{{ messages[0].content }}",
                "x"
            ),
            r#"{"9": 2, "10": 1, "100": 3}x"#
        );
        assert_eq!(
            dumps("indent=-1"),
            "{\n\"role\": \"user\",\n\"content\": \"é<\"\n}"
        );
        assert_eq!(
            render(
                "{{ [1e-7, 1.5, 2, none, true, 1e16] | tojson }}{{ messages[0].content }}",
                "x"
            ),
            "[1e-07, 1.5, 2, null, true, 1e+16]x"
        );
        assert_eq!(
            render(
                "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}",
                "hi"
            ),
            "role=user;content=hi;"
        );
        assert_eq!(
            render(
                "{{ {'b': 1, 'a': 2} | tojson }}{{ messages[0].content }}",
                "hi"
            ),
            r#"{"b": 1, "a": 2}hi"#
        );
    }

    #[test]
    fn a_template_that_leaves_out_the_last_message_is_refused() {
        let template = |src: &str| Template::new(src, String::new(), String::new()).expect("parse");
        let turns = [Message::new("system", "S"), Message::new("user", "x")];
        for src in [
            "Hello there",
            "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}{% endif %}\
             {% endfor %}",
        ] {
            let e = template(src).render(&turns).expect_err(src);
            assert!(e.is::<Unsendable>(), "{src}: {e:#}");
            assert_eq!(
                format!("{e:#}"),
                "the chat template leaves out the text of the last message (user), so the \
                 model would never see it"
            );
        }
        let e = template("").render(&turns).expect_err("empty");
        assert!(e.is::<Unsendable>(), "{e:#}");
        assert_eq!(
            format!("{e:#}"),
            "the chat template writes nothing for these messages, so the model would see \
             none of them"
        );
        // Written in another form, the text is still there.
        let upper = template("{% for m in messages %}{{ m.content | upper }}{% endfor %}");
        let r = upper.render(&turns).expect("render");
        assert_eq!(r.text, "SX");
    }

    #[test]
    fn templates_that_rewrite_content_are_refused_not_guessed() {
        let t = Template::new(
            "{% for m in messages %}{{ m.content[1:] }}{% endfor %}",
            String::new(),
            String::new(),
        )
        .expect("parse");
        assert!(t.render(&[Message::new("user", "abc")]).is_err());
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let endless = [
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "{% for i in range(100000) %}{{ 'x' * 10000000 }}{% endfor %}",
        ];
        for source in endless {
            let t = Template::new(source, String::new(), String::new()).expect("parse");
            let err = t
                .render(&[Message::new("user", "x")])
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains("ran out of its budget"), "{source}: {err}");
        }
    }

    #[test]
    fn a_long_conversation_fits_the_fuel_budget() {
        let big = "word ".repeat(200_000);
        let mut messages = vec![Message::new("user", &big)];
        for i in 0..2_000 {
            let role = if i % 2 == 0 { "assistant" } else { "user" };
            messages.push(Message::new(role, "a short turn of a long chat"));
        }
        let r = chatml().render(&messages).expect("render");
        assert_eq!(r.content.len(), messages.len());
        assert!(r.text.len() > big.len(), "{}", r.text.len());
    }

    #[test]
    fn broken_template_fails_to_parse() {
        assert!(Template::new("{% for %}", String::new(), String::new()).is_err());
    }

    #[test]
    fn template_errors_are_one_line_with_the_line_number() {
        let parse = Template::new("hi\n{% for %}", String::new(), String::new())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            parse.contains("syntax error") && parse.contains("chat:2"),
            "{parse}"
        );
        assert!(!parse.contains('\n'), "{parse}");

        let t = Template::new("{{ raise_exception('no') }}", String::new(), String::new())
            .expect("parse");
        let render = t
            .render(&[Message::new("user", "abc")])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(render.contains("no"), "{render}");
        assert!(!render.contains('\n'), "{render}");
    }
}
