//! Loading a GGUF model through llama.cpp and holding a decoding session.
//!
//! A [`Model`] owns the llama.cpp backend and weights; a [`Session`] owns one
//! context (the KV cache) and knows which tokens it holds, so a chat can
//! append a turn without decoding the whole conversation again.

use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use anyhow::{bail, Context as _, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaModelLoadError, LogOptions};

use crate::cli::ModelArgs;
use crate::generate::INTERRUPTED;
use crate::gguf;
use crate::infile::named;
use crate::settings::DEFAULT_CTX;

/// File name of the default model, as installed by `fixtures/fetch-model.sh`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model path to use: `--model`, else `$TALKBACK_MODEL` if it is not
/// empty, else the fetched default under the workspace's `models/` folder.
pub fn resolve_path(arg: Option<&Path>) -> PathBuf {
    resolve(arg, std::env::var_os("TALKBACK_MODEL"))
}

/// [`resolve_path`] with the value of `$TALKBACK_MODEL` given.
fn resolve(arg: Option<&Path>, env: Option<std::ffi::OsString>) -> PathBuf {
    if let Some(path) = arg {
        return path.to_path_buf();
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    // The checkout this binary was built from, where the fetch script puts it.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("models")
        .join(DEFAULT_MODEL_FILE)
}

/// Loaded weights, tokenizer and the backend they live in.
pub struct Model {
    // Field order matters: the model must drop before the backend.
    model: LlamaModel,
    backend: LlamaBackend,
    path: PathBuf,
    eog: Vec<u32>,
    add_bos: bool,
    longest_piece: usize,
    /// The context size asked for, in tokens: no text longer can be used.
    ctx_size: usize,
    /// What [`Model::check_fits`] needs of the vocabulary; found when a
    /// text first needs it.
    text_bound: OnceLock<TextBound>,
    /// Why the file's chat template cannot be used, when it cannot.
    template_fault: Option<String>,
    /// The file the weights were read from, kept open: its SHA-256 is taken
    /// through it, whatever the path names later.
    file: std::fs::File,
    /// The file as it was when loaded.
    stamp: Stamp,
    /// The file's SHA-256, taken on first use.
    sha256: OnceLock<String>,
}

/// What tells one state of a file from another: which file it is, its
/// length, and when it was last written and last changed (the second no
/// user can set back, as `touch` sets the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether both are stamps of the same file.
    fn same_file(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

impl Model {
    /// The context length the model was trained on, from its metadata.
    ///
    /// Read from the GGUF key rather than llama.cpp's accessor, which panics
    /// on values above `i32::MAX`.
    pub fn trained_context(&self) -> Option<u64> {
        let arch = self.model.meta_val_str("general.architecture").ok()?;
        let text = self
            .model
            .meta_val_str(&format!("{arch}.context_length"))
            .ok()?;
        text.trim().parse().ok().filter(|&t| t > 0)
    }

    /// Checks the file, then loads it, with llama.cpp's logs shown only at `-vv`.
    ///
    /// # Errors
    ///
    /// - the file is missing, unreadable or not a well-formed GGUF file;
    /// - llama.cpp refuses to load it.
    pub fn load(args: &ModelArgs, verbose: u8) -> Result<Self> {
        let path = resolve_path(args.model.as_deref());
        if args.gpu_layers > 0 && !cfg!(feature = "cuda") {
            bail!(
                "--gpu-layers {} needs a GPU build: cargo build --release \
                 -p talkback --features cuda",
                args.gpu_layers
            );
        }
        let (facts, file) = gguf::check_file(&path)?;
        for warning in &facts.warnings {
            warn(&path, warning);
        }
        let stamp = Stamp::of(
            &file
                .metadata()
                .context("cannot read the model's metadata")?,
        );
        // llama.cpp opens the model itself, by a path: given the kept file's
        // own (`/proc/self/fd/N`), it reads the file checked above, whatever
        // the path names by then (a link switched to another file and back,
        // say).
        let own = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let by_handle = std::fs::metadata(&own).is_ok_and(|m| Stamp::of(&m).same_file(&stamp));
        let load_path = if by_handle { own } else { path.clone() };
        if load_path.to_str().is_none() {
            // llama.cpp takes the path as UTF-8 text.
            bail!(
                "cannot load model {}: llama.cpp takes only paths that are valid UTF-8; \
                 rename the file, or link to it from such a path",
                named(&path)
            );
        }
        crate::abort::set_model(&path);

        llama_cpp_2::send_logs_to_tracing(LogOptions::default().with_logs_enabled(verbose >= 2));
        let backend = LlamaBackend::init().context("cannot start the llama.cpp backend")?;

        let show_progress = std::io::stderr().is_terminal();
        let mut last = -1_i32;
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(args.gpu_layers)
            // Read into memory, so that a file written over while the run
            // goes on changes nothing (a mapped one stops the process with
            // SIGBUS once it is cut short, or changes the weights in use).
            .with_use_mmap(args.mmap)
            .with_progress_callback(move |p| {
                let pct = (p * 100.0) as i32;
                if show_progress && pct != last {
                    use std::io::Write as _;
                    last = pct;
                    // Not `eprint!`: a stderr that fails must not panic here.
                    let mut err = std::io::stderr();
                    let line = format!("talkback: loading model {pct:3}%");
                    let _ = write!(err, "\r{line}");
                    if pct >= 100 {
                        // Spaces, not an erase sequence, which a `dumb`
                        // terminal shows as text.
                        let _ = write!(err, "\r{:1$}\r", "", line.len());
                    }
                }
                true
            });
        let loaded = LlamaModel::load_from_file(&backend, &load_path, &params);
        // The file must be unchanged since it was checked (and, where it
        // was opened by its path, still be the one at that path), or what
        // was loaded is not what was checked, or not what a trace names.
        let kept = file.metadata().ok().map(|m| Stamp::of(&m));
        let at_path = || std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
        if kept != Some(stamp) || (!by_handle && at_path() != Some(stamp)) {
            bail!(
                "model {} changed while it was loading; run again once it is written",
                named(&path)
            );
        }
        let model = loaded
            .map_err(|e| match e {
                // llama.cpp logs its reason and returns nothing; its log is
                // shown only at -vv.
                LlamaModelLoadError::NullResult => anyhow::anyhow!(
                    "llama.cpp refused it (run with -vv to see why){}",
                    crate::stack::address_space_note()
                ),
                other => anyhow::anyhow!("{other}"),
            })
            .with_context(|| format!("cannot load model {}", named(&path)))?;

        let vocab = model.vocab();
        let eog = vocab
            .tokens()
            .filter(|&t| vocab.is_eog(t))
            .filter_map(|t| u32::try_from(t.0).ok())
            .collect();
        let add_bos = vocab.should_add_bos();
        let mut piece = Vec::new();
        let longest_piece = vocab
            .tokens()
            .map(|t| {
                piece.clear();
                vocab.token_to_piece_into(t, &mut piece, false, None);
                piece.len()
            })
            .max()
            .unwrap_or(0);
        let model = Self {
            model,
            backend,
            path,
            eog,
            add_bos,
            longest_piece,
            ctx_size: 0,
            text_bound: OnceLock::new(),
            template_fault: facts.template_fault,
            file,
            stamp,
            sha256: OnceLock::new(),
        }
        .with_ctx_size(args.ctx_size);
        if model.trained_context().is_none() {
            // llama.cpp needs the key, so it is there, and 0.
            let text = format!(
                "its context length is 0, so a context of {} tokens cannot be held to \
                 the one it was trained on",
                model.ctx_size
            );
            warn(&model.path, &text);
        }
        Ok(model)
    }

    /// The SHA-256 of the file the weights were read from, lowercase hex;
    /// read through the file kept open, so a file moved, deleted or
    /// replaced at its path since does not change it.
    ///
    /// # Errors
    ///
    /// - the file cannot be read;
    /// - it was written to since it was loaded, so its bytes are no longer
    ///   the ones the run used.
    pub fn sha256(&self) -> Result<&str> {
        if let Some(sha) = self.sha256.get() {
            return Ok(sha);
        }
        let changed = || {
            anyhow::anyhow!(
                "model {} was written to after it was loaded, so its SHA-256 would \
                 not be that of the weights in use",
                named(&self.path)
            )
        };
        let now = |file: &std::fs::File| file.metadata().ok().map(|m| Stamp::of(&m));
        if now(&self.file) != Some(self.stamp) {
            return Err(changed());
        }
        let sha = crate::trace::sha256_of(&self.file, &self.path)?;
        if now(&self.file) != Some(self.stamp) {
            return Err(changed());
        }
        Ok(self.sha256.get_or_init(|| sha))
    }

    /// Sets the context size: `asked`, else [`DEFAULT_CTX`] or the
    /// context the model was trained on if that is shorter.
    ///
    /// A model trained on fewer tokens than any context talkback takes
    /// keeps the default, which [`Model::session`] then refuses, saying so.
    fn with_ctx_size(mut self, asked: Option<u32>) -> Self {
        let least = u64::from(*crate::settings::CTX_SIZES.start());
        let trained = self.trained_context().filter(|&t| t >= least);
        let default = trained.map_or(DEFAULT_CTX, |t| {
            u32::try_from(t).map_or(DEFAULT_CTX, |t| t.min(DEFAULT_CTX))
        });
        self.ctx_size = asked.unwrap_or(default) as usize;
        self
    }

    /// The context size sessions get, in tokens.
    pub fn ctx_size(&self) -> u32 {
        u32::try_from(self.ctx_size).unwrap_or(u32::MAX)
    }

    /// Why the file's chat template cannot be used, when it cannot: it is
    /// not a string, holds a NUL byte or is not UTF-8 (llama.cpp would
    /// hand over a number's text, the part before the NUL, or nothing).
    pub fn template_fault(&self) -> Option<&str> {
        self.template_fault.as_deref()
    }

    /// The path the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The llama.cpp model.
    pub fn inner(&self) -> &LlamaModel {
        &self.model
    }

    /// How many tokens the vocabulary has.
    pub fn vocab_size(&self) -> usize {
        usize::try_from(self.model.n_vocab()).unwrap_or(0)
    }

    /// Every end-of-generation token id the vocabulary declares.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The length in bytes of the longest text [`Model::piece_into`] gives
    /// for any token, which sizes the buffers that hold pieces.
    pub fn longest_piece(&self) -> usize {
        self.longest_piece
    }

    /// The text of the BOS token, when the vocabulary has one.
    pub fn bos_text(&self) -> Option<String> {
        let vocab = self.model.vocab();
        let bos = vocab.bos();
        if bos.0 < 0 {
            return None;
        }
        vocab.text(bos).map(|s| s.to_string_lossy().into_owned())
    }

    /// The ids that mark turns: BOS, when the vocabulary has one, and
    /// those that end generation.
    pub fn markers(&self) -> Vec<u32> {
        let bos = u32::try_from(self.model.vocab().bos().0).ok();
        bos.into_iter().chain(self.eog.iter().copied()).collect()
    }

    /// The vocabulary's text of token `id`, as special-token parsing
    /// matches it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        let token = LlamaToken(i32::try_from(id).ok()?);
        let vocab = self.model.vocab();
        let text = vocab.text(token)?.to_string_lossy().into_owned();
        Some(text)
    }

    /// The text of the EOS token, when the vocabulary has one.
    pub fn eos_text(&self) -> Option<String> {
        let vocab = self.model.vocab();
        let eos = vocab.eos();
        if eos.0 < 0 {
            return None;
        }
        vocab.text(eos).map(|s| s.to_string_lossy().into_owned())
    }

    /// Tokenizes `text`, adding no token of its own; `parse_special` turns
    /// special-token text into control tokens.
    ///
    /// llama.cpp's "add special" would add the BOS, and also an EOS at the
    /// end for a vocabulary that sets `add_eos_token`: a prompt to be
    /// continued would end by saying the text is over. The BOS is added by
    /// the callers that want it ([`Model::bos`]).
    ///
    /// # Errors
    ///
    /// - `text` is longer than llama.cpp's tokenizer takes (2 GiB), far
    ///   more than any context holds.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<LlamaToken>> {
        // llama.cpp counts the text's bytes in an i32, and llama-cpp-2
        // panics beyond it.
        if i32::try_from(text.len()).is_err() {
            bail!(
                "the text is {} bytes, more than llama.cpp can tokenize ({})",
                text.len(),
                i32::MAX
            );
        }
        self.check_fits(text, parse_special)?;
        Ok(self
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, parse_special))
    }

    /// The first token of `text`, read with special tokens, that prints
    /// nothing (a control token such as `<|im_start|>`), with its text:
    /// generated text never holds `text` where the model writes that token.
    ///
    /// # Errors
    ///
    /// - as [`Model::tokenize`].
    pub fn unprinted_token(&self, text: &str) -> Result<Option<(u32, String)>> {
        let tokens = self.tokenize(text, true)?;
        let ids = tokens.iter().filter_map(|t| u32::try_from(t.0).ok());
        Ok(ids
            .into_iter()
            .find_map(|id| Some((id, self.control_text(id)?))))
    }

    /// The BOS token, when the vocabulary has one and asks for it at the
    /// start of a prompt.
    pub fn bos(&self) -> Option<LlamaToken> {
        let bos = self.model.vocab().bos();
        (self.add_bos && bos.0 >= 0).then_some(bos)
    }

    /// Tokenizes a prompt given as text: with the BOS the vocabulary asks
    /// for first, unless the text (read with `parse_special`) already
    /// starts with it, which would give the model two.
    ///
    /// # Errors
    ///
    /// - as [`Model::tokenize`].
    pub fn tokenize_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<LlamaToken>> {
        let mut tokens = self.tokenize(text, parse_special)?;
        if let Some(bos) = self.bos().filter(|&bos| tokens.first() != Some(&bos)) {
            tokens.insert(0, bos);
        }
        Ok(tokens)
    }

    /// Refuses, before tokenizing it, a text that takes more tokens than the
    /// context holds whatever its tokenization.
    ///
    /// Tokenizing a huge text costs far more memory than the text (gigabytes
    /// for a few megabytes of one repeated letter), only to be refused by
    /// its token count. With the byte-level (`gpt2`) and SentencePiece
    /// (`llama`) tokenizers every byte of the text is part of some token's
    /// text, so a text of `b` bytes takes at least `b / L` tokens, `L` being
    /// the longest text of one token. With `parse_special`, in a vocabulary
    /// where some special token swallows the whitespace next to it (an
    /// `lstrip` or `rstrip` attribute), only bytes of other characters
    /// count. Other tokenizers normalise the text (case, accents,
    /// compatibility forms) and can shrink it, so they get no bound.
    ///
    /// # Errors
    ///
    /// - [`PromptTooLong`], with a lower bound on the count;
    /// - [`PromptTooLarge`], above [`crate::stack::max_prompt_bytes`] whatever the
    ///   tokenizer.
    pub fn check_fits(&self, text: &str, parse_special: bool) -> Result<()> {
        if text.len() > crate::stack::max_prompt_bytes() {
            return Err(PromptTooLarge { bytes: text.len() }.into());
        }
        if text.len() <= self.ctx_size {
            return Ok(());
        }
        let kind = self.model.meta_val_str("tokenizer.ggml.model");
        if !matches!(kind.as_deref(), Ok("gpt2" | "llama")) {
            return Ok(());
        }
        let bound = self.text_bound();
        let counted = counted_bytes(text, parse_special && bound.strips);
        let longest = bound.longest.max(1);
        let at_least = counted.div_ceil(longest);
        if at_least > self.ctx_size {
            return Err(PromptTooLong {
                tokens: at_least,
                n_ctx: self.ctx_size,
                at_least: true,
                trained: self.trained_context(),
            }
            .into());
        }
        Ok(())
    }

    /// Refuses more turns than the context has tokens, before a template
    /// renders them.
    ///
    /// Every turn has text, so it takes one token at least; rendering
    /// millions of them would take gigabytes first.
    ///
    /// # Errors
    ///
    /// - [`PromptTooLong`], with the turn count as a lower bound.
    pub fn check_turns(&self, turns: usize) -> Result<()> {
        if turns > self.ctx_size {
            return Err(PromptTooLong {
                tokens: turns,
                n_ctx: self.ctx_size,
                at_least: true,
                trained: self.trained_context(),
            }
            .into());
        }
        Ok(())
    }

    /// The vocabulary's [`TextBound`], found on first use.
    fn text_bound(&self) -> TextBound {
        *self.text_bound.get_or_init(|| {
            use llama_cpp_2::token_type::LlamaTokenAttr;
            let vocab = self.model.vocab();
            let mut piece = Vec::new();
            let mut bound = TextBound {
                longest: 0,
                strips: false,
            };
            for t in vocab.tokens() {
                piece.clear();
                vocab.token_to_piece_into(t, &mut piece, true, None);
                bound.longest = bound.longest.max(piece.len());
                let attr = vocab.attr(t);
                bound.strips |=
                    attr.contains(LlamaTokenAttr::LStrip) || attr.contains(LlamaTokenAttr::RStrip);
            }
            bound
        })
    }

    /// The vocabulary's attributes of `token` (control, user-defined,
    /// whether it swallows whitespace beside it).
    pub fn attr(&self, token: LlamaToken) -> llama_cpp_2::token_type::LlamaTokenAttrs {
        self.model.vocab().attr(token)
    }

    /// Whether `token` is one that only special-token parsing reads: a
    /// control token or one the model's makers added.
    pub fn is_special(&self, token: LlamaToken) -> bool {
        use llama_cpp_2::token_type::LlamaTokenAttr;
        let attr = self.model.vocab().attr(token);
        attr.contains(LlamaTokenAttr::Control) || attr.contains(LlamaTokenAttr::UserDefined)
    }

    /// Appends the bytes of one token's text to `out` (control tokens give nothing).
    pub fn piece_into(&self, token: u32, out: &mut Vec<u8>) {
        let id = i32::try_from(token).unwrap_or(i32::MAX);
        self.model
            .vocab()
            .token_to_piece_into(LlamaToken(id), out, false, None);
    }

    /// The text of a token that prints nothing (a control token), as the
    /// vocabulary spells it: `<|im_end|>`. `None` for a token that prints
    /// text, or that has no text either way.
    pub fn control_text(&self, token: u32) -> Option<String> {
        let mut bytes = Vec::new();
        self.piece_into(token, &mut bytes);
        if !bytes.is_empty() {
            return None;
        }
        let id = i32::try_from(token).unwrap_or(i32::MAX);
        self.model
            .vocab()
            .token_to_piece_into(LlamaToken(id), &mut bytes, true, None);
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Creates a decoding session with its own context.
    ///
    /// # Errors
    ///
    /// - the context is longer than the one the model was trained on;
    /// - llama.cpp cannot allocate a context of this size.
    pub fn session(&self, args: &ModelArgs) -> Result<Session<'_>> {
        let threads = i32::try_from(args.threads()).unwrap_or(1);
        let ctx_size = self.ctx_size();
        if let Some(trained) = self.trained_context().filter(|&t| u64::from(ctx_size) > t) {
            // Beyond it the model's output degrades, and the cache can outgrow
            // memory (a million tokens takes tens of gigabytes).
            return Err(ContextTooLong {
                asked: ctx_size,
                trained,
                path: self.path.clone(),
            }
            .into());
        }
        let n_batch = args.batch_size.min(ctx_size);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(ctx_size))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = self.model.new_context(&self.backend, params).map_err(|e| {
            anyhow::anyhow!(
                "cannot create a context of {ctx_size} tokens: {e}{}",
                crate::stack::address_space_note()
            )
        })?;
        // llama.cpp rounds the context up (to 256 tokens here); the limit
        // is still the size the user asked for.
        let n_ctx = (ctx.n_ctx() as usize).min(ctx_size as usize);
        Ok(Session {
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_ctx,
            trained: self.trained_context(),
            // Room for a full context, so decoding never grows it mid-reply.
            cached: Vec::with_capacity(n_ctx),
            logits_index: 0,
        })
    }
}

/// Prints a warning about model `path` on stderr.
fn warn(path: &Path, text: &str) {
    let line = format!("warning: model {}: {text}", named(path));
    crate::note!("talkback: {}", crate::output::error_line(&line));
}

/// A context longer than the one the model was trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextTooLong {
    /// The context asked for, in tokens.
    pub asked: u32,
    /// The model's training context, in tokens.
    pub trained: u64,
    /// The model file.
    pub path: PathBuf,
}

impl std::fmt::Display for ContextTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let least = *crate::settings::CTX_SIZES.start();
        // Whatever context was asked for, none would do: say what is
        // wrong with the model, not with a request the user may not have
        // made (the default one).
        if self.trained < u64::from(least) {
            return write!(
                f,
                "model {} was trained on a context of {}; talkback needs a context of at \
                 least {least}, so it cannot run it",
                named(&self.path),
                crate::output::many(usize::try_from(self.trained).unwrap_or(usize::MAX), "token")
            );
        }
        write!(
            f,
            "a context of {} tokens is more than the {} that model {} was trained on; \
             pass --ctx-size {} or less",
            self.asked,
            self.trained,
            named(&self.path),
            self.trained
        )
    }
}

impl std::error::Error for ContextTooLong {}

/// The bytes of `text` that some token's text must cover: all of them, or
/// with `strips` only those of characters other than whitespace.
fn counted_bytes(text: &str, strips: bool) -> usize {
    if strips {
        text.chars()
            .filter(|c| !c.is_whitespace())
            .map(char::len_utf8)
            .sum()
    } else {
        text.len()
    }
}

/// What bounds a text's token count from below (see [`Model::check_fits`]).
#[derive(Debug, Clone, Copy)]
struct TextBound {
    /// The most bytes of text one token stands for, special tokens included.
    longest: usize,
    /// Whether a special token swallows the whitespace beside it.
    strips: bool,
}

/// A prompt text above [`crate::stack::max_prompt_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTooLarge {
    /// The text's length in bytes.
    pub bytes: usize,
}

impl std::fmt::Display for PromptTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the prompt is {} bytes of text, more than the {} talkback tokenizes at \
             once{}; shorten it",
            self.bytes,
            crate::stack::max_prompt_bytes(),
            crate::stack::reduced_note()
        )
    }
}

impl std::error::Error for PromptTooLarge {}

/// A prompt longer than the context; the interactive chat recovers from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptTooLong {
    /// Length of the prompt, in tokens, or a lower bound on it.
    pub tokens: usize,
    /// Size of the context, in tokens.
    pub n_ctx: usize,
    /// Whether `tokens` is a lower bound, found without tokenizing.
    pub at_least: bool,
    /// The context the model was trained on, when the file says.
    pub trained: Option<u64>,
}

impl PromptTooLong {
    /// "N" or "at least N".
    pub fn count(&self) -> String {
        if self.at_least {
            format!("at least {}", self.tokens)
        } else {
            self.tokens.to_string()
        }
    }
}

impl std::fmt::Display for PromptTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tokens, n_ctx) = (self.count(), self.n_ctx);
        match self.trained {
            // No context large enough is to be had: the advice is the prompt.
            Some(t) if n_ctx as u64 >= t || self.tokens as u64 > t => write!(
                f,
                "the prompt is {tokens} tokens but the context holds only {n_ctx}, and the \
                 model takes at most {t}; shorten the prompt"
            ),
            Some(t) => write!(
                f,
                "the prompt is {tokens} tokens but the context holds only {n_ctx}; raise \
                 --ctx-size (the model takes up to {t}) or shorten the prompt"
            ),
            None => write!(
                f,
                "the prompt is {tokens} tokens but the context holds only {n_ctx}; raise \
                 --ctx-size or shorten the prompt"
            ),
        }
    }
}

impl std::error::Error for PromptTooLong {}

/// One context: the tokens in its KV cache and the logits of the last one.
pub struct Session<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_ctx: usize,
    /// The context the model was trained on, for the advice of [`PromptTooLong`].
    trained: Option<u64>,
    cached: Vec<LlamaToken>,
    logits_index: i32,
}

impl Session<'_> {
    /// The context size in tokens.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Whether no more token fits in the context.
    pub fn is_full(&self) -> bool {
        self.cached.len() >= self.n_ctx
    }

    /// Refuses a prompt that [`Session::set_prompt`] would refuse, without
    /// decoding anything.
    ///
    /// # Errors
    ///
    /// - the prompt is empty, or longer than the context ([`PromptTooLong`]).
    pub fn check_prompt(&self, prompt: &[LlamaToken]) -> Result<()> {
        if prompt.is_empty() {
            bail!("the prompt is empty: nothing to continue from");
        }
        if prompt.len() > self.n_ctx {
            return Err(PromptTooLong {
                tokens: prompt.len(),
                n_ctx: self.n_ctx,
                at_least: false,
                trained: self.trained,
            }
            .into());
        }
        Ok(())
    }

    /// Makes the context hold exactly `prompt`, decoding only the part that
    /// differs from what it already holds, and leaves the logits of the last
    /// prompt token ready; returns `false`, with no logits ready, when
    /// Ctrl-C stopped it between two batches.
    ///
    /// # Errors
    ///
    /// - the prompt is empty, or longer than the context ([`PromptTooLong`]);
    /// - llama.cpp fails to decode.
    pub fn set_prompt(&mut self, prompt: &[LlamaToken]) -> Result<bool> {
        self.check_prompt(prompt)?;

        // Keep the common prefix, but always decode the last prompt token
        // again so its logits are fresh.
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        if common < self.cached.len() {
            let trimmed = self
                .ctx
                .clear_kv_cache_seq(Some(0), u32::try_from(common).ok(), None)
                .context("cannot trim the context")?;
            if !trimmed {
                bail!("llama.cpp cannot trim the context to {common} tokens");
            }
            self.cached.truncate(common);
        }

        for chunk in prompt
            .get(common..)
            .unwrap_or_default()
            .chunks(self.n_batch)
        {
            // A long prompt takes minutes on a slow machine; Ctrl-C must
            // not wait for all of it. What was decoded stays cached.
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.decode(chunk)?;
        }
        Ok(true)
    }

    /// Decodes one more token after those the context holds.
    ///
    /// # Errors
    ///
    /// - the context is full, or llama.cpp fails to decode.
    pub fn push(&mut self, token: LlamaToken) -> Result<()> {
        if self.is_full() {
            bail!("the context of {} tokens is full", self.n_ctx);
        }
        self.decode(&[token])
    }

    /// Lets a llama.cpp sampler chain pick (and accept) the next token.
    pub fn sample_with(&self, chain: &mut llama_cpp_2::sampling::LlamaSampler) -> LlamaToken {
        chain.sample(&self.ctx, self.logits_index)
    }

    /// Logits for the token after the last one decoded.
    pub fn logits(&self) -> &[f32] {
        self.ctx.get_logits_ith(self.logits_index)
    }

    /// [`Session::logits`], refused if any of them is NaN. A sound model
    /// gives none; the sampler would pass over such a token without a
    /// word, and the rest of the vector is no more to be trusted.
    ///
    /// # Errors
    ///
    /// - some logit is NaN; the message names `step` (none: the prompt's
    ///   own logits).
    pub fn checked_logits(&self, step: Option<usize>) -> Result<&[f32]> {
        let logits = self.logits();
        // A sum, not a search, so that the common case is one vectorised pass.
        let nan: usize = logits.iter().map(|x| usize::from(x.is_nan())).sum();
        if nan > 0 {
            let first = logits.iter().position(|x| x.is_nan()).unwrap_or_default();
            let when =
                step.map_or_else(|| "after the prompt".to_owned(), |n| format!("at step {n}"));
            bail!(
                "the model gave NaN for {nan} of its {} logits {when} (token {first} first): \
                 its weights or its computation are broken",
                logits.len()
            );
        }
        Ok(logits)
    }

    fn decode(&mut self, tokens: &[LlamaToken]) -> Result<()> {
        self.batch.clear();
        let start = self.cached.len();
        let last = tokens.len().saturating_sub(1);
        for (i, &token) in tokens.iter().enumerate() {
            let pos = i32::try_from(start + i).context("position out of range")?;
            self.batch
                .add(token, pos, &[0], i == last)
                .context("cannot fill the decode batch")?;
        }
        self.ctx
            .decode(&mut self.batch)
            .with_context(|| format!("llama.cpp failed to decode at position {start}"))?;
        self.cached.extend_from_slice(tokens);
        self.logits_index = i32::try_from(last).unwrap_or(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_variable_then_the_checkout() {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
        let default = checkout
            .expect("host-cli sits in the checkout")
            .join("models")
            .join(DEFAULT_MODEL_FILE);
        let flag = Path::new("/m/flag.gguf");
        let var = Some("/m/var.gguf".into());
        assert_eq!(resolve(Some(flag), var.clone()), flag);
        assert_eq!(resolve(None, var), Path::new("/m/var.gguf"));
        assert_eq!(resolve(None, None), default);
        // `TALKBACK_MODEL=` in a shell means no choice, not a file named "".
        assert_eq!(resolve(None, Some("".into())), default);
    }

    #[test]
    fn whitespace_counts_unless_a_special_token_may_swallow_it() {
        let text = "  a\u{3000}é\t\n<|x|>  ";
        assert_eq!(counted_bytes(text, false), text.len());
        // "a", "é" (2 bytes) and "<|x|>" (5): the ideographic space
        // (3 bytes) is whitespace too.
        assert_eq!(counted_bytes(text, true), 8);
        assert_eq!(counted_bytes("", true), 0);
    }
}
