//! Checks that a file is a well-formed GGUF model before llama.cpp sees it.
//!
//! llama.cpp reports a broken file as a bare load failure, and some
//! malformed files make it abort the process instead of returning. So the
//! whole header is walked here first, with every length checked against the
//! file's size: key-value pairs, tensor descriptions, and that each
//! tensor's data lies inside the file. The message names the path and the
//! first fault found.
//!
//! A few values that the walk alone would let through make llama.cpp abort
//! (`GGML_ASSERT`) rather than fail, so they are checked too. Each was found
//! by loading copies of a real model with one field changed:
//!
//! - `{arch}.block_count` outside 1..=512;
//! - a negative or NaN `{arch}.attention.layer_norm_rms_epsilon` (or
//!   `layer_norm_epsilon`), which aborts on the first decode;
//! - `tokenizer.ggml.model` set to `none`: the first tokenization aborts;
//! - `tokenizer.ggml.model` set to `rwkv` on a model that is not an RWKV
//!   one: its byte-level vocabulary sends llama.cpp's RWKV tokenizer into
//!   a loop that fills memory on the first text that is not ASCII, and the
//!   process aborts on the exception;
//! - two tokens in `tokenizer.ggml.tokens` with the same text;
//! - a key or tensor name holding a NUL byte: llama.cpp reads names as C
//!   strings, so it would find `llama.block_count\0x` as
//!   `llama.block_count` while the checks here did not;
//! - the `llama` (SentencePiece) tokenizer without a token for each byte
//!   (`<0x41>`, or the byte itself): text it cannot split otherwise falls
//!   back to bytes, and a missing one is an exception that aborts;
//! - the `rwkv` tokenizer with a byte that starts tokens but is not a
//!   token itself: its greedy match then finds nothing and starts again
//!   at the same place, without end;
//! - more than [`MAX_VOCAB`] tokens, which only cost time and memory, and
//!   a token text longer than [`MAX_TOKEN_TEXT`] bytes: the `t5` and
//!   `rwkv` tokenizers keep the texts in a trie of a level per byte,
//!   which overflowed the stack as it was freed, and the `bert` and
//!   `plamo2` ones slow down with the square or cube of the longest;
//! - an empty vocabulary, by which llama.cpp's `test` tokenizer divides
//!   (that tokenizer, which prints ids in hexadecimal, is refused too);
//! - a weight matrix of a type the CPU backend has no matrix product for
//!   (Q8_1, Q8_K and the integer and F64 types): the first decode crashed on a
//!   null function pointer;
//! - a `tokenizer.ggml.precompiled_charsmap` (the `t5` tokenizer's
//!   normalisation table) in which some input would lead the lookup out
//!   of the table or to a replacement string that is not there: llama.cpp
//!   checks this only as it meets it, with an exception that aborts; or
//!   to a replacement longer than 256 bytes, which turned a short prompt
//!   into gigabytes;
//! - a one-dimensional tensor (a norm or bias) of any type but F32: the CPU
//!   backend multiplies by it only in F32 and aborts on anything else.
//!
//! Some corruptions make llama.cpp run without error and print something
//! other than the model's text, and are refused too: faults of the
//! vocabulary as a whole (see `vocab`), a norm epsilon of 1 or more, a
//! rope base that is not finite and positive, a negative rope scaling
//! factor, and attention that is not causal.
//!
//! Other corruptions found that way (counts, lengths, value types, shapes,
//! offsets, unknown tensor types, NaN weights) are refused by llama.cpp or
//! by the check of each step's logits, with an error, not a crash. A value
//! that reaches one of llama.cpp's own checks (`GGML_ASSERT`) is reported
//! by [`crate::abort`] as an error too.
//!
//! The walk also reports what makes the chat template unusable (a value
//! that is not a string, a NUL byte, text that is not UTF-8), so that
//! `chat` can say so instead of using a garbled template.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::infile::named;

mod vocab;

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Data alignment when the file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most layers llama.cpp accepts (its `LLAMA_MAX_LAYERS`).
const MAX_LAYERS: u32 = 512;
/// Bytes kept of a string value: enough for architecture and tokenizer names.
const KEEP_STRING: usize = 64;
/// The key that lists the vocabulary's token texts.
const TOKENS_KEY: &[u8] = b"tokenizer.ggml.tokens";
/// The key of the `gpt2` tokenizer's merges.
const MERGES_KEY: &[u8] = b"tokenizer.ggml.merges";

/// The architectures llama.cpp runs as diffusion models.
const DIFFUSION: [&[u8]; 4] = [b"dream", b"llada", b"llada-moe", b"rnd1"];
/// The key that gives each token's type.
const TOKEN_TYPE_KEY: &[u8] = b"tokenizer.ggml.token_type";
/// The key of the chat template.
const TEMPLATE_KEY: &[u8] = b"tokenizer.chat_template";
/// The key of the `t5` tokenizer's normalisation table.
const CHARSMAP_KEY: &[u8] = b"tokenizer.ggml.precompiled_charsmap";
/// Largest normalisation table read (real ones are about 240 KB).
const MAX_CHARSMAP: u64 = 64 << 20;
/// Longest token text accepted, in bytes (real ones are under 300). The
/// `bert` and `plamo2` tokenizers slow down with its square or cube.
pub const MAX_TOKEN_TEXT: usize = 1024;
/// Longest replacement string in a `t5` normalisation table, in bytes
/// (real ones are under 40): a longer one turns a short prompt into a
/// huge text before anything counts its tokens.
const MAX_REPLACEMENT: usize = 256;
/// ggml types the CPU backend has no matrix product for: Q8_1, Q8_K, I8,
/// I16, I32, I64 and F64. A weight matrix of one crashes the first decode.
const NO_CPU_MATMUL: [u32; 7] = [9, 15, 24, 25, 26, 27, 28];
/// Most tokens a vocabulary may hold: four times the largest in use
/// (262,144), and a bound on the memory the duplicate check takes.
pub const MAX_VOCAB: u64 = 1 << 20;
/// Keys llama.cpp reads as one GGUF type only, refusing the file with
/// nothing said when another is stored: the key, the type, its name.
const TYPED_KEYS: [(&[u8], u32, &str); 10] = [
    (b"general.architecture", STRING, "a string"),
    (b"general.name", STRING, "a string"),
    (b"general.file_type", UINT32, "a 32-bit unsigned integer"),
    (b"tokenizer.ggml.model", STRING, "a string"),
    (b"tokenizer.ggml.pre", STRING, "a string"),
    (b"tokenizer.ggml.add_bos_token", BOOL, "a boolean"),
    (b"tokenizer.ggml.add_eos_token", BOOL, "a boolean"),
    (b"tokenizer.ggml.add_sep_token", BOOL, "a boolean"),
    (b"tokenizer.ggml.add_space_prefix", BOOL, "a boolean"),
    (
        b"tokenizer.ggml.remove_extra_whitespaces",
        BOOL,
        "a boolean",
    ),
];

/// What follows the architecture's name in keys llama.cpp reads as one
/// type only (or a list of them, one per layer): the suffix, the types,
/// their name.
const ARCH_TYPED_KEYS: [(&[u8], &[u32], &str); 10] = [
    (b".context_length", &[UINT32], U32_NAME),
    (b".embedding_length", &[UINT32], U32_NAME),
    (b".block_count", &[UINT32], U32_NAME),
    (b".vocab_size", &[UINT32], U32_NAME),
    (b".rope.dimension_count", &[UINT32], U32_NAME),
    (b".feed_forward_length", &[UINT32, ARRAY], U32S_NAME),
    (b".attention.head_count", &[UINT32, ARRAY], U32S_NAME),
    (b".attention.head_count_kv", &[UINT32, ARRAY], U32S_NAME),
    (b".rope.freq_base", &[FLOAT32], F32_NAME),
    (b".attention.layer_norm_rms_epsilon", &[FLOAT32], F32_NAME),
];

/// How errors name the types of [`ARCH_TYPED_KEYS`].
const U32_NAME: &str = "a 32-bit unsigned integer (type 4)";
/// See [`U32_NAME`].
const U32S_NAME: &str = "a 32-bit unsigned integer (type 4) or an array of them (type 9)";
/// See [`U32_NAME`].
const F32_NAME: &str = "a 32-bit float (type 6)";

/// The `tokenizer.ggml.{name}_token_id` keys llama.cpp reads, as u32 only.
const TOKEN_IDS: [&[u8]; 17] = [
    b"bos",
    b"eos",
    b"eot",
    b"eom",
    b"unknown",
    b"seperator",
    b"padding",
    b"mask",
    b"fim_pre",
    b"fim_suf",
    b"fim_mid",
    b"fim_pad",
    b"fim_rep",
    b"fim_sep",
    b"prefix",
    b"suffix",
    b"middle",
];
/// GGUF value type of a 32-bit signed integer.
const INT32: u32 = 5;
/// GGUF value type of an unsigned 32-bit integer.
const UINT32: u32 = 4;
/// GGUF value type of a 32-bit float.
const FLOAT32: u32 = 6;
/// The last GGUF value type (a 64-bit float).
const LAST_TYPE: u32 = 12;
/// GGUF value type of a boolean.
const BOOL: u32 = 7;
/// GGUF value type of a string.
const STRING: u32 = 8;
/// GGUF value type of an array.
const ARRAY: u32 = 9;
/// ggml type of a 32-bit float tensor.
const F32: u32 = 0;

/// Checks the path, the header, and that every tensor's data is present;
/// returns what the walk found and the file it read, still open.
///
/// # Errors
///
/// - the path is missing, a directory, not a regular file, unreadable or
///   empty;
/// - the file is not GGUF, its header is corrupt, or it is truncated;
/// - it holds a value that would make llama.cpp abort (see the module docs).
pub fn check_file(path: &Path) -> Result<(Facts, File)> {
    let meta = std::fs::metadata(path).map_err(|e| {
        // Decided by the error, not by `Path::exists`, which also says
        // false when a folder on the way cannot be searched.
        let context = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "model {} does not exist (fixtures/fetch-model.sh installs the default one; \
                 --model or TALKBACK_MODEL names another)",
                named(path)
            )
        } else {
            format!("cannot read model {}", named(path))
        };
        anyhow::Error::new(e).context(context)
    })?;
    if meta.is_dir() {
        bail!("model {} is a directory, not a GGUF file", named(path));
    }
    // Opening a FIFO blocks until someone writes to it, and llama.cpp maps
    // the file anyway, so anything but a plain file is refused up front.
    if !meta.is_file() {
        bail!("model {} is not a regular file", named(path));
    }
    let file = File::open(path).with_context(|| format!("cannot open model {}", named(path)))?;
    if meta.len() == 0 {
        bail!("model {} is empty", named(path));
    }
    let mut reader = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len: meta.len(),
    };
    let facts = check(&mut reader)
        .with_context(|| format!("model {} is not a usable GGUF file", named(path)))?;
    Ok((facts, reader.inner.into_inner()))
}

/// What the walk found that later steps need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Why the chat template cannot be used, when it cannot.
    pub template_fault: Option<String>,
    /// What may be a fault, though a working model could have it too.
    pub warnings: Vec<String>,
}

/// What the vocabulary holds for single bytes, as the tokenizers that fall
/// back to them look them up.
struct ByteTokens {
    /// A token `<0xXX>`, or the byte alone: SentencePiece's byte tokens.
    sentencepiece: [bool; 256],
    /// A token that unescapes to the byte alone (RWKV's token texts are
    /// escaped).
    rwkv_single: [bool; 256],
    /// A token whose unescaped text starts with the byte.
    rwkv_first: [bool; 256],
    /// Reused buffer of one unescaped text.
    unescaped: Vec<u8>,
}

impl ByteTokens {
    fn new() -> Self {
        Self {
            sentencepiece: [false; 256],
            rwkv_single: [false; 256],
            rwkv_first: [false; 256],
            unescaped: Vec::new(),
        }
    }

    /// Takes note of the token text `text`.
    fn note(&mut self, text: &[u8]) {
        // llama.cpp keeps a token's text only up to a NUL.
        let text = c_str(text);
        let byte = match text {
            [b] => Some(*b),
            [b'<', b'0', b'x', hi, lo, b'>'] => {
                let digit = |d: u8| match d {
                    b'0'..=b'9' => Some(d - b'0'),
                    b'A'..=b'F' => Some(d - b'A' + 10),
                    _ => None,
                };
                digit(*hi).zip(digit(*lo)).map(|(h, l)| h << 4 | l)
            }
            _ => None,
        };
        if let Some(slot) = byte.and_then(|b| self.sentencepiece.get_mut(usize::from(b))) {
            *slot = true;
        }
        rwkv_unescape(text, &mut self.unescaped);
        if let Some(&first) = self.unescaped.first() {
            if let Some(slot) = self.rwkv_first.get_mut(usize::from(first)) {
                *slot = true;
            }
            if let (1, Some(slot)) = (
                self.unescaped.len(),
                self.rwkv_single.get_mut(usize::from(first)),
            ) {
                *slot = true;
            }
        }
    }

    /// The first byte without a SentencePiece byte token.
    fn sentencepiece_missing(&self) -> Option<usize> {
        self.sentencepiece.iter().position(|&has| !has)
    }

    /// The first byte that starts an RWKV token but is not one itself.
    fn rwkv_missing(&self) -> Option<usize> {
        let mut starts = self.rwkv_first.iter().zip(&self.rwkv_single);
        starts.position(|(&first, &single)| first && !single)
    }
}

/// An RWKV token text with llama.cpp's escapes undone (`\t`, `\n`, `\r`,
/// `\xHH`, and a backslash before any other byte), into `out`.
fn rwkv_unescape(text: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut bytes = text.iter().copied();
    while let Some(c) = bytes.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                // As llama.cpp reads them: no check that they are hex digits.
                let value = |d: u8| {
                    if d >= b'a' {
                        d.wrapping_sub(b'a').wrapping_add(10)
                    } else {
                        d.wrapping_sub(b'0')
                    }
                };
                let (hi, lo) = (bytes.next(), bytes.next());
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(value(hi).wrapping_shl(4).wrapping_add(value(lo)));
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
}

/// Bytes a tensor of `elements` elements of ggml type `kind` takes, when the
/// type is known: (name, block size in elements, bytes per block).
fn type_layout(kind: u32) -> Option<(&'static str, u64, u64)> {
    Some(match kind {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        _ => return None,
    })
}

/// Text from the file made safe for a one-line message: lossy UTF-8,
/// control characters escaped, at most 80 characters.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.escape_debug().take(80).collect();
    if text.escape_debug().nth(80).is_some() {
        out.push_str("...");
    }
    out
}

/// The bytes before the first NUL: what llama.cpp sees of a string, since
/// it reads them as C strings.
fn c_str(bytes: &[u8]) -> &[u8] {
    bytes
        .iter()
        .position(|&b| b == 0)
        .map_or(bytes, |end| bytes.get(..end).unwrap_or_default())
}

/// A metadata value kept for the checks that follow the walk.
#[derive(Debug, Clone, PartialEq)]
enum Meta {
    /// A `u32` value.
    U32(u32),
    /// An `f32` value.
    F32(f32),
    /// The first [`KEEP_STRING`] bytes of a string.
    Str(Vec<u8>),
    /// A `bool` value.
    Bool(bool),
}

struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0_u8; N];
        if self.remaining() < N as u64 {
            bail!("truncated at byte {} while reading {what}", self.pos);
        }
        self.inner
            .read_exact(&mut buf)
            .with_context(|| format!("cannot read {what} at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            bail!(
                "{what} at byte {} claims {n} bytes but only {} remain",
                self.pos,
                self.remaining()
            );
        }
        let offset = i64::try_from(n).context("length out of range")?;
        self.inner.seek(SeekFrom::Current(offset))?;
        self.pos += n;
        Ok(())
    }

    /// Reads a string, keeping at most `keep` bytes of it.
    fn string(&mut self, what: &str, keep: usize) -> Result<Vec<u8>> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            bail!(
                "{what} at byte {} claims {n} bytes but only {} remain",
                self.pos,
                self.remaining()
            );
        }
        let kept = n.min(keep as u64);
        let mut buf = vec![0_u8; kept as usize];
        self.inner.read_exact(&mut buf)?;
        self.pos += kept;
        self.skip(n - kept, what)?;
        Ok(buf)
    }

    /// Reads an array's header; returns its length if its items are of
    /// GGUF type `want`, each at least `min` bytes, and skips the array
    /// otherwise (llama.cpp refuses such a value on load).
    fn array_of(&mut self, what: &str, want: u32, min: u64) -> Result<Option<u64>> {
        let item = self.u32(what)?;
        let n = self.u64(what)?;
        if item != want {
            self.array_items(item, n, what, 1)?;
            return Ok(None);
        }
        if n.saturating_mul(min) > self.remaining() {
            bail!(
                "{what} claims {n} items but only {} bytes remain",
                self.remaining()
            );
        }
        Ok(Some(n))
    }

    /// Reads the vocabulary's token texts and refuses a repeated one,
    /// which makes llama.cpp abort; returns them as llama.cpp keeps them.
    /// An array of another item type is left to llama.cpp, which refuses it.
    fn tokens(&mut self, what: &str, bytes: &mut ByteTokens) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(n) = self.array_of(what, STRING, 8)? else {
            return Ok(None);
        };
        // llama.cpp's `test` tokenizer divides by the count.
        if n == 0 {
            bail!("the vocabulary is empty");
        }
        // After the test above, which names a count that is only corrupt.
        if n > MAX_VOCAB {
            bail!("the vocabulary holds {n} tokens; at most {MAX_VOCAB} are supported");
        }
        let mut texts = Vec::with_capacity(n as usize);
        for i in 0..n {
            let text = self.string(what, MAX_TOKEN_TEXT + 1)?;
            if text.len() > MAX_TOKEN_TEXT {
                bail!(
                    "token {i} is longer than {MAX_TOKEN_TEXT} bytes; llama.cpp's tries \
                     take a level per byte, and freeing one that deep overflows the stack"
                );
            }
            bytes.note(&text);
            // llama.cpp names an empty token this way before indexing it.
            texts.push(match c_str(&text) {
                [] => format!("[EMPTY_{i}]").into_bytes(),
                t => t.to_vec(),
            });
        }
        let mut seen: HashMap<&[u8], usize> = HashMap::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            if let Some(first) = seen.insert(text, i) {
                bail!(
                    "the vocabulary lists the token text \"{}\" twice (tokens {first} and {i})",
                    shown(text)
                );
            }
        }
        Ok(Some(texts))
    }

    /// Reads the `gpt2` merges as llama.cpp keeps them (up to a NUL). An
    /// array of another item type is left to llama.cpp, which refuses it.
    fn merges(&mut self, what: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(n) = self.array_of(what, STRING, 8)? else {
            return Ok(None);
        };
        let mut merges = Vec::with_capacity(n.min(MAX_VOCAB) as usize);
        for _ in 0..n {
            // Two token texts and a space: longer ones match no token.
            let text = self.string(what, 2 * MAX_TOKEN_TEXT + 2)?;
            merges.push(c_str(&text).to_vec());
        }
        Ok(Some(merges))
    }

    /// Reads the token types, at most [`MAX_VOCAB`] of them (llama.cpp
    /// reads no more than the vocabulary holds). An array of another item
    /// type is left to llama.cpp, which refuses it.
    fn token_types(&mut self, what: &str) -> Result<Option<Vec<i32>>> {
        let Some(n) = self.array_of(what, INT32, 4)? else {
            return Ok(None);
        };
        let kept = n.min(MAX_VOCAB);
        let mut buf = vec![0_u8; kept as usize * 4];
        self.inner.read_exact(&mut buf)?;
        self.pos += kept * 4;
        self.skip((n - kept) * 4, what)?;
        let types = buf
            .chunks_exact(4)
            .map(|b| b.try_into().map_or(0, i32::from_le_bytes))
            .collect();
        Ok(Some(types))
    }

    /// Reads the `t5` tokenizer's normalisation table and refuses one that
    /// some input would lead out of bounds (see [`check_charsmap`]). Other
    /// item types are left to llama.cpp, which refuses them on load.
    fn charsmap(&mut self, what: &str) -> Result<()> {
        let item = self.u32(what)?;
        let n = self.u64(what)?;
        if item > 1 {
            return self.array_items(item, n, what, 1);
        }
        if n > self.remaining() || n > MAX_CHARSMAP {
            bail!(
                "{what} claims {n} bytes; {} remain and at most {MAX_CHARSMAP} are read",
                self.remaining()
            );
        }
        let mut blob = vec![0_u8; n as usize];
        self.inner.read_exact(&mut blob)?;
        self.pos += n;
        check_charsmap(&blob).with_context(|| format!("{what} is corrupt"))
    }

    /// Reads the chat template's value of GGUF type `kind`; returns why
    /// it cannot be used, if it cannot.
    fn template(&mut self, kind: u32, what: &str) -> Result<Option<String>> {
        if kind != STRING {
            self.value(kind, what, 0)?;
            return Ok(Some(format!(
                "it is stored as GGUF type {kind}, not as a string"
            )));
        }
        // A longer template is refused by its length when it is used.
        let most = crate::stack::max_template();
        let text = self.string(what, most + 1)?;
        if let Some(at) = text.iter().position(|&b| b == 0) {
            return Ok(Some(format!("it holds a NUL byte at byte {at}")));
        }
        if text.len() <= most {
            if let Err(e) = std::str::from_utf8(&text) {
                return Ok(Some(format!(
                    "it is not valid UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                )));
            }
        }
        Ok(None)
    }

    /// Skips `n` array items of GGUF type `item`.
    fn array_items(&mut self, item: u32, n: u64, what: &str, depth: u32) -> Result<()> {
        let min = match item {
            0 | 1 | 7 => 1,
            2..=3 => 2,
            4..=6 => 4,
            STRING | 10..=12 => 8,
            ARRAY => 12,
            _ => bail!("{what} is an array of unknown type {item}"),
        };
        if n.saturating_mul(min) > self.remaining() {
            bail!(
                "{what} claims {n} items but only {} bytes remain",
                self.remaining()
            );
        }
        if item == STRING || item == ARRAY {
            for _ in 0..n {
                self.value(item, what, depth)?;
            }
        } else {
            self.skip(n * min, what)?;
        }
        Ok(())
    }

    /// Reads one value of GGUF type `kind`; returns it when it is kept.
    fn value(&mut self, kind: u32, what: &str, depth: u32) -> Result<Option<Meta>> {
        let fixed = match kind {
            0 | 1 | 7 => 1,
            2..=3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            STRING => return Ok(Some(Meta::Str(self.string(what, KEEP_STRING)?))),
            ARRAY => {
                if depth > 2 {
                    bail!("{what} nests arrays too deeply");
                }
                let item = self.u32(what)?;
                let n = self.u64(what)?;
                self.array_items(item, n, what, depth + 1)?;
                return Ok(None);
            }
            _ => bail!("{what} has unknown value type {kind}"),
        };
        match kind {
            4 => Ok(Some(Meta::U32(self.u32(what)?))),
            7 => Ok(Some(Meta::Bool(self.bytes::<1>(what)? != [0]))),
            6 => Ok(Some(Meta::F32(f32::from_le_bytes(self.bytes::<4>(what)?)))),
            _ => {
                self.skip(fixed, what)?;
                Ok(None)
            }
        }
    }
}

fn check<R: Read + Seek>(r: &mut Reader<R>) -> Result<Facts> {
    let magic = r
        .bytes::<4>("the magic bytes")
        .map_err(|_| anyhow::anyhow!("too short to be GGUF"))?;
    if &magic != MAGIC {
        bail!("not a GGUF file (no GGUF magic bytes)");
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        bail!("GGUF version {version} is not supported (only 2 and 3)");
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the key-value count")?;
    // Each pair and each tensor description takes at least 12 bytes, so
    // larger counts than this are corrupt, not large.
    if n_kv > r.remaining() / 12 || n_tensors > r.remaining() / 12 {
        bail!("corrupt header: {n_kv} key-value pairs and {n_tensors} tensors cannot fit");
    }

    let mut alignment = DEFAULT_ALIGNMENT;
    let mut kept = Vec::new();
    let mut facts = Facts::default();
    let mut bytes = ByteTokens::new();
    let (mut texts, mut types, mut merges) = (None, None, None);
    // llama.cpp refuses a key given twice; the walk would take the last.
    let mut seen = HashSet::new();
    // Keys that may be `{architecture}.block_count` and the like, with
    // their types, judged once the architecture is known.
    let mut arch_keys = Vec::new();
    for i in 0..n_kv {
        let key = r.string(&format!("key {i}"), 256)?;
        let name = shown(&key);
        refuse_nul(&key, "key")?;
        if !seen.insert(key.clone()) {
            bail!("the key `{name}` is given twice (key {i}); llama.cpp refuses such a file");
        }
        let kind = r.u32(&format!("the type of `{name}`"))?;
        if let Some(&(_, want, named)) = TYPED_KEYS.iter().find(|(k, _, _)| *k == key) {
            // A type GGUF does not have is reported as such below.
            if kind != want && kind <= LAST_TYPE {
                bail!("`{name}` is stored as GGUF type {kind}; it must be {named} (type {want})");
            }
        }
        if ARCH_TYPED_KEYS
            .iter()
            .any(|(suffix, _, _)| key.ends_with(suffix))
        {
            arch_keys.push((key.clone(), kind));
        }
        // llama.cpp reads each token id as a u32 and refuses another type.
        let token_id = key
            .strip_prefix(b"tokenizer.ggml.")
            .and_then(|k| k.strip_suffix(b"_token_id"))
            .is_some_and(|id| TOKEN_IDS.contains(&id));
        if token_id && kind != UINT32 && kind <= LAST_TYPE {
            bail!(
                "`{name}` is stored as GGUF type {kind}; a token id must be a 32-bit \
                 unsigned integer (type 4)"
            );
        }
        let what = format!("the value of `{name}`");
        let value = if key == TOKENS_KEY && kind == ARRAY {
            texts = r.tokens(&what, &mut bytes)?;
            None
        } else if key == MERGES_KEY && kind == ARRAY {
            merges = r.merges(&what)?;
            None
        } else if key == TOKEN_TYPE_KEY && kind == ARRAY {
            types = r.token_types(&what)?;
            None
        } else if key == CHARSMAP_KEY && kind == ARRAY {
            r.charsmap(&what)?;
            None
        } else if key == TEMPLATE_KEY {
            facts.template_fault = r.template(kind, &what)?;
            None
        } else {
            r.value(kind, &what, 0)?
        };
        if key == b"general.alignment" {
            match value {
                Some(Meta::U32(a)) if a > 0 && a.is_power_of_two() => alignment = u64::from(a),
                Some(Meta::U32(a)) => {
                    bail!("`general.alignment` is {a}; it must be a power of two")
                }
                _ => bail!(
                    "`general.alignment` is stored as GGUF type {kind}; it must be a 32-bit \
                     unsigned integer (type 4)"
                ),
            }
        }
        if let Some(value) = value {
            kept.push((key, value));
        }
    }
    let arch = kept.iter().find_map(|(k, v)| match v {
        Meta::Str(arch) if k == b"general.architecture" => Some(c_str(arch)),
        _ => None,
    });
    if arch == Some(b"") {
        bail!("`general.architecture` is empty");
    }
    for (key, kind) in &arch_keys {
        let of_arch = |(suffix, _, _): &&(&[u8], &[u32], &str)| {
            arch.is_some_and(|a| *key == [a, *suffix].concat())
        };
        if let Some((_, kinds, named)) = ARCH_TYPED_KEYS.iter().find(of_arch) {
            if !kinds.contains(kind) {
                bail!(
                    "`{}` is stored as GGUF type {kind}; it must be {named}",
                    shown(key)
                );
            }
        }
    }
    check_values(&kept)?;
    // llama.cpp reads the name only up to a NUL.
    let tokenizer = kept.iter().find_map(|(k, v)| match v {
        Meta::Str(name) if k == b"tokenizer.ggml.model" => Some(c_str(name)),
        _ => None,
    });
    if let Some(texts) = &texts {
        let get = |key: &[u8]| kept.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        facts.warnings = vocab::check(texts, types.as_deref(), merges.as_deref(), tokenizer, &get)?;
    }
    if let (Some(b"llama"), Some(b)) = (tokenizer, bytes.sentencepiece_missing()) {
        bail!(
            "the `llama` tokenizer has no token for byte 0x{b:02X} (`<0x{b:02X}>`); it \
             falls back to byte tokens for text it cannot split otherwise"
        );
    }
    if let (Some(b"rwkv"), Some(b)) = (tokenizer, bytes.rwkv_missing()) {
        bail!(
            "the `rwkv` tokenizer has tokens that start with byte 0x{b:02X} but none that \
             is that byte alone; llama.cpp's RWKV tokenizer loops without end on such text"
        );
    }

    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let raw = r.string(&format!("the name of tensor {i}"), 256)?;
        refuse_nul(&raw, "tensor name")?;
        let name = shown(&raw);
        let dims = r.u32(&format!("the dimensions of `{name}`"))?;
        if dims == 0 || dims > MAX_DIMS {
            bail!("tensor `{name}` has {dims} dimensions (1 to {MAX_DIMS} allowed)");
        }
        let mut elements: u64 = 1;
        let mut first_dim = None;
        for _ in 0..dims {
            let d = r.u64(&format!("a dimension of `{name}`"))?;
            first_dim.get_or_insert(d);
            elements = elements
                .checked_mul(d)
                .with_context(|| format!("tensor `{name}` has an impossible size"))?;
        }
        // A row of the tensor: more elements than that make it a matrix.
        let first_dim = first_dim.unwrap_or(1);
        let kind = r.u32(&format!("the type of `{name}`"))?;
        let offset = r.u64(&format!("the offset of `{name}`"))?;
        if offset % alignment != 0 {
            bail!("tensor `{name}` is not aligned to {alignment} bytes");
        }
        // By the bytes: two names can look alike once shown.
        if !names.insert(raw) {
            bail!("two tensors are named `{name}` (tensor {i}); llama.cpp refuses such a file");
        }
        tensors.push((name, dims, first_dim, elements, kind, offset));
    }

    let data_start = r.pos.div_ceil(alignment) * alignment;
    let data_len = r.len.saturating_sub(data_start);
    for (name, dims, first_dim, elements, kind, offset) in tensors {
        let layout = type_layout(kind);
        if elements > first_dim && NO_CPU_MATMUL.contains(&kind) {
            let type_name = layout.map_or_else(|| format!("type {kind}"), |l| l.0.to_owned());
            bail!(
                "tensor `{name}` is a matrix stored as {type_name}; llama.cpp's CPU \
                 backend has no matrix product for that type and would crash"
            );
        }
        if dims == 1 && kind != F32 {
            let type_name = layout.map_or_else(|| format!("type {kind}"), |l| l.0.to_owned());
            bail!(
                "tensor `{name}` is one-dimensional and {type_name}; llama.cpp's CPU \
                 backend needs F32 there and would abort"
            );
        }
        let Some((_, block, bytes)) = layout else {
            // A type newer than this table: llama.cpp decides.
            continue;
        };
        if elements % block != 0 {
            bail!("tensor `{name}` has {elements} elements, not a multiple of {block}");
        }
        let size = (elements / block)
            .checked_mul(bytes)
            .with_context(|| format!("tensor `{name}` has an impossible size"))?;
        let end = offset
            .checked_add(size)
            .with_context(|| format!("tensor `{name}` has an impossible offset"))?;
        if end > data_len {
            bail!(
                "truncated: tensor `{name}` needs bytes up to {} but the file has {}",
                data_start + end,
                r.len
            );
        }
    }
    Ok(facts)
}

/// Refuses a normalisation table in which some input text would make
/// llama.cpp's lookup read outside it.
///
/// The table is a `u32` byte count, that many bytes of packed trie nodes,
/// then NUL-terminated replacement strings. llama.cpp walks the trie from
/// the root, one input byte `c` (1 to 255) at a time: the next node is at
/// `node ^ c`, which it reads before checking that the node's label is
/// `c`; a leaf's value is the offset of a replacement string. So every
/// node reachable from the root must keep `node ^ c` inside the table for
/// every `c`, and every leaf value must start a terminated string. A table
/// too short for its own count is left to llama.cpp, which refuses it on
/// load.
fn check_charsmap(blob: &[u8]) -> Result<()> {
    let word = |at: usize| -> Option<u32> {
        let bytes = blob.get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    };
    let Some(size) = word(0).map(|n| n as usize) else {
        return Ok(());
    };
    let Some(strings) = blob.get(4 + size..).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let nodes = size / 4;
    if nodes == 0 {
        return Ok(());
    }
    let node = |i: usize| -> Result<u32> {
        if i >= nodes {
            bail!("its trie leads to node {i} of {nodes}");
        }
        word(4 + i * 4).context("a node past the end")
    };
    let base = |p: u32| (p >> 10) << ((p & (1 << 9)) >> 6);
    let mut seen = vec![false; nodes + 256];
    let mut todo = vec![base(node(0)?) as usize];
    while let Some(at) = todo.pop() {
        for c in 1..=255_usize {
            let child = at ^ c;
            let packed = node(child)?;
            if packed & ((1 << 31) | 0xff) != c as u32 {
                continue;
            }
            let next = child ^ base(packed) as usize;
            if (packed >> 8) & 1 == 1 {
                let offset = (node(next)? & ((1 << 31) - 1)) as usize;
                let rest = strings.get(offset..).unwrap_or_default();
                match rest.iter().position(|&b| b == 0) {
                    None => bail!(
                        "a replacement at byte {offset} of {} is missing or unterminated",
                        strings.len()
                    ),
                    Some(len) if len > MAX_REPLACEMENT => bail!(
                        "a replacement at byte {offset} is {len} bytes, more than \
                         {MAX_REPLACEMENT}"
                    ),
                    Some(_) => {}
                }
            }
            match seen.get_mut(next) {
                Some(slot) if !*slot => {
                    *slot = true;
                    todo.push(next);
                }
                Some(_) => {}
                // Past every node and its 255 neighbours: the next step fails.
                None => {
                    node(next ^ 1)?;
                }
            }
        }
    }
    Ok(())
}

/// Refuses a key or tensor name with a NUL byte, which llama.cpp would
/// read only up to the NUL.
fn refuse_nul(name: &[u8], what: &str) -> Result<()> {
    if name.contains(&0) {
        bail!(
            "the {what} `{}` holds a NUL byte; llama.cpp would read it as `{}`",
            shown(name),
            shown(c_str(name))
        );
    }
    Ok(())
}

/// Refuses metadata values that make llama.cpp abort instead of failing.
fn check_values(kept: &[(Vec<u8>, Meta)]) -> Result<()> {
    let get = |key: &[u8]| kept.iter().find(|(k, _)| k == key).map(|(_, v)| v);

    if let Some(Meta::Str(model)) = get(b"tokenizer.ggml.model") {
        if matches!(c_str(model), b"none" | b"no_vocab") {
            bail!("the model has no tokenizer (`tokenizer.ggml.model` is `none`)");
        }
        if c_str(model) == b"test" {
            bail!(
                "`tokenizer.ggml.model` is `test`, llama.cpp's tokenizer for its own tests, \
                 which prints token ids in hexadecimal instead of text"
            );
        }
    }

    // Without an architecture llama.cpp refuses the file by itself.
    let Some(Meta::Str(arch)) = get(b"general.architecture") else {
        return Ok(());
    };
    let arch = c_str(arch);
    if let Some(Meta::Str(model)) = get(b"tokenizer.ggml.model") {
        let rwkv = |name: &[u8]| name.windows(4).any(|w| w == b"rwkv");
        if c_str(model) == b"rwkv" && !rwkv(arch) {
            bail!(
                "`tokenizer.ggml.model` is `rwkv`, which only RWKV models use, but the \
                 architecture is `{}`",
                String::from_utf8_lossy(arch)
            );
        }
    }
    // llama.cpp marks diffusion models by architecture, not by
    // `attention.causal`: they fill in masked tokens over whole passes.
    if DIFFUSION.contains(&arch) {
        bail!(
            "the architecture `{}` is a diffusion model, which fills in masked tokens all \
             at once; talkback generates one token after another and cannot run it",
            shown(arch)
        );
    }
    let key = |suffix: &str| [arch, suffix.as_bytes()].concat();
    if let Some(Meta::U32(n)) = get(&key(".block_count")) {
        if !(1..=MAX_LAYERS).contains(n) {
            bail!(
                "`{}.block_count` is {n}; llama.cpp accepts 1 to {MAX_LAYERS} layers",
                shown(arch)
            );
        }
    }
    for suffix in [
        ".attention.layer_norm_epsilon",
        ".attention.layer_norm_rms_epsilon",
    ] {
        if let Some(Meta::F32(eps)) = get(&key(suffix)) {
            // Negative or NaN aborts; 1 or more (infinity included) runs
            // and writes nonsense unrelated to the prompt.
            if !(0.0..1.0).contains(eps) {
                bail!(
                    "`{}{suffix}` is {eps}; it must be at least 0 and below 1 (real \
                     models use about 1e-5)",
                    shown(arch)
                );
            }
        }
    }
    // Past these, generation goes on with output that no longer follows
    // the prompt.
    if let Some(Meta::F32(base)) = get(&key(".rope.freq_base")) {
        if !base.is_finite() || *base <= 0.0 {
            bail!(
                "`{}.rope.freq_base` is {base}; it must be a finite number above 0",
                shown(arch)
            );
        }
    }
    if let Some(Meta::F32(factor)) = get(&key(".rope.scaling.factor")) {
        // 0 means no scaling.
        if !factor.is_finite() || *factor < 0.0 {
            bail!(
                "`{}.rope.scaling.factor` is {factor}; it must be a finite number, 0 or more",
                shown(arch)
            );
        }
    }
    if let Some(Meta::Bool(false)) = get(&key(".attention.causal")) {
        bail!(
            "`{}.attention.causal` is false: the model attends to later tokens, as \
             embedding models do, and cannot generate text",
            shown(arch)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A tiny GGUF file: one string key and one F32 tensor of 8 elements.
    fn tiny() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&3_u32.to_le_bytes());
        f.extend_from_slice(&1_u64.to_le_bytes());
        f.extend_from_slice(&1_u64.to_le_bytes());
        string(&mut f, "general.name");
        f.extend_from_slice(&8_u32.to_le_bytes());
        string(&mut f, "tiny");
        string(&mut f, "w");
        f.extend_from_slice(&1_u32.to_le_bytes());
        f.extend_from_slice(&8_u64.to_le_bytes());
        f.extend_from_slice(&0_u32.to_le_bytes());
        f.extend_from_slice(&0_u64.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        f.extend_from_slice(&[0_u8; 32]);
        f
    }

    fn run(bytes: Vec<u8>) -> Result<Facts> {
        let len = bytes.len() as u64;
        check(&mut Reader {
            inner: Cursor::new(bytes),
            pos: 0,
            len,
        })
    }

    #[test]
    fn a_well_formed_file_passes() {
        run(tiny()).expect("tiny file is valid");
    }

    #[test]
    fn truncated_data_is_named() {
        let mut f = tiny();
        f.truncate(f.len() - 4);
        let err = format!("{:#}", run(f).expect_err("truncated"));
        assert!(err.contains("truncated: tensor `w`"), "{err}");
    }

    #[test]
    fn every_truncation_point_is_an_error_not_a_panic() {
        let f = tiny();
        for cut in 0..f.len() {
            assert!(run(f[..cut].to_vec()).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut f = tiny();
        f[0] = b'X';
        assert!(format!("{:#}", run(f).expect_err("magic")).contains("magic"));
        let mut f = tiny();
        f[4] = 9;
        assert!(format!("{:#}", run(f).expect_err("version")).contains("version 9"));
    }

    #[test]
    fn corrupt_lengths_and_counts_are_caught() {
        let mut f = tiny();
        // The key count.
        f[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(format!("{:#}", run(f).expect_err("count")).contains("cannot fit"));
        let mut f = tiny();
        // The first key's length.
        f[24..32].copy_from_slice(&(1_u64 << 40).to_le_bytes());
        assert!(format!("{:#}", run(f).expect_err("len")).contains("claims"));
        let mut f = tiny();
        // The value type of the first key.
        let at = 24 + 8 + "general.name".len();
        f[at..at + 4].copy_from_slice(&77_u32.to_le_bytes());
        assert!(format!("{:#}", run(f).expect_err("type")).contains("unknown value type"));
    }

    #[test]
    fn keys_given_twice_and_token_ids_of_other_types_are_refused() {
        // The walk took the last alignment and then reported a truncated
        // file; llama.cpp refuses the file for the second key.
        let err = format!(
            "{:#}",
            run(build(
                &[
                    ("general.alignment", V::U32(32)),
                    ("general.alignment", V::U32(64)),
                ],
                1,
                F32
            ))
            .expect_err("twice")
        );
        assert!(
            err.contains("the key `general.alignment` is given twice (key 1)"),
            "{err}"
        );
        let ids = |value| run(build(&[("tokenizer.ggml.eot_token_id", value)], 1, F32));
        let err = format!("{:#}", ids(V::U64(2)).expect_err("u64"));
        assert!(
            err.contains("`tokenizer.ggml.eot_token_id` is stored as GGUF type 10; a token id"),
            "{err}"
        );
        let err = format!("{:#}", ids(V::Str("2")).expect_err("a string"));
        assert!(err.contains("GGUF type 8"), "{err}");
        // A key llama.cpp does not read may hold anything.
        run(build(&[("tokenizer.ggml.cls_token_id", V::U64(2))], 1, F32)).expect("unread");
        // Other keys llama.cpp reads as one type only.
        let err = format!(
            "{:#}",
            run(build(
                &[("tokenizer.ggml.add_bos_token", V::U32(1))],
                1,
                F32
            ))
            .expect_err("u32")
        );
        assert!(
            err.contains(
                "`tokenizer.ggml.add_bos_token` is stored as GGUF type 4; it must be a \
                 boolean (type 7)"
            ),
            "{err}"
        );
        let arch = |key, value| {
            run(build(
                &[("general.architecture", V::Str("llama")), (key, value)],
                1,
                F32,
            ))
        };
        let err = format!(
            "{:#}",
            arch("llama.block_count", V::U64(30)).expect_err("u64")
        );
        assert!(
            err.contains("`llama.block_count` is stored as GGUF type 10; it must be a 32-bit"),
            "{err}"
        );
        arch("gemma.block_count", V::U64(30)).expect("another architecture's key");
        let err = format!(
            "{:#}",
            arch("llama.rope.freq_base", V::U32(10_000)).expect_err("u32")
        );
        assert!(err.contains("it must be a 32-bit float (type 6)"), "{err}");
        let err = format!(
            "{:#}",
            arch("llama.attention.head_count", V::Str("9")).expect_err("s")
        );
        assert!(err.contains("or an array of them (type 9)"), "{err}");
        arch("llama.attention.head_count", V::Ints(&[9])).expect("one per layer");
        let err = format!(
            "{:#}",
            arch("general.name", V::U32(7)).expect_err("a number")
        );
        assert!(
            err.contains("`general.name` is stored as GGUF type 4"),
            "{err}"
        );
        let empty = run(build(&[("general.architecture", V::Str(""))], 1, F32));
        let err = format!("{:#}", empty.expect_err("empty"));
        assert!(err.contains("`general.architecture` is empty"), "{err}");
    }

    #[test]
    fn an_alignment_is_a_power_of_two_stored_in_32_bits() {
        let with = |value| run(build(&[("general.alignment", value)], 1, F32));
        with(V::U32(32)).expect("the default, written out");
        let err = format!("{:#}", with(V::U32(48)).expect_err("48"));
        assert!(
            err.contains("`general.alignment` is 48; it must be a power of two"),
            "{err}"
        );
        // A power of two in the wrong type was called no power of two.
        let err = format!("{:#}", with(V::U64(32)).expect_err("u64"));
        assert!(
            err.contains("`general.alignment` is stored as GGUF type 10; it must be a 32-bit"),
            "{err}"
        );
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        let f = tiny();
        for at in 0..f.len() {
            for v in [0x00, 0xff, 0x7f] {
                let mut g = f.clone();
                g[at] = v;
                let _ = run(g);
            }
        }
    }

    /// A metadata value for [`build`].
    enum V<'a> {
        U32(u32),
        U64(u64),
        F32(f32),
        Str(&'a str),
        Strings(&'a [&'a [u8]]),
        Ints(&'a [i32]),
    }

    /// A GGUF file with these pairs and one tensor `w` of 32 elements, of
    /// `dims` dimensions and ggml type `kind`.
    fn build(kvs: &[(&str, V<'_>)], dims: u32, kind: u32) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&3_u32.to_le_bytes());
        f.extend_from_slice(&1_u64.to_le_bytes());
        f.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (key, value) in kvs {
            string(&mut f, key);
            match value {
                V::U32(v) => {
                    f.extend_from_slice(&4_u32.to_le_bytes());
                    f.extend_from_slice(&v.to_le_bytes());
                }
                V::U64(v) => {
                    f.extend_from_slice(&10_u32.to_le_bytes());
                    f.extend_from_slice(&v.to_le_bytes());
                }
                V::F32(v) => {
                    f.extend_from_slice(&6_u32.to_le_bytes());
                    f.extend_from_slice(&v.to_le_bytes());
                }
                V::Str(v) => {
                    f.extend_from_slice(&8_u32.to_le_bytes());
                    string(&mut f, v);
                }
                V::Ints(items) => {
                    f.extend_from_slice(&9_u32.to_le_bytes());
                    f.extend_from_slice(&INT32.to_le_bytes());
                    f.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for item in *items {
                        f.extend_from_slice(&item.to_le_bytes());
                    }
                }
                V::Strings(items) => {
                    f.extend_from_slice(&9_u32.to_le_bytes());
                    f.extend_from_slice(&8_u32.to_le_bytes());
                    f.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for item in *items {
                        f.extend_from_slice(&(item.len() as u64).to_le_bytes());
                        f.extend_from_slice(item);
                    }
                }
            }
        }
        string(&mut f, "w");
        f.extend_from_slice(&dims.to_le_bytes());
        f.extend_from_slice(&32_u64.to_le_bytes());
        for _ in 1..dims {
            f.extend_from_slice(&1_u64.to_le_bytes());
        }
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&0_u64.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        f.extend_from_slice(&[0_u8; 128]);
        f
    }

    fn error(bytes: Vec<u8>) -> String {
        format!("{:#}", run(bytes).expect_err("the file should be refused"))
    }

    #[test]
    fn block_count_outside_what_llama_cpp_accepts_is_refused() {
        for n in [0, MAX_LAYERS + 1, u32::MAX] {
            let f = build(
                &[
                    ("general.architecture", V::Str("llama")),
                    ("llama.block_count", V::U32(n)),
                ],
                1,
                F32,
            );
            let err = error(f);
            assert!(
                err.contains(&format!("`llama.block_count` is {n}")),
                "{err}"
            );
        }
        for n in [1, MAX_LAYERS] {
            let f = build(
                &[
                    ("general.architecture", V::Str("llama")),
                    ("llama.block_count", V::U32(n)),
                ],
                1,
                F32,
            );
            run(f).expect("a layer count llama.cpp accepts");
        }
    }

    #[test]
    fn block_count_is_read_under_the_files_own_architecture() {
        // Another architecture's key is not this model's layer count.
        let f = build(
            &[
                ("general.architecture", V::Str("qwen2")),
                ("llama.block_count", V::U32(0)),
            ],
            1,
            F32,
        );
        run(f).expect("llama.block_count means nothing to a qwen2 model");
    }

    #[test]
    fn negative_or_nan_norm_epsilon_is_refused() {
        for suffix in ["layer_norm_rms_epsilon", "layer_norm_epsilon"] {
            let key = format!("llama.attention.{suffix}");
            for eps in [f32::NAN, -1.0, -f32::MIN_POSITIVE] {
                let f = build(
                    &[
                        ("general.architecture", V::Str("llama")),
                        (&key, V::F32(eps)),
                    ],
                    1,
                    F32,
                );
                let err = error(f);
                assert!(err.contains(&format!("`{key}` is")), "{err}");
            }
            let f = build(
                &[
                    ("general.architecture", V::Str("llama")),
                    (&key, V::F32(0.0)),
                ],
                1,
                F32,
            );
            run(f).expect("an epsilon of zero is allowed");
        }
    }

    #[test]
    fn a_model_without_a_tokenizer_is_refused() {
        for name in ["none", "no_vocab", "none\0padding"] {
            let err = error(build(&[("tokenizer.ggml.model", V::Str(name))], 1, F32));
            assert!(err.contains("has no tokenizer"), "{name:?}: {err}");
        }
        for name in ["test", "test\0x"] {
            let err = error(build(&[("tokenizer.ggml.model", V::Str(name))], 1, F32));
            assert!(
                err.contains("prints token ids in hexadecimal"),
                "{name:?}: {err}"
            );
        }
        run(build(&[("tokenizer.ggml.model", V::Str("gpt2"))], 1, F32)).expect("gpt2");
        run(build(&[("tokenizer.ggml.model", V::Str("tests"))], 1, F32)).expect("no tokenizer");
    }

    #[test]
    fn diffusion_architectures_are_refused() {
        for arch in ["llada", "dream", "llada-moe", "rnd1"] {
            let err = error(build(&[("general.architecture", V::Str(arch))], 1, F32));
            assert!(
                err.contains(&format!("the architecture `{arch}` is a diffusion model")),
                "{err}"
            );
        }
        run(build(&[("general.architecture", V::Str("llama"))], 1, F32)).expect("llama");
        run(build(&[("general.architecture", V::Str("llada2"))], 1, F32)).expect("not listed");
    }

    #[test]
    fn the_rwkv_tokenizer_is_refused_outside_rwkv_models() {
        let err = error(build(
            &[
                ("general.architecture", V::Str("llama")),
                ("tokenizer.ggml.model", V::Str("rwkv")),
            ],
            1,
            F32,
        ));
        assert!(
            err.contains("`rwkv`, which only RWKV models use, but the architecture is `llama`"),
            "{err}"
        );
        let rwkv = build(
            &[
                ("general.architecture", V::Str("rwkv6")),
                ("tokenizer.ggml.model", V::Str("rwkv")),
            ],
            1,
            F32,
        );
        run(rwkv).expect("an RWKV model with its own tokenizer");
    }

    #[test]
    fn repeated_token_texts_are_refused() {
        let tokens: &[&[u8]] = &[b"a", b"b", b"a"];
        let err = error(build(
            &[("tokenizer.ggml.tokens", V::Strings(tokens))],
            1,
            F32,
        ));
        assert!(
            err.contains("token text \"a\" twice (tokens 0 and 2)"),
            "{err}"
        );

        // llama.cpp reads token texts as C strings: text after a NUL is lost.
        let tokens: &[&[u8]] = &[b"ab", b"ab\0c"];
        let err = error(build(
            &[("tokenizer.ggml.tokens", V::Strings(tokens))],
            1,
            F32,
        ));
        assert!(err.contains("(tokens 0 and 1)"), "{err}");

        // Empty tokens get distinct names, unless a token already has one.
        let tokens: &[&[u8]] = &[b"", b"", b"x"];
        run(build(
            &[("tokenizer.ggml.tokens", V::Strings(tokens))],
            1,
            F32,
        ))
        .expect("empty tokens are distinct");
        let tokens: &[&[u8]] = &[b"[EMPTY_1]", b""];
        let err = error(build(
            &[("tokenizer.ggml.tokens", V::Strings(tokens))],
            1,
            F32,
        ));
        assert!(err.contains("[EMPTY_1]"), "{err}");
    }

    #[test]
    fn a_vector_tensor_must_be_f32() {
        // F16, BF16, Q8_0, I32, and a type newer than the table.
        for kind in [1, 30, 8, 26, 39] {
            let err = error(build(&[], 1, kind));
            assert!(err.contains("one-dimensional"), "type {kind}: {err}");
        }
        run(build(&[], 1, F32)).expect("an F32 vector");
        run(build(&[], 2, 1)).expect("an F16 matrix");
    }

    #[test]
    fn names_from_the_file_are_shown_on_one_line() {
        let f = build(&[("bad\nkey\u{1b}", V::U32(0))], 1, F32);
        let mut g = f.clone();
        // Give the pair an unknown value type.
        let at = 24 + 8 + "bad\nkey\u{1b}".len();
        g[at..at + 4].copy_from_slice(&77_u32.to_le_bytes());
        let err = error(g);
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
        assert!(err.contains("bad\\nkey\\u{1b}"), "{err}");
        assert!(run(f).is_ok());

        let long = "k".repeat(200);
        let mut g = build(&[(&long, V::U32(0))], 1, F32);
        let at = 24 + 8 + long.len();
        g[at..at + 4].copy_from_slice(&77_u32.to_le_bytes());
        let err = error(g);
        assert!(err.contains(&format!("`{}...`", "k".repeat(80))), "{err}");
    }

    /// A normalisation table of 512 trie nodes whose root's children are
    /// nodes 256 to 511; byte `a` leads to a leaf whose replacement is at
    /// offset 0 of `strings`.
    fn charsmap(nodes: usize, strings: &[u8]) -> Vec<u8> {
        let mut table = vec![0_u32; nodes];
        table[0] = 256 << 10;
        // Node 256 ^ 'a' = 353: label `a`, a leaf, base 353 ^ 300.
        table[353] = (353 ^ 300) << 10 | 1 << 8 | u32::from(b'a');
        let mut blob = ((nodes * 4) as u32).to_le_bytes().to_vec();
        for n in table {
            blob.extend_from_slice(&n.to_le_bytes());
        }
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn a_charsmap_that_leads_out_of_bounds_is_refused() {
        check_charsmap(&charsmap(512, b"A\0")).expect("a sound table");
        let err = format!(
            "{:#}",
            check_charsmap(&charsmap(512, b"A")).expect_err("no NUL")
        );
        assert!(err.contains("unterminated"), "{err}");
        let err = format!(
            "{:#}",
            check_charsmap(&charsmap(400, b"A\0")).expect_err("short")
        );
        assert!(err.contains("of 400"), "{err}");
        // Too short for its own count: llama.cpp refuses it on load.
        check_charsmap(&[8, 0, 0, 0, 1]).expect("left to llama.cpp");
    }

    #[test]
    fn nul_in_a_key_and_missing_byte_tokens_are_refused() {
        let err = format!(
            "{:#}",
            run(build(&[("llama.block_count\0x", V::U32(0))], 1, F32)).expect_err("NUL")
        );
        assert!(
            err.contains("would read it as `llama.block_count`"),
            "{err}"
        );
        let tokens: &[&[u8]] = &[b"a", b"b"];
        let err = format!(
            "{:#}",
            run(build(
                &[
                    ("tokenizer.ggml.model", V::Str("llama")),
                    ("tokenizer.ggml.tokens", V::Strings(tokens)),
                ],
                1,
                F32
            ))
            .expect_err("no byte tokens")
        );
        assert!(err.contains("no token for byte 0x00"), "{err}");
        let all: Vec<Vec<u8>> = (0..=255_u8)
            .map(|b| format!("<0x{b:02X}>").into_bytes())
            .collect();
        let all: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
        run(build(
            &[
                ("tokenizer.ggml.model", V::Str("llama")),
                ("tokenizer.ggml.tokens", V::Strings(&all)),
            ],
            1,
            F32,
        ))
        .expect("every byte has a token");
    }

    #[test]
    fn a_vocabulary_above_the_cap_is_refused_before_it_is_read() {
        let empty: Vec<&[u8]> = vec![b""; MAX_VOCAB as usize + 1];
        let err = format!(
            "{:#}",
            run(build(
                &[("tokenizer.ggml.tokens", V::Strings(&empty))],
                1,
                F32
            ))
            .expect_err("too many")
        );
        assert!(
            err.contains("holds 1048577 tokens; at most 1048576"),
            "{err}"
        );
    }

    #[test]
    fn token_types_that_print_nothing_are_refused() {
        let tokens: &[&[u8]] = &[b"a", b"<0x0A>", b"<s>"];
        let check = |types: &[i32], types_first: bool| {
            let mut kvs = vec![
                ("tokenizer.ggml.tokens", V::Strings(tokens)),
                ("tokenizer.ggml.token_type", V::Ints(types)),
            ];
            if types_first {
                kvs.reverse();
            }
            run(build(&kvs, 1, F32)).map_err(|e| format!("{e:#}"))
        };
        for first in [false, true] {
            check(&[1, 1, 3], first).expect("normal and control");
            check(&[4, 6, 0], first).expect("user-defined, byte, undefined");
            // llama.cpp reads no more types than there are tokens.
            check(&[1, 1, 3, 99], first).expect("a type past the vocabulary");
            let err = check(&[1, 7, 3], first).expect_err("type 7");
            assert!(
                err.contains("token 1 has type 7; GGUF token types are 0 to 6"),
                "{err}"
            );
            let err = check(&[1, 1, -1], first).expect_err("type -1");
            assert!(err.contains("token 2 has type -1"), "{err}");
            for silent in [[3, 3, 3], [2, 5, 0]] {
                let err = check(&silent, first).expect_err("nothing prints");
                assert!(
                    err.contains("no token in the vocabulary is of a type that prints"),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn an_unusable_chat_template_is_reported_not_refused() {
        let facts = |v: V<'_>| {
            run(build(&[("tokenizer.chat_template", v)], 1, F32)).expect("the file is usable")
        };
        assert_eq!(facts(V::Str("{{ x }}")).template_fault, None);
        let fault = facts(V::U32(7)).template_fault.expect("a number");
        assert!(fault.contains("GGUF type 4, not as a string"), "{fault}");
        let fault = facts(V::Str("{{ x }}\0y")).template_fault.expect("a NUL");
        assert!(fault.contains("NUL byte at byte 7"), "{fault}");
    }

    #[test]
    fn rwkv_texts_are_unescaped_as_llama_cpp_does() {
        let mut out = Vec::new();
        for (text, want) in [
            (&br"a\tb"[..], &b"a\tb"[..]),
            (br"\n\r\\", b"\n\r\\"),
            (br"\x41\x0a", b"A\n"),
            (br"\x4", b""),
            (br"\q", b"q"),
            (br"end\", b"end"),
        ] {
            rwkv_unescape(text, &mut out);
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn an_rwkv_byte_that_starts_tokens_must_be_one() {
        let rwkv = |tokens: &[&[u8]]| {
            run(build(
                &[
                    ("general.architecture", V::Str("rwkv6")),
                    ("tokenizer.ggml.model", V::Str("rwkv")),
                    ("tokenizer.ggml.tokens", V::Strings(tokens)),
                ],
                1,
                F32,
            ))
        };
        let err = format!("{:#}", rwkv(&[b"b", b"ab"]).expect_err("no `a`"));
        assert!(err.contains("start with byte 0x61 but none"), "{err}");
        rwkv(&[b"a", b"b", b"ab", br"\x00z"]).expect_err("no NUL byte alone");
        rwkv(&[b"a", b"b", b"ab", br"\x00z", br"\x00"]).expect("every first byte is a token");
    }

    #[test]
    fn long_token_texts_and_matrices_of_types_without_a_product_are_refused() {
        let long = vec![b'a'; MAX_TOKEN_TEXT + 1];
        let tokens: &[&[u8]] = &[b"a", &long];
        let err = format!(
            "{:#}",
            run(build(
                &[("tokenizer.ggml.tokens", V::Strings(tokens))],
                1,
                F32
            ))
            .expect_err("too long")
        );
        assert!(err.contains("token 1 is longer than 1024 bytes"), "{err}");
        // `w` as a 32 x 2 I8 matrix; as one row, or a vector, it is left
        // to llama.cpp and to the rule for vectors.
        let mut f = build(&[], 2, 24);
        let dims = [32_u64.to_le_bytes(), 1_u64.to_le_bytes()].concat();
        let at = f
            .windows(16)
            .position(|w| w == dims)
            .expect("the dimensions");
        f[at + 8..at + 16].copy_from_slice(&2_u64.to_le_bytes());
        let err = format!("{:#}", run(f).expect_err("I8 matrix"));
        assert!(err.contains("a matrix stored as I8"), "{err}");
        run(build(&[], 2, 24)).expect("one row");
        let err = format!("{:#}", run(build(&[], 1, 24)).expect_err("I8 vector"));
        assert!(err.contains("one-dimensional and I8"), "{err}");
    }
}
