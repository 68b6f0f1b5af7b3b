//! Chat templates: rendering a conversation the way the model was tuned on it.
//!
//! The model's own Jinja template (from its GGUF metadata, or a file given
//! with `--chat-template`) is rendered with `minijinja`. So that a user who
//! types `<|im_end|>` sends text rather than a control token, the rendered
//! prompt is split into template spans, tokenized with special-token parsing,
//! and message spans, tokenized without it.

use anyhow::{anyhow, Context as _, Result};
use llama_cpp_2::token::LlamaToken;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::model::Model;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
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

/// Work one render may do, in minijinja's fuel: about one unit per
/// instruction and per 64 bytes of data made. Real chat templates use a few
/// dozen units per message; the budget stops a template that loops or
/// builds text without end (it would otherwise hang, deaf to Ctrl-C, until
/// memory ran out) while leaving room for hundreds of megabytes of messages.
pub const FUEL: u64 = 10_000_000;

// Private-use characters that mark where a message's content starts and ends
// in the rendered text. Templates pass content through, so the marks show
// where user text lies without guessing.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// A chat template ready to render.
pub struct Template {
    env: Environment<'static>,
    bos: String,
    eos: String,
    source: String,
}

/// A rendered prompt: its text and which byte ranges are message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt exactly as the model sees it.
    pub text: String,
    /// Byte ranges of `text` that hold message content.
    pub content: Vec<std::ops::Range<usize>>,
}

impl Template {
    /// Compiles a Jinja chat template.
    ///
    /// # Errors
    ///
    /// - the template does not parse.
    pub fn new(source: &str, bos: String, eos: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<(), JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_owned())
            // `{e:#}` would add minijinja's source excerpt over several lines;
            // the plain form names the error, template and line in one.
            .map_err(|e| anyhow!("the chat template does not parse: {e}"))?;
        Ok(Self {
            env,
            bos,
            eos,
            source: source.to_owned(),
        })
    }

    /// The model's own template, from its GGUF metadata.
    ///
    /// # Errors
    ///
    /// - the model has no chat template, or it does not parse.
    pub fn from_model(model: &Model) -> Result<Self> {
        let source = model
            .inner()
            .meta_val_str("tokenizer.chat_template")
            .map_err(|_| {
                anyhow!(
                    "model {} has no chat template; use `complete`, \
                     or give one with --chat-template FILE",
                    model.path().display()
                )
            })?;
        Self::new(
            &source,
            model.bos_text().unwrap_or_default(),
            model.eos_text().unwrap_or_default(),
        )
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`, ending with the assistant's generation prompt.
    ///
    /// Templates that trim message text are rendered with the text trimmed
    /// beforehand, which gives the same prompt and keeps the content spans.
    ///
    /// # Errors
    ///
    /// - the template fails to render (for example it raises an exception);
    /// - the template rewrites message content in a way that hides where it is.
    pub fn render(&self, messages: &[Message]) -> Result<Rendered> {
        if let Some(rendered) = self.render_marked(messages)? {
            return Ok(rendered);
        }
        let trimmed: Vec<Message> = messages
            .iter()
            .map(|m| Message::new(&m.role, m.content.trim()))
            .collect();
        self.render_marked(&trimmed)?.ok_or_else(|| {
            anyhow!(
                "the chat template rewrites message text, so user text \
                 cannot be kept apart from control tokens"
            )
        })
    }

    /// Renders with content marks; `None` when the marks change the result.
    fn render_marked(&self, messages: &[Message]) -> Result<Option<Rendered>> {
        let plain = self.render_raw(messages)?;
        let marked: Vec<Message> = messages
            .iter()
            .map(|m| Message {
                role: m.role.clone(),
                content: format!("{OPEN}{}{CLOSE}", m.content),
            })
            .collect();
        let with_marks = self.render_raw(&marked)?;

        let mut text = String::with_capacity(plain.len());
        let mut content = Vec::new();
        let mut start = None;
        for ch in with_marks.chars() {
            match ch {
                OPEN => start = Some(text.len()),
                CLOSE => {
                    if let Some(s) = start.take() {
                        content.push(s..text.len());
                    }
                }
                _ => text.push(ch),
            }
        }
        Ok((text == plain).then_some(Rendered { text, content }))
    }

    fn render_raw(&self, messages: &[Message]) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| anyhow!("chat template: {e}"))?;
        tmpl.render(context! {
            messages => messages.iter().map(message_value).collect::<Value>(),
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| {
            if e.kind() == ErrorKind::OutOfFuel {
                anyhow!(
                    "the chat template failed to render: it ran out of its budget of \
                     {FUEL} steps; does it loop without end?"
                )
            } else {
                anyhow!("the chat template failed to render: {e}")
            }
        })
    }
}

/// A message as the template sees it: a map with `role` and `content`.
fn message_value(m: &Message) -> Value {
    let map: std::collections::BTreeMap<&str, Value> = [
        ("role", Value::from(m.role.as_str())),
        ("content", Value::from(m.content.as_str())),
    ]
    .into_iter()
    .collect();
    Value::from(map)
}

/// Tokenizes a rendered prompt: template text with special tokens parsed,
/// message content as plain text, and a BOS only where the template did not
/// already write one.
pub fn tokenize(model: &Model, rendered: &Rendered) -> Result<Vec<LlamaToken>> {
    let mut tokens = Vec::new();
    let bos_written = model
        .bos_text()
        .is_some_and(|b| !b.is_empty() && rendered.text.starts_with(&b));
    if model.wants_bos() && !bos_written {
        tokens.extend(model.tokenize("", true, false));
    }
    let mut at = 0;
    for range in &rendered.content {
        let template = rendered
            .text
            .get(at..range.start)
            .context("content range out of order")?;
        tokens.extend(model.tokenize(template, false, true));
        let user = rendered
            .text
            .get(range.clone())
            .context("content range out of bounds")?;
        tokens.extend(model.tokenize(user, false, false));
        at = range.end;
    }
    let tail = rendered.text.get(at..).unwrap_or_default();
    tokens.extend(model.tokenize(tail, false, true));
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and \
        messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}\
        {% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + \
        '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn chatml() -> Template {
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
