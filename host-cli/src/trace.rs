//! Traces: what a run needs to be reproduced, and the replay that checks it.
//!
//! A trace records the model file's SHA-256, the prompt (raw text or chat
//! messages and the template), the prompt's token ids, every setting
//! including the seed, and each chosen token with its log-probability.
//! Replaying regenerates the run and compares it step by step; the first
//! difference is reported with the step and the field that differs.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chat::Message;
use crate::generate::{Engine, Finish, Outcome};
use crate::infile::named;
use crate::outfile::ReservedFile;
use crate::output::many;
use crate::settings::Settings;

/// The trace format version this build writes and reads.
pub const VERSION: u32 = 1;

/// What was asked of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", try_from = "PromptFields")]
pub enum Prompt {
    /// `talkback chat`: the messages and the template that rendered them.
    Chat {
        /// The conversation, system message included.
        messages: Vec<Message>,
        /// The Jinja template source.
        chat_template: String,
    },
    /// `talkback complete`: raw text.
    Complete {
        /// The text continued.
        text: String,
        /// Whether special-token text was parsed as control tokens.
        parse_special: bool,
    },
}

/// The fields that belong to one prompt mode or the other.
const MODE_FIELDS: [&str; 4] = ["messages", "chat_template", "text", "parse_special"];

/// A prompt as read, before its mode picks the fields it needs.
///
/// Serde reads an internally tagged enum by holding the whole object in
/// memory as generic values first, at many times its size in the file;
/// this reads the fields as they come and passes over the others. Once
/// `mode` is known (talkback writes it first), the other mode's fields
/// are passed over too, unread, but named: a prompt that holds them
/// contradicts itself and is refused.
#[derive(Default)]
struct PromptFields {
    mode: Option<String>,
    messages: Option<Vec<Message>>,
    chat_template: Option<String>,
    text: Option<String>,
    parse_special: Option<bool>,
    /// The first field of the other mode met after `mode`.
    foreign: Option<&'static str>,
}

impl<'de> Deserialize<'de> for PromptFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PromptVisitor)
    }
}

/// Reads [`PromptFields`] from an object.
struct PromptVisitor;

impl<'de> serde::de::Visitor<'de> for PromptVisitor {
    type Value = PromptFields;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a prompt object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PromptFields, A::Error> {
        use serde::de::{Error as _, IgnoredAny};
        fn once<'de, A: serde::de::MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            name: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(A::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        let mut p = PromptFields::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let mode = p.mode.as_deref();
            // Before `mode`, every field of either mode is read.
            let wanted = |of: &str| mode.map_or(true, |m| m == of);
            match key.as_ref() {
                "mode" => once(&mut map, &mut p.mode, "mode")?,
                "messages" if wanted("chat") => once(&mut map, &mut p.messages, "messages")?,
                "chat_template" if wanted("chat") => {
                    once(&mut map, &mut p.chat_template, "chat_template")?;
                }
                "text" if wanted("complete") => once(&mut map, &mut p.text, "text")?,
                "parse_special" if wanted("complete") => {
                    once(&mut map, &mut p.parse_special, "parse_special")?;
                }
                name if MODE_FIELDS.contains(&name) => {
                    p.foreign = p.foreign.or(MODE_FIELDS.into_iter().find(|f| *f == name));
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }
}

impl TryFrom<PromptFields> for Prompt {
    type Error = String;

    fn try_from(p: PromptFields) -> Result<Self, String> {
        let missing = |field: &str| format!("missing field `{field}`");
        let mode = p.mode.as_deref().ok_or_else(|| missing("mode"))?;
        // Fields of the other mode read before `mode` came.
        let early = match mode {
            "chat" if p.text.is_some() => Some("text"),
            "chat" if p.parse_special.is_some() => Some("parse_special"),
            "complete" if p.messages.is_some() => Some("messages"),
            "complete" if p.chat_template.is_some() => Some("chat_template"),
            _ => None,
        };
        let known = matches!(mode, "chat" | "complete");
        if let Some(field) = p.foreign.or(early).filter(|_| known) {
            let other = if mode == "chat" { "complete" } else { "chat" };
            return Err(format!(
                "its `{mode}` prompt holds `{field}`, a field of `{other}` prompts"
            ));
        }
        match mode {
            "chat" => Ok(Prompt::Chat {
                messages: p.messages.ok_or_else(|| missing("messages"))?,
                chat_template: p.chat_template.ok_or_else(|| missing("chat_template"))?,
            }),
            "complete" => Ok(Prompt::Complete {
                text: p.text.ok_or_else(|| missing("text"))?,
                parse_special: p.parse_special.ok_or_else(|| missing("parse_special"))?,
            }),
            other => Err(format!(
                "unknown variant `{other}`, expected `chat` or `complete`"
            )),
        }
    }
}

/// Reads a present `text` as a string: `null` is refused, not taken for
/// a trace of an older version, which leaves the field out.
fn some_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// Whether `c` cannot be told apart on a terminal: a character of no
/// width of its own (a combining mark, which would join the character
/// before it; a zero-width space or joiner; a byte-order mark) or a space
/// other than U+0020. Control characters are left to the error line.
fn unseen(c: char) -> bool {
    use unicode_width::UnicodeWidthChar as _;
    !c.is_control() && (c.width().map_or(true, |w| w == 0) || (c.is_whitespace() && c != ' '))
}

/// One generated token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    /// Token id.
    pub id: u32,
    /// Log-probability under the final distribution.
    #[serde(deserialize_with = "crate::settings::json_finite")]
    pub logprob: f32,
}

/// A recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Format version.
    pub version: u32,
    /// `talkback`'s version that wrote it.
    pub talkback_version: String,
    /// SHA-256 of the model file, lowercase hex.
    pub model_sha256: String,
    /// The model's file name, for messages.
    pub model_file: String,
    /// What was asked.
    #[serde(deserialize_with = "crate::infile::object")]
    pub prompt: Prompt,
    /// The prompt's token ids.
    pub prompt_tokens: Vec<u32>,
    /// Every setting, the seed included.
    #[serde(deserialize_with = "crate::infile::object")]
    pub settings: Settings,
    /// The generated tokens.
    #[serde(deserialize_with = "crate::infile::objects")]
    pub steps: Vec<TraceStep>,
    /// Why the run ended.
    pub finish_reason: String,
    /// The text the run released, as `--format json` prints it. Absent
    /// from traces of older versions, whose replays do not compare it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_text"
    )]
    pub text: Option<String>,
}

/// SHA-256 of a file, lowercase hex.
///
/// # Errors
///
/// - the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", named(path)))?;
    sha256_of(&file, path)
}

/// SHA-256 of all of an open file, from its start, lowercase hex; `path`
/// names it in errors.
///
/// # Errors
///
/// - the file cannot be read.
pub fn sha256_of(file: &File, path: &Path) -> Result<String> {
    use std::io::Seek as _;
    let mut file = file;
    file.rewind()
        .with_context(|| format!("cannot read {}", named(path)))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0_u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", named(path)))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl Trace {
    /// A trace of a finished run.
    pub fn new(
        model_path: &Path,
        model_sha256: String,
        prompt: Prompt,
        prompt_tokens: Vec<u32>,
        settings: Settings,
        outcome: &Outcome,
        text: &[u8],
    ) -> Self {
        Self {
            version: VERSION,
            talkback_version: env!("CARGO_PKG_VERSION").to_owned(),
            model_sha256,
            model_file: model_path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            prompt,
            prompt_tokens,
            settings,
            steps: outcome
                .tokens
                .iter()
                .map(|&(id, logprob)| TraceStep { id, logprob })
                .collect(),
            finish_reason: outcome.finish.as_str().to_owned(),
            text: Some(String::from_utf8_lossy(text).into_owned()),
        }
    }

    /// Writes the trace as pretty JSON to `out`.
    ///
    /// # Errors
    ///
    /// - the file cannot be written.
    pub fn save(&self, mut out: TraceFile) -> Result<()> {
        let mut json = serde_json::to_string_pretty(self).context("cannot encode the trace")?;
        json.push('\n');
        out.0
            .replace(json.as_bytes())
            .with_context(|| format!("cannot write trace {}", named(out.0.path())))
    }

    /// Reads and checks a trace file.
    ///
    /// # Errors
    ///
    /// - the file is missing, not JSON, truncated, or of another version.
    pub fn load(path: &Path) -> Result<Self> {
        let name = crate::infile::shown(path);
        let bytes = crate::infile::read_input(path, crate::infile::MAX_TRACE)
            .with_context(|| format!("cannot read trace {name}"))?;
        let bytes = crate::infile::without_bom(&bytes);
        // A list would be read as the fields in order.
        let list = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        if list && crate::infile::json_kind(bytes) == "an array" {
            bail!("trace {name} is not a talkback trace: it holds an array, not a JSON object");
        }
        let mut trace: Self = crate::infile::from_json(bytes).map_err(|e| {
            // Another file (a messages file, talkback's own json or jsonl
            // output) is named as such, not by the first field that fails.
            if crate::infile::object_without(bytes, "version") {
                return anyhow!("trace {name} is not a talkback trace: it has no `version` field");
            }
            match crate::infile::json_kind(bytes) {
                "an object" | "no JSON" => anyhow!("trace {name} is not a valid trace: {e}"),
                kind => anyhow!(
                    "trace {name} is not a talkback trace: it holds {kind}, not a JSON object"
                ),
            }
        })?;
        if trace.version != VERSION {
            bail!(
                "trace {name} has format version {}; this build reads version {VERSION}",
                trace.version
            );
        }
        // A trace edited by hand can hold settings the command line never
        // accepts; refuse them here instead of partway through the replay.
        let config = trace
            .settings
            .check()
            .with_context(|| format!("trace {name} has invalid settings"))?;
        // An order written with a preset or other names (`talkback`,
        // `top_k`) runs, and is then shown by the names of its stages.
        trace.settings.sampler_order = crate::settings::order_names(&config.order);
        if trace.settings.sampler != Engine::Talkback {
            bail!("trace {name} names llama.cpp's sampler, which cannot be replayed");
        }
        // Every run decodes a prompt of at least one token.
        if trace.prompt_tokens.is_empty() {
            bail!("trace {name}: `prompt_tokens` is empty, and every run's prompt has a token");
        }
        let sha = &trace.model_sha256;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "trace {name}: `model_sha256` is not a SHA-256 (64 hexadecimal digits): \
                 {sha:?}"
            );
        }
        if let Some(cap) = trace
            .settings
            .n_predict
            .filter(|&n| trace.steps.len() > n as usize)
        {
            bail!(
                "trace {name} records {} steps, more than its n_predict of {cap} lets a run make",
                trace.steps.len()
            );
        }
        let Some(finish) = Finish::from_name(&trace.finish_reason) else {
            bail!(
                "trace {name} has an unknown finish reason {:?}",
                trace.finish_reason
            );
        };
        // A run ends on `length` only when it has made its cap of steps.
        let cap = trace.settings.n_predict.map(|n| n as usize);
        if finish == Finish::Length && cap != Some(trace.steps.len()) {
            bail!(
                "trace {name} ends on `length` after {} steps, but its n_predict is {}",
                trace.steps.len(),
                cap.map_or("unlimited".to_owned(), |n| n.to_string())
            );
        }
        // At the cap a run ends on `length` before it looks at the end of
        // the turn or the context (a stop string it sees first).
        let at_cap = cap == Some(trace.steps.len());
        if at_cap && matches!(finish, Finish::EndOfTurn | Finish::ContextFull) {
            bail!(
                "trace {name} ends on `{}` after {} steps, its n_predict, where a run ends \
                 on `length`",
                trace.finish_reason,
                trace.steps.len()
            );
        }
        // With `ignore_eos` a run never ends on the end of the turn, and
        // without stop strings never on one.
        if finish == Finish::EndOfTurn && trace.settings.ignore_eos {
            bail!("trace {name} ends on `end_of_turn`, which its ignore_eos setting rules out");
        }
        if finish == Finish::StopString && trace.settings.stops.is_empty() {
            bail!("trace {name} ends on `stop_string`, but it has no stop strings");
        }
        Ok(trace)
    }
}

/// The file a trace goes to, opened before the run so that a path that
/// cannot be written fails before anything is generated.
pub struct TraceFile(ReservedFile);

impl TraceFile {
    /// Opens `path` for writing, creating it if needed, without changing it yet.
    ///
    /// # Errors
    ///
    /// - the file cannot be opened for writing (a directory, a missing
    ///   folder, no permission).
    pub fn open(path: &Path) -> Result<Self> {
        ReservedFile::open(path, "trace").map(Self)
    }
}

/// Where a replay first differs from its trace.
#[derive(Debug, Clone, PartialEq)]
pub enum Divergence {
    /// The prompt tokenized differently.
    PromptToken {
        /// Index in the prompt.
        index: usize,
        /// Recorded id, if the recorded prompt was that long.
        expected: Option<u32>,
        /// Regenerated id, if the new prompt was that long.
        got: Option<u32>,
    },
    /// A step chose another token.
    Token {
        /// Step index, from 0.
        step: usize,
        /// Recorded id.
        expected: u32,
        /// Regenerated id.
        got: u32,
    },
    /// A step chose the same token with a different log-probability.
    Logprob {
        /// Step index, from 0.
        step: usize,
        /// Recorded value.
        expected: f32,
        /// Regenerated value.
        got: f32,
    },
    /// One run has more tokens than the other.
    Length {
        /// Recorded count.
        expected: usize,
        /// Regenerated count.
        got: usize,
        /// Recorded finish reason.
        recorded: String,
        /// How the replay ended.
        replayed: String,
    },
    /// Same tokens, another finish reason.
    Finish {
        /// Recorded reason.
        expected: String,
        /// Regenerated reason.
        got: String,
    },
    /// Same tokens and finish, another text (a stop string edited, say).
    Text {
        /// Byte offset of the first difference.
        at: usize,
        /// The recorded text from there, shortened.
        expected: String,
        /// The regenerated text from there, shortened.
        got: String,
    },
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |t: &Option<u32>| t.map_or("nothing".to_owned(), |t| t.to_string());
        match self {
            Self::PromptToken {
                index,
                expected,
                got,
            } => write!(
                f,
                "prompt token {index}: field `prompt_tokens` expected {}, got {}",
                show(expected),
                show(got)
            ),
            Self::Token {
                step,
                expected,
                got,
            } => write!(
                f,
                "step {step}: field `id` expected token {expected}, got token {got}"
            ),
            Self::Logprob {
                step,
                expected,
                got,
            } => write!(
                f,
                "step {step}: field `logprob` expected {expected:?}, got {got:?}"
            ),
            // A replay runs one step past the recorded ones at most, so
            // how it ended says something only when it ended first.
            Self::Length {
                expected,
                got,
                recorded,
                replayed,
            } if got < expected => write!(
                f,
                "step {got}: field `steps` expected {}, got {got}: the replay ended there on \
                 `{replayed}`; the recorded run went on, to end on `{recorded}`",
                many(*expected, "token")
            ),
            Self::Length {
                expected, recorded, ..
            } => write!(
                f,
                "step {expected}: field `steps` expected {}, ending on `{recorded}`, but the \
                 replay went on",
                many(*expected, "token")
            ),
            Self::Text { at, expected, got } => write!(
                f,
                "field `text` differs from byte {at}: expected \"{expected}\", got \"{got}\""
            ),
            Self::Finish { expected, got } => {
                write!(f, "field `finish_reason` expected {expected}, got {got}")
            }
        }
    }
}

/// Compares prompt tokens, then steps, then the finish reason.
pub fn compare(
    trace: &Trace,
    prompt_tokens: &[u32],
    steps: &[(u32, f32)],
    finish: Finish,
    text: &str,
) -> Option<Divergence> {
    let n = trace.prompt_tokens.len().max(prompt_tokens.len());
    for index in 0..n {
        let expected = trace.prompt_tokens.get(index).copied();
        let got = prompt_tokens.get(index).copied();
        if expected != got {
            return Some(Divergence::PromptToken {
                index,
                expected,
                got,
            });
        }
    }
    for (step, (rec, &(id, logprob))) in trace.steps.iter().zip(steps).enumerate() {
        if rec.id != id {
            return Some(Divergence::Token {
                step,
                expected: rec.id,
                got: id,
            });
        }
        // Bit equality: replay promises the same numbers, not close ones.
        if rec.logprob.to_bits() != logprob.to_bits() {
            return Some(Divergence::Logprob {
                step,
                expected: rec.logprob,
                got: logprob,
            });
        }
    }
    if trace.steps.len() != steps.len() {
        return Some(Divergence::Length {
            expected: trace.steps.len(),
            got: steps.len(),
            recorded: trace.finish_reason.clone(),
            replayed: finish.as_str().to_owned(),
        });
    }
    if trace.finish_reason != finish.as_str() {
        return Some(Divergence::Finish {
            expected: trace.finish_reason.clone(),
            got: finish.as_str().to_owned(),
        });
    }
    let recorded = trace.text.as_deref()?;
    // An interrupted run may have held back the start of a possible stop
    // string that its replay, ending at the same step, releases, or have
    // released text its replay holds back before a stop string: the end
    // may differ, not a byte both have.
    let matches = if finish == Finish::Interrupted {
        text.starts_with(recorded) || recorded.starts_with(text)
    } else {
        text == recorded
    };
    if matches {
        return None;
    }
    let at = recorded
        .char_indices()
        .zip(text.chars())
        .find(|((_, a), b)| a != b)
        .map_or(recorded.len().min(text.len()), |((i, _), _)| i);
    let from = |s: &str| {
        let rest = s.get(at..).unwrap_or_default();
        // Quoted in the message: its quotes and backslashes are escaped,
        // and so is what cannot be seen (two texts that differ by it would
        // read the same) or would join the quote; the error line escapes
        // what would break it.
        let mut shown = String::new();
        for c in rest.chars().take(40) {
            if matches!(c, '"' | '\\') {
                shown.push('\\');
            }
            if unseen(c) {
                shown.extend(c.escape_unicode());
            } else {
                shown.push(c);
            }
        }
        if rest.chars().nth(40).is_some() {
            shown.push_str("...");
        }
        shown
    };
    Some(Divergence::Text {
        at,
        expected: from(recorded),
        got: from(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(steps: &[(u32, f32)], finish: &str) -> Trace {
        // A run ends on `length` at its cap.
        let cap = (finish == "length").then_some(steps.len());
        Trace {
            version: VERSION,
            talkback_version: "0".into(),
            model_sha256: "0".repeat(64),
            model_file: "m.gguf".into(),
            prompt: Prompt::Complete {
                text: "hi".into(),
                parse_special: false,
            },
            prompt_tokens: vec![1, 2],
            settings: serde_json::from_value(serde_json::json!({
                "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                "repeat_penalty": 1.0, "repeat_last_n": 0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "sampler_order": ["temp"], "seed": 1,
                "n_predict": cap, "stops": [], "ignore_eos": false, "ctx_size": 64,
                "batch_size": 32, "sampler": "talkback"
            }))
            .expect("settings"),
            steps: steps
                .iter()
                .map(|&(id, logprob)| TraceStep { id, logprob })
                .collect(),
            finish_reason: finish.into(),
            text: None,
        }
    }

    #[test]
    fn identical_runs_do_not_diverge() {
        let t = trace(&[(5, -0.5), (6, -1.25)], "length");
        assert_eq!(
            compare(&t, &[1, 2], &[(5, -0.5), (6, -1.25)], Finish::Length, ""),
            None
        );
    }

    #[test]
    fn first_differing_step_and_field_are_named() {
        let t = trace(&[(5, -0.5), (6, -1.25), (7, -2.0)], "length");
        let d = compare(
            &t,
            &[1, 2],
            &[(5, -0.5), (9, -1.25), (8, -2.0)],
            Finish::Length,
            "",
        );
        assert_eq!(
            d,
            Some(Divergence::Token {
                step: 1,
                expected: 6,
                got: 9
            })
        );
        let d = compare(
            &t,
            &[1, 2],
            &[(5, -0.5), (6, -1.0), (7, -2.0)],
            Finish::Length,
            "",
        );
        assert!(
            matches!(d, Some(Divergence::Logprob { step: 1, .. })),
            "{d:?}"
        );
        let text = d.map(|d| d.to_string()).unwrap_or_default();
        assert!(text.starts_with("step 1: field `logprob`"), "{text}");
    }

    #[test]
    fn prompt_length_and_finish_differences_are_reported() {
        let t = trace(&[(5, -0.5)], "end_of_turn");
        assert!(matches!(
            compare(&t, &[1, 3], &[(5, -0.5)], Finish::EndOfTurn, ""),
            Some(Divergence::PromptToken { index: 1, .. })
        ));
        let longer = compare(&t, &[1, 2], &[(5, -0.5), (6, -1.0)], Finish::Length, "");
        assert!(matches!(
            longer,
            Some(Divergence::Length {
                expected: 1,
                got: 2,
                ..
            })
        ));
        assert_eq!(
            longer.map(|d| d.to_string()).unwrap_or_default(),
            "step 1: field `steps` expected 1 token, ending on `end_of_turn`, but the \
             replay went on"
        );
        let t = trace(&[(5, -0.5), (6, -1.0)], "end_of_turn");
        let shorter = compare(&t, &[1, 2], &[(5, -0.5)], Finish::StopString, "");
        assert_eq!(
            shorter.map(|d| d.to_string()).unwrap_or_default(),
            "step 1: field `steps` expected 2 tokens, got 1: the replay ended there on \
             `stop_string`; the recorded run went on, to end on `end_of_turn`"
        );
        let t = trace(&[(5, -0.5)], "end_of_turn");
        assert!(matches!(
            compare(&t, &[1, 2], &[(5, -0.5)], Finish::Length, ""),
            Some(Divergence::Finish { .. })
        ));
    }

    #[test]
    fn a_text_that_differs_is_named_from_its_first_differing_byte() {
        let mut t = trace(&[(5, -0.5)], "stop_string");
        let steps = [(5, -0.5)];
        // Traces of older versions hold no text to compare.
        assert_eq!(compare(&t, &[1, 2], &steps, Finish::StopString, "x"), None);
        t.text = Some(", the local ".into());
        assert_eq!(
            compare(&t, &[1, 2], &steps, Finish::StopString, ", the local "),
            None
        );
        let d = compare(&t, &[1, 2], &steps, Finish::StopString, ", the local mar");
        assert_eq!(
            d.map(|d| d.to_string()).as_deref(),
            Some("field `text` differs from byte 12: expected \"\", got \"mar\"")
        );
        let d = compare(&t, &[1, 2], &steps, Finish::StopString, ", thé\nlocal ");
        assert_eq!(
            d.map(|d| d.to_string()).as_deref(),
            Some("field `text` differs from byte 4: expected \"e local \", got \"é\nlocal \"")
        );
        // Quotes and backslashes are escaped in the quoted text.
        let d = compare(&t, &[1, 2], &steps, Finish::StopString, ", the \"lo\\\" ");
        assert_eq!(
            d.map(|d| d.to_string()).as_deref(),
            Some("field `text` differs from byte 6: expected \"local \", got \"\\\"lo\\\\\\\" \"")
        );
        // What cannot be seen is named, and so is a mark that would join
        // the quote, or a space that is not U+0020.
        let d = compare(
            &t,
            &[1, 2],
            &steps,
            Finish::StopString,
            ", the lo\u{200b}cal ",
        );
        assert_eq!(
            d.map(|d| d.to_string()).as_deref(),
            Some("field `text` differs from byte 8: expected \"cal \", got \"\\u{200b}cal \"")
        );
        let d = compare(
            &t,
            &[1, 2],
            &steps,
            Finish::StopString,
            ", the lo\u{3099}c\u{301}al\u{a0}",
        );
        assert_eq!(
            d.map(|d| d.to_string()).as_deref(),
            Some(
                "field `text` differs from byte 8: expected \"cal \", got \
                 \"\\u{3099}c\\u{301}al\\u{a0}\""
            )
        );
        // An interrupted run's text and its replay's may end apart.
        t.finish_reason = "interrupted".into();
        for replayed in [", the local", ", the local mar", ""] {
            assert_eq!(
                compare(&t, &[1, 2], &steps, Finish::Interrupted, replayed),
                None
            );
        }
        let d = compare(&t, &[1, 2], &steps, Finish::Interrupted, ", the lo-al");
        assert!(matches!(d, Some(Divergence::Text { at: 8, .. })), "{d:?}");
    }

    #[test]
    fn load_refuses_settings_the_command_line_would_not_accept() {
        let path = std::env::temp_dir().join(format!(
            "talkback-trace-settings-{}.json",
            std::process::id()
        ));
        let edits: [(&str, serde_json::Value, &str); 4] = [
            ("batch_size", serde_json::json!(0), "batch of 0 tokens"),
            ("repeat_last_n", serde_json::json!(5000), "5000 tokens"),
            ("stops", serde_json::json!([""]), "empty"),
            (
                "sampler",
                serde_json::json!("llama.cpp"),
                "cannot be replayed",
            ),
        ];
        for (field, value, needle) in edits {
            let mut t = serde_json::to_value(trace(&[(5, -0.5)], "length")).expect("encode");
            t["settings"][field] = value;
            std::fs::write(&path, t.to_string()).expect("write");
            let err = Trace::load(&path)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains(needle), "{field}: {err}");
        }
        let t = serde_json::to_string(&trace(&[(5, -0.5)], "length")).expect("encode");
        std::fs::write(&path, t).expect("write");
        let loaded = Trace::load(&path).map(|t| t.steps.len());
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded.ok(), Some(1));
    }

    #[test]
    fn load_takes_objects_only_not_values_by_position() {
        let path =
            std::env::temp_dir().join(format!("talkback-trace-lists-{}.json", std::process::id()));
        let load = |t: &serde_json::Value| {
            std::fs::write(&path, t.to_string()).expect("write");
            Trace::load(&path)
                .map(|t| t.steps.len())
                .map_err(|e| format!("{e:#}"))
        };
        let base = serde_json::to_value(trace(&[(5, -0.5), (6, -0.25)], "length")).expect("encode");
        let values = |v: &serde_json::Value| {
            let object = v.as_object().expect("object");
            serde_json::Value::Array(object.values().cloned().collect())
        };
        let mut edits = Vec::new();
        for field in ["settings", "prompt"] {
            let mut t = base.clone();
            t[field] = values(&base[field]);
            edits.push(t);
        }
        let mut t = base.clone();
        t["steps"][1] = values(&base["steps"][1]);
        edits.push(t);
        let mut empty = base.clone();
        empty["prompt_tokens"] = serde_json::json!([]);
        assert!(
            load(&empty)
                .err()
                .unwrap_or_default()
                .ends_with(": `prompt_tokens` is empty, and every run's prompt has a token"),
            "an empty prompt was read"
        );
        for t in &edits {
            let err = load(t).err().unwrap_or_default();
            assert!(
                err.contains("invalid type: sequence, expected a JSON object"),
                "{err}"
            );
        }
        let loaded = load(&base);
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded, Ok(2));
    }

    #[test]
    fn a_prompt_reads_the_fields_of_its_mode_and_refuses_the_other_modes() {
        let read = |prompt: &str| serde_json::from_str::<Prompt>(prompt).map_err(|e| e.to_string());
        // Unknown fields are passed over, whatever they hold.
        let complete = read(
            r#"{"junk": [[0, {"a": 1}], "x"], "mode": "complete", "text": "hi",
                "parse_special": true, "notes": null}"#,
        );
        assert_eq!(
            complete,
            Ok(Prompt::Complete {
                text: "hi".into(),
                parse_special: true
            })
        );
        let chat = read(
            r#"{"chat_template": "t", "messages": [{"role": "user", "content": "c"}],
                "mode": "chat"}"#,
        );
        assert_eq!(
            chat,
            Ok(Prompt::Chat {
                messages: vec![Message::new("user", "c")],
                chat_template: "t".into()
            })
        );
        for (prompt, want) in [
            (
                r#"{"mode": "chat", "chat_template": "t"}"#,
                "missing field `messages`",
            ),
            (
                r#"{"mode": "complete", "text": "hi"}"#,
                "missing field `parse_special`",
            ),
            (
                r#"{"mode": "story", "text": "hi"}"#,
                "unknown variant `story`, expected `chat` or `complete`",
            ),
            (r#"{"text": "hi"}"#, "missing field `mode`"),
            (
                r#"{"mode": "complete", "text": null, "parse_special": true}"#,
                "invalid type: null, expected a string",
            ),
            (
                r#"{"mode": "chat", "mode": "chat"}"#,
                "duplicate field `mode`",
            ),
            // The other mode's fields, after `mode` (passed over unread,
            // whatever they hold) or before it.
            (
                r#"{"mode": "complete", "text": "hi", "parse_special": true, "messages": 5}"#,
                "its `complete` prompt holds `messages`, a field of `chat` prompts",
            ),
            (
                r#"{"mode": "complete", "text": "hi", "parse_special": true,
                    "chat_template": null, "messages": []}"#,
                "its `complete` prompt holds `chat_template`, a field of `chat` prompts",
            ),
            (
                r#"{"parse_special": false, "mode": "chat", "chat_template": "t",
                    "messages": [{"role": "user", "content": "c"}]}"#,
                "its `chat` prompt holds `parse_special`, a field of `complete` prompts",
            ),
        ] {
            let error = read(prompt).err().unwrap_or_default();
            assert!(error.starts_with(want), "{prompt}: {error}");
        }
    }

    #[test]
    fn trace_numbers_are_read_from_their_text_as_flags_are() {
        let path =
            std::env::temp_dir().join(format!("talkback-trace-range-{}.json", std::process::id()));
        let base = serde_json::to_value(trace(&[(5, -0.5)], "length")).expect("encode");
        // The trace with the number at `at` (a setting, or a step's
        // log-probability) written as `text`.
        let load = |at: &str, text: &str| {
            let mut t = base.clone();
            match at {
                "logprob" => t["steps"][0]["logprob"] = serde_json::json!("@"),
                field => t["settings"][field] = serde_json::json!("@"),
            }
            let json = t.to_string().replace("\"@\"", text);
            std::fs::write(&path, json).expect("write");
            Trace::load(&path).map_err(|e| format!("{e:#}"))
        };
        let refused = |at: &str, text: &str, why: &str| {
            let err = load(at, text).err().unwrap_or_default();
            let place = match at {
                "logprob" => "steps[0].logprob".to_owned(),
                field => format!("settings.{field}"),
            };
            let want = format!("at `{place}`: `{text}` {why}");
            assert!(err.contains(&want), "{want}: {err}");
        };
        let range = "is out of range: a 32-bit float holds at most about 3.4e38";
        for at in ["temperature", "top_p", "repeat_penalty", "presence_penalty"] {
            refused(at, "1e39", range);
        }
        refused("logprob", "-1e39", range);
        // A temperature of 1e-50 would become 0, that is greedy.
        refused(
            "temperature",
            "1e-50",
            "is too small for a 32-bit float, which would make it 0",
        );
        // Above 1 by less than an f32 can tell is still above 1, as on the
        // command line.
        refused("top_p", "1.00000001", "must be between 0 and 1");
        refused("min_p", "-0.5", "must be between 0 and 1");
        refused("repeat_penalty", "0", "must be more than zero");
        let err = load("temperature", "\"0.5\"").err().unwrap_or_default();
        assert!(
            err.contains("at `settings.temperature`: expected a number, found a string"),
            "{err}"
        );
        let temperature = |text: &str| load("temperature", text).map(|t| t.settings.temperature);
        // The least float is kept as it is; the largest is a temperature,
        // if a strange one.
        assert_eq!(
            load("presence_penalty", "1e-45").map(|t| t.settings.presence_penalty),
            Ok(f32::from_bits(1))
        );
        assert_eq!(temperature("3.4e38"), Ok(3.4e38));
        // Read through an f64, what talkback writes for this f32 came
        // back as its neighbour, and this text, just above halfway between
        // 1 and the next f32, as 1.
        let written = f32::from_bits(0x15ae_43fd);
        assert_eq!(written.to_string(), "0.00000000000000000000000007038531");
        for (text, want) in [
            ("7.038531e-26", written),
            ("1.00000005960464477539063", 1.000_000_1),
        ] {
            assert_eq!(temperature(text).map(f32::to_bits), Ok(want.to_bits()));
        }
        let logprob = load("logprob", "-7.038531e-26").map(|t| t.steps[0].logprob.to_bits());
        assert_eq!(logprob, Ok((-written).to_bits()));
        // An order by a preset, or by other names, is shown by its stages'.
        for order in [
            r#"["talkback"]"#,
            r#"["temperature", "top_k", "top_p", "min_p"]"#,
        ] {
            let names = load("sampler_order", order).map(|t| t.settings.sampler_order);
            assert_eq!(
                names,
                Ok(vec![
                    "temp".into(),
                    "top-k".into(),
                    "top-p".into(),
                    "min-p".into()
                ])
            );
        }
        // Each name is one stage as written: a comma inside one, a blank
        // one or spaces are no list a run records.
        for (order, want) in [
            (
                r#"["temp", ""]"#,
                "sampler_order: `` is not the name of a stage",
            ),
            (
                r#"["temp,top-k"]"#,
                "sampler_order: `temp,top-k` is not the name",
            ),
            (r#"[" temp "]"#, "sampler_order: ` temp ` is not the name"),
            ("[]", "sampler_order names no stage"),
            (
                r#"["top-k", "temp", "top-k"]"#,
                "sampler_order: stage order must name",
            ),
        ] {
            let err = load("sampler_order", order).err().unwrap_or_default();
            assert!(err.contains(want), "{order}: {err}");
        }
        for (sampler, want) in [
            (
                "null",
                "at `settings.sampler`: invalid type: null, expected a string",
            ),
            (
                "\"greedy\"",
                "unknown sampler `greedy`, expected `talkback` or `llama.cpp`",
            ),
        ] {
            let err = load("sampler", sampler).err().unwrap_or_default();
            assert!(err.contains(want), "{err}");
        }
        // -0 is 0, as on the command line, and prints so.
        assert_eq!(temperature("-0.0").map(f32::to_bits), Ok(0));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn traces_round_trip_through_json_bit_for_bit() {
        let t = trace(&[(5, -0.123_456_79), (6, f32::MIN_POSITIVE)], "length");
        let json = serde_json::to_string(&t).expect("encode");
        let back: Trace = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, t);
        assert_eq!(
            back.steps[0].logprob.to_bits(),
            t.steps[0].logprob.to_bits()
        );
    }
}
