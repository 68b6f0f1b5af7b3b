//! Checks of the vocabulary as a whole, once the walk has read it.
//!
//! Input: the token texts (as llama.cpp keeps them: up to a NUL, an
//! empty one named `[EMPTY_i]`), the token types, the `gpt2` merges and
//! the special token ids. Output: the first fault that makes llama.cpp
//! run without error and print something other than the model's text.
//! Each was found by running copies of a real model with one value
//! changed:
//!
//! - a token type outside GGUF's 0 to 6: llama.cpp treats the token as a
//!   control token and never prints it; and a vocabulary with no token of
//!   a type that prints;
//! - a byte token (type 6) whose text is not `<0xHH>`: llama.cpp reads
//!   the byte from the text's fourth and fifth characters, and printed a
//!   NUL for ` a`;
//! - a beginning or end id outside the vocabulary: llama.cpp puts another
//!   token in its place, which then starts every prompt or ends every
//!   reply;
//! - for the `gpt2` tokenizer, a merge that is not two tokens joining into
//!   a third (the rule the tokenizers the files are converted from
//!   enforce), an empty or cut-short merge list (a word then splits into
//!   letters), a token a merge makes or joins typed as one that prints
//!   nothing (a word or a comma vanished from the output), and a beginning
//!   or end id naming a
//!   token the merges use, which is text, not a marker: replies stopped at
//!   the first full stop (the fill-in-the-middle ids llama.cpp ends replies
//!   at, `fim_pad`, `fim_rep` and `fim_sep`, too);
//! - the `bert` or `t5` tokenizer over a file with merges, and a byte-level
//!   vocabulary (one text in twenty or more starting with `Ġ`) under a
//!   tokenizer or pre-tokenizer that does not decode one: the texts were
//!   printed as they are, `Ġ` for each space; and the other way round,
//!   normal tokens holding what byte-level text never has (`▁`, a space)
//!   under a byte-level decoder, which printed each as an unknown byte.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

use super::{shown, Meta};

/// Special ids that start every prompt or end every reply.
const ENDS: [&str; 4] = ["bos", "eos", "eot", "eom"];

/// Fill-in-the-middle ids that llama.cpp also ends replies at.
///
/// One outside the vocabulary it drops instead of replacing, so only those
/// inside it are checked.
const FIM_ENDS: [&str; 3] = ["fim_pad", "fim_rep", "fim_sep"];

/// Token texts llama.cpp ends replies at whatever the keys say (its list in
/// `llama-vocab.cpp`, which also makes such tokens control tokens).
const END_TEXTS: [&str; 22] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Token texts llama.cpp takes for each fill-in-the-middle id whose key is
/// not set (or is outside the vocabulary), making them control tokens, and
/// whether it also ends replies at that id.
const FIM_TEXTS: [(&str, &[&str], bool); 6] = [
    (
        "fim_pre",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
        false,
    ),
    (
        "fim_suf",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
        false,
    ),
    (
        "fim_mid",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
        false,
    ),
    (
        "fim_pad",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
        true,
    ),
    (
        "fim_rep",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
        true,
    ),
    ("fim_sep", &["<|file_sep|>"], true),
];

/// The id llama.cpp gives the BOS and the EOS of a BPE vocabulary (`gpt2`)
/// whose keys name none.
const BPE_DEFAULT_ID: u32 = 11;

/// Pre-tokenizers under which llama.cpp adds a BOS to prompts unless
/// `add_bos_token` says not to.
const BOS_PRE: [&[u8]; 11] = [
    b"llama3",
    b"llama-v3",
    b"llama-bpe",
    b"falcon3",
    b"falcon-h1",
    b"pixtral",
    b"midm-2.0",
    b"lfm2",
    b"jina-v5-nano",
    b"tekken",
    b"chameleon",
];

/// Pre-tokenizers under which llama.cpp gives a vocabulary without a BOS
/// key no BOS at all, instead of [`BPE_DEFAULT_ID`].
const NO_BOS_PRE: [&[u8]; 3] = [b"chatglm-bpe", b"glm4", b"glm5"];

/// The keys llama.cpp still reads for the prefix, suffix and middle ids,
/// each after the name it gives them.
const FIM_OLD_KEYS: [(&str, &str); 3] = [
    ("fim_pre", "prefix"),
    ("fim_suf", "suffix"),
    ("fim_mid", "middle"),
];

/// Where an id that starts prompts or ends replies comes from.
#[derive(Clone, Copy)]
enum End {
    /// The key `tokenizer.ggml.{name}_token_id`.
    Key(&'static str),
    /// The id llama.cpp takes when the key `tokenizer.ggml.{name}_token_id`
    /// is not set.
    Default(&'static str),
    /// The token's text, which llama.cpp ends replies at.
    Text,
    /// The token's text, which llama.cpp makes a control token, printing
    /// nothing.
    Hidden,
}

/// Share of multi-character normal tokens that may lack a merge before the
/// merge list counts as cut short: a few odd entries are tolerated.
const UNMERGED_MAX: f64 = 0.01;

/// `Ġ` (U+0120) in UTF-8: the byte-level spelling of a space.
const GPT2_SPACE: &[u8] = "\u{120}".as_bytes();

/// `▁` (U+2581) in UTF-8: SentencePiece's spelling of a space, which has
/// no meaning in byte-level text.
const SPM_SPACE: &[u8] = "\u{2581}".as_bytes();

/// A vocabulary with at least one in this many token texts starting with
/// [`GPT2_SPACE`] is byte-level, and one with as many starting with
/// [`SPM_SPACE`] is not: each spelling starts most words in its own kind
/// of vocabulary and has no use in the other.
const BYTE_LEVEL_SHARE: usize = 20;

/// The mark `hybriddna` vocabularies end their DNA words with.
const DNA_MARK: char = '\u{e000}';

/// Pre-tokenizers under which llama.cpp's BPE tokenizer writes spaces as
/// `▁` instead of decoding byte-level texts (`gemma4` also sets the first).
const ESCAPING_PRE: [&[u8]; 4] = [
    b"gemma4",
    b"granite-embed-multi-311m",
    b"mmbert",
    b"sarvam-moe",
];

/// Checks the vocabulary (see the module docs), giving warnings of what
/// may be a fault but could also be a working model's own quirk.
///
/// `get` reads a kept metadata value by key.
///
/// # Errors
///
/// - the first fault found, naming the token or key.
pub(super) fn check(
    texts: &[Vec<u8>],
    types: Option<&[i32]>,
    merges: Option<&[Vec<u8>]>,
    tokenizer: Option<&[u8]>,
    get: &dyn Fn(&[u8]) -> Option<Meta>,
) -> Result<Vec<String>> {
    let n = texts.len();
    // llama.cpp reads no more types than there are tokens; a shorter list
    // it refuses on load.
    let types = types.map(|t| t.get(..n).unwrap_or(t));
    if let Some(types) = types {
        check_types(texts, types)?;
    }
    let id_of = |name: &&'static str| {
        let key = format!("tokenizer.ggml.{name}_token_id");
        match get(key.as_bytes()) {
            Some(Meta::U32(id)) => Some((End::Key(name), id)),
            _ => None,
        }
    };
    let mut ends: Vec<(End, u32)> = ENDS.iter().filter_map(id_of).collect();
    for &(end, id) in &ends {
        if let (End::Key(name), true) = (end, id as usize >= n) {
            bail!(
                "`tokenizer.ggml.{name}_token_id` is {id}, outside the vocabulary of {n} \
                 tokens; llama.cpp would put another token in its place"
            );
        }
    }
    let fim = FIM_ENDS.iter().filter_map(id_of);
    ends.extend(fim.filter(|&(_, id)| (id as usize) < n));
    // A BPE vocabulary without a BOS or EOS key gets token 11 for it; the
    // BOS matters only where prompts start with it.
    let bpe = matches!(tokenizer, Some(b"gpt2" | b"hybriddna" | b"whitespace"));
    let pre = match get(b"tokenizer.ggml.pre") {
        Some(Meta::Str(pre)) => super::c_str(&pre).to_vec(),
        _ => Vec::new(),
    };
    // As llama.cpp decides: the pre-tokenizer's default, unless the key
    // says otherwise (`gemma4` adds one whatever it says).
    let adds_bos = match get(b"tokenizer.ggml.add_bos_token") {
        _ if pre == b"gemma4" => true,
        Some(Meta::Bool(adds)) => adds,
        _ => BOS_PRE.contains(&pre.as_slice()),
    };
    for name in ["bos", "eos"] {
        let wanted = match name {
            "bos" => adds_bos && !NO_BOS_PRE.contains(&pre.as_slice()),
            _ => true,
        };
        if bpe && wanted && id_of(&name).is_none() && (BPE_DEFAULT_ID as usize) < n {
            ends.push((End::Default(name), BPE_DEFAULT_ID));
        }
    }
    let mut by_text: Vec<(&[u8], End)> = END_TEXTS
        .iter()
        .map(|t| (t.as_bytes(), End::Text))
        .collect();
    for (name, list, ends_replies) in FIM_TEXTS {
        // One outside the vocabulary llama.cpp drops, and looks by text.
        let old = FIM_OLD_KEYS
            .iter()
            .find(|(new, _)| *new == name)
            .map(|(_, old)| old);
        let set = |key: &&'static str| id_of(key).is_some_and(|(_, id)| (id as usize) < n);
        if !set(&name) && !old.is_some_and(set) {
            let end = if ends_replies { End::Text } else { End::Hidden };
            by_text.extend(list.iter().map(|t| (t.as_bytes(), end)));
        }
    }
    for (i, text) in texts.iter().enumerate() {
        let found = by_text.iter().find(|(t, _)| *t == text.as_slice());
        if let (Some(&(_, end)), Ok(id)) = (found, u32::try_from(i)) {
            ends.push((end, id));
        }
    }
    let mut warnings = Vec::new();
    match (tokenizer, merges) {
        (Some(b"gpt2"), Some(merges)) => warnings = check_merges(texts, types, merges, &ends)?,
        // Their merges follow other rules (DNA words, whole words), so only
        // the ids are held to the merges they have.
        (Some(b"hybriddna" | b"whitespace"), Some(merges)) => {
            let (made, used) = merged(texts, merges, false)?;
            warnings = check_ends(texts, &made, &used, &ends)?;
        }
        // WordPiece and Unigram vocabularies have no merges: a file that
        // holds them was written for `gpt2`.
        (Some(name @ (b"bert" | b"t5")), Some(merges)) if !merges.is_empty() => bail!(
            "`tokenizer.ggml.model` is `{}`, which uses no merges, but the file holds \
             {} of them (`tokenizer.ggml.merges`): its vocabulary was made for the `gpt2` \
             tokenizer",
            String::from_utf8_lossy(name),
            merges.len()
        ),
        _ => {}
    }
    if let Some(name) = tokenizer {
        check_spelling(texts, types, name, get)?;
    }
    Ok(warnings)
}

/// How llama.cpp turns a normal token's text into the bytes it prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// Each character stands for one byte (`Ġ` for a space).
    ByteLevel,
    /// The text is UTF-8, with `▁` for a space.
    Spaces,
    /// The text is printed as it is.
    Raw,
}

/// Whether `c` is one of the 256 characters byte-level text is made of:
/// the printable Latin-1 characters for themselves, U+0100 to U+0143 for
/// the other 68 bytes.
fn byte_level_char(c: char) -> bool {
    matches!(u32::from(c), 33..=126 | 161..=172 | 174..=323)
}

/// Refuses a vocabulary spelled for another decoder, which prints it
/// garbled: byte-level texts (`Ġ` for a space) under a decoder that does
/// not decode them, and texts holding characters byte-level text never
/// has (`▁`, a space) under one that does, which prints each such token
/// as an unknown byte. One text in [`BYTE_LEVEL_SHARE`] decides, so that
/// a few odd tokens do not.
fn check_spelling(
    texts: &[Vec<u8>],
    types: Option<&[i32]>,
    name: &[u8],
    get: &dyn Fn(&[u8]) -> Option<Meta>,
) -> Result<()> {
    let pre = match get(b"tokenizer.ggml.pre") {
        Some(Meta::Str(pre)) => super::c_str(&pre).to_vec(),
        _ => Vec::new(),
    };
    let bpe = matches!(name, b"gpt2" | b"hybriddna" | b"whitespace");
    let decoder = match name {
        _ if bpe && ESCAPING_PRE.contains(&pre.as_slice()) => Decoder::Spaces,
        _ if bpe => Decoder::ByteLevel,
        b"llama" | b"t5" | b"bert" | b"gemma4" => Decoder::Spaces,
        b"plamo2" | b"rwkv" => Decoder::Raw,
        // The rest print nothing that could be garbled (`test` and `none`
        // are refused before this), or llama.cpp refuses them.
        _ => return Ok(()),
    };
    let n = texts.len();
    let enough = |count: usize| count > 0 && count.saturating_mul(BYTE_LEVEL_SHARE) >= n;
    let named = match (bpe, pre.is_empty()) {
        (true, false) => format!(
            "`tokenizer.ggml.model` `{}` with the pre-tokenizer `{}`",
            shown(name),
            shown(&pre)
        ),
        _ => format!("`tokenizer.ggml.model` `{}`", shown(name)),
    };
    let starting = |mark: &[u8]| texts.iter().filter(|t| t.starts_with(mark)).count();
    if decoder == Decoder::ByteLevel {
        // Only normal tokens are decoded; the others print as they are.
        let normal = |i: usize| types.map_or(true, |t| t.get(i).map_or(true, |&k| k == 1));
        // `hybriddna` marks its DNA words with U+E000, which llama.cpp
        // strips on load.
        let dna = name == b"hybriddna";
        let decodes = |t: &[u8]| {
            let text = String::from_utf8_lossy(t);
            let word = if dna {
                text.strip_suffix(DNA_MARK)
            } else {
                None
            };
            word.unwrap_or(&text).chars().all(byte_level_char)
        };
        let foreign = (0..)
            .zip(texts)
            .filter(|&(i, t)| normal(i) && !decodes(t))
            .count();
        if enough(foreign) {
            bail!(
                "{foreign} of the {n} token texts hold characters that byte-level text never \
                 has (such as `▁` or a space), but {named} decodes byte-level text and would \
                 print each of those tokens as an unknown byte; the vocabulary needs a \
                 tokenizer that reads its spelling (`llama` for SentencePiece's `▁`)"
            );
        }
        return Ok(());
    }
    let spaced = starting(GPT2_SPACE);
    if enough(spaced) {
        bail!(
            "{spaced} of the {n} token texts start with `Ġ`, the byte-level spelling of a \
             space, but {named} does not decode byte-level text and would print those marks \
             as they are; the vocabulary needs `gpt2` with a pre-tokenizer that keeps bytes"
        );
    }
    let marked = starting(SPM_SPACE);
    if decoder == Decoder::Raw && enough(marked) {
        bail!(
            "{marked} of the {n} token texts start with `▁`, SentencePiece's spelling of a \
             space, but {named} prints token texts as they are and would print those marks; \
             the vocabulary needs a SentencePiece tokenizer (`llama`)"
        );
    }
    Ok(())
}

/// Refuses unknown types, a vocabulary in which no token prints, and byte
/// tokens whose text does not name a byte.
fn check_types(texts: &[Vec<u8>], types: &[i32]) -> Result<()> {
    if let Some((i, t)) = types
        .iter()
        .enumerate()
        .find(|(_, t)| !(0..=6).contains(*t))
    {
        bail!(
            "token {i} has type {t}; GGUF token types are 0 to 6, and llama.cpp would \
             print nothing for that token"
        );
    }
    // Normal, user-defined and byte tokens print their text.
    if !types.is_empty() && !types.iter().any(|t| matches!(t, 1 | 4 | 6)) {
        bail!(
            "no token in the vocabulary is of a type that prints text (normal, \
             user-defined or byte); everything generated would print nothing"
        );
    }
    let byte_text = |t: &[u8]| match t {
        [b'<', b'0', b'x', hi, lo, b'>'] => hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit(),
        _ => false,
    };
    for (i, (text, _)) in texts
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &t))| t == 6)
    {
        if !byte_text(text) {
            bail!(
                "token {i} (\"{}\") is typed as a byte, but its text is not <0xHH>; \
                 llama.cpp would print a wrong byte for it",
                shown(text)
            );
        }
    }
    Ok(())
}

/// Refuses `gpt2` merges that do not join two tokens into a third, a list
/// too short for the vocabulary, and a beginning or end id naming a token
/// the merges use; warns of a token the merges use whose text llama.cpp
/// ends replies at (`</s>` could be a web text's own tag).
fn check_merges(
    texts: &[Vec<u8>],
    types: Option<&[i32]>,
    merges: &[Vec<u8>],
    ends: &[(End, u32)],
) -> Result<Vec<String>> {
    let (made, used) = merged(texts, merges, true)?;
    // What merges make or join is text: llama.cpp prints nothing for a
    // token of type undefined, unknown, control or unused (a comma typed
    // as a control token vanished from every reply).
    let silent = |set: &HashSet<usize>| {
        types.and_then(|types| {
            set.iter()
                .filter_map(|&j| Some((j, *types.get(j)?)))
                .filter(|(_, t)| matches!(t, 0 | 2 | 3 | 5))
                .min()
        })
    };
    for (set, how) in [(&made, "made by a merge"), (&used, "joined by a merge")] {
        if let Some((j, t)) = silent(set) {
            bail!(
                "token {j} (\"{}\") is {how}, so it is text, but its type ({t}) is one \
                 llama.cpp prints nothing for",
                shown(texts.get(j).map_or(&[][..], Vec::as_slice))
            );
        }
    }
    // Every normal token of more than one character is some merge's
    // result; without them, words split into letters.
    let normal = |i: &usize| types.map_or(true, |t| t.get(*i) == Some(&1));
    let long: Vec<usize> = (0..texts.len())
        .filter(normal)
        .filter(|&i| {
            texts
                .get(i)
                .is_some_and(|t| String::from_utf8_lossy(t).chars().nth(1).is_some())
        })
        .collect();
    let unmerged = long.iter().filter(|i| !made.contains(*i)).count();
    if unmerged as f64 > UNMERGED_MAX * long.len() as f64 {
        bail!(
            "{unmerged} of the vocabulary's {} multi-character tokens are made by no \
             merge ({} merges); the merge list is cut short or damaged, and words would \
             split into pieces the model did not learn",
            long.len(),
            merges.len()
        );
    }
    check_ends(texts, &made, &used, ends)
}

/// The tokens `merges` make and the tokens they take.
///
/// # Errors
///
/// - with `strict`, a merge that is not two tokens joining into a third;
///   otherwise such a merge is passed over.
fn merged(
    texts: &[Vec<u8>],
    merges: &[Vec<u8>],
    strict: bool,
) -> Result<(HashSet<usize>, HashSet<usize>)> {
    let ids: HashMap<&[u8], usize> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_slice(), i))
        .collect();
    let mut made = HashSet::new();
    let mut used = HashSet::new();
    for (i, merge) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first byte.
        let at = merge.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
        let parts = at.and_then(|at| Some((merge.get(..at)?, merge.get(at + 1..)?)));
        let Some((left, right)) = parts.filter(|(l, r)| !l.is_empty() && !r.is_empty()) else {
            if !strict {
                continue;
            }
            bail!(
                "merge {i} (\"{}\") is not two tokens separated by a space",
                shown(merge)
            );
        };
        let joined = [left, right].concat();
        let lookup = |t: &[u8]| ids.get(t).copied();
        let (Some(l), Some(r), Some(j)) = (lookup(left), lookup(right), lookup(&joined)) else {
            if !strict {
                continue;
            }
            bail!(
                "merge {i} (\"{}\") joins texts that are not all tokens of the vocabulary; \
                 the tokenizer would split text into other tokens than the model learned",
                shown(merge)
            );
        };
        used.extend([l, r]);
        made.insert(j);
    }
    Ok((made, used))
}

/// Refuses a beginning or end id naming a token the merges make or take,
/// and warns of such a token llama.cpp ends replies at, or hides, by its
/// text.
fn check_ends(
    texts: &[Vec<u8>],
    made: &HashSet<usize>,
    used: &HashSet<usize>,
    ends: &[(End, u32)],
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for &(end, id) in ends {
        let id = id as usize;
        if !(made.contains(&id) || used.contains(&id)) {
            continue;
        }
        let text = shown(texts.get(id).map_or(&[][..], Vec::as_slice));
        match end {
            End::Key(name) => bail!(
                "`tokenizer.ggml.{name}_token_id` is {id}, the ordinary text \"{text}\" \
                 that the merges build words from, not a marker; replies would start or \
                 stop at it"
            ),
            End::Default(name) => bail!(
                "`tokenizer.ggml.{name}_token_id` is not set, so llama.cpp takes token {id}, \
                 the ordinary text \"{text}\" that the merges build words from, not a \
                 marker; replies would start or stop at it"
            ),
            // A tag of web text could be a merged token in a working
            // model; only a marker in the keys is sure to be a fault.
            End::Text => warnings.push(format!(
                "token {id}, \"{text}\", is text the merges build words from, and llama.cpp \
                 ends replies at it by its text: a reply stops where the model writes it, \
                 and it is not printed"
            )),
            End::Hidden => warnings.push(format!(
                "token {id}, \"{text}\", is text the merges build words from, and llama.cpp \
                 makes it a control token by its text: where the model writes it, nothing \
                 is printed"
            )),
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level vocabulary: letters, what the merges make of
    /// them, and a marker.
    fn texts() -> Vec<Vec<u8>> {
        ["a", "b", "c", "ab", "abc", "<end>", "<0x0A>"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect()
    }

    fn merges(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|m| m.as_bytes().to_vec()).collect()
    }

    const TYPES: [i32; 7] = [1, 1, 1, 1, 1, 3, 6];

    fn run(types: &[i32], list: &[&str], eos: Option<u32>) -> Result<Vec<String>, String> {
        run_id(types, list, "eos", eos)
    }

    /// [`run`] with the id of `name` (`eos`, `fim_pad`) set.
    fn run_id(
        types: &[i32],
        list: &[&str],
        name: &str,
        id: Option<u32>,
    ) -> Result<Vec<String>, String> {
        let wanted = format!("tokenizer.ggml.{name}_token_id");
        let get = |key: &[u8]| match id {
            Some(id) if key == wanted.as_bytes() => Some(Meta::U32(id)),
            _ => None,
        };
        check(
            &texts(),
            Some(types),
            Some(&merges(list)),
            Some(b"gpt2"),
            &get,
        )
        .map_err(|e| format!("{e:#}"))
    }

    const GOOD: [&str; 2] = ["a b", "ab c"];

    #[test]
    fn a_consistent_vocabulary_passes() {
        run(&TYPES, &GOOD, Some(5)).expect("consistent");
        // A type list longer than the vocabulary.
        run(&[1, 1, 1, 1, 1, 3, 6, 99], &GOOD, None).expect("a type past the end");
    }

    #[test]
    fn types_that_print_nothing_or_a_wrong_byte_are_refused() {
        let e = run(&[1, 7, 1, 1, 1, 3, 6], &GOOD, None).unwrap_err();
        assert!(e.contains("token 1 has type 7"), "{e}");
        let e = run(&[3, 3, 3, 3, 3, 3, 3], &[], None).unwrap_err();
        assert!(
            e.contains("no token in the vocabulary is of a type that prints"),
            "{e}"
        );
        let e = run(&[6, 1, 1, 1, 1, 3, 6], &GOOD, None).unwrap_err();
        assert!(e.contains("token 0 (\"a\") is typed as a byte"), "{e}");
        let e = run(&[1, 1, 1, 3, 1, 3, 6], &GOOD, None).unwrap_err();
        assert!(e.contains("token 3 (\"ab\") is made by a merge"), "{e}");
        // One merges only join (a comma typed as control vanished).
        let e = run(&[1, 1, 5, 1, 1, 3, 6], &GOOD, None).unwrap_err();
        assert!(e.contains("token 2 (\"c\") is joined by a merge"), "{e}");
    }

    #[test]
    fn merges_that_make_no_token_or_too_few_are_refused() {
        let e = run(&TYPES, &["a b", "abc"], None).unwrap_err();
        assert!(e.contains("merge 1 (\"abc\") is not two tokens"), "{e}");
        let e = run(&TYPES, &["a b", "b c"], None).unwrap_err();
        assert!(
            e.contains("merge 1 (\"b c\") joins texts that are not all"),
            "{e}"
        );
        for cut in [&GOOD[..1], &[]] {
            let e = run(&TYPES, cut, None).unwrap_err();
            assert!(
                e.contains("multi-character tokens are made by no merge"),
                "{e}"
            );
        }
    }

    #[test]
    fn merges_under_a_tokenizer_without_them_are_refused() {
        let none = |_: &[u8]| None;
        for name in [&b"bert"[..], b"t5"] {
            let e = check(
                &texts(),
                Some(&TYPES),
                Some(&merges(&GOOD)),
                Some(name),
                &none,
            )
            .map_err(|e| format!("{e:#}"))
            .unwrap_err();
            assert!(
                e.contains("uses no merges, but the file holds 2 of them"),
                "{e}"
            );
            check(&texts(), Some(&TYPES), None, Some(name), &none).expect("no merges");
            check(&texts(), Some(&TYPES), Some(&[]), Some(name), &none).expect("an empty list");
        }
        // SentencePiece files may carry merges that llama.cpp passes over.
        check(
            &texts(),
            Some(&TYPES),
            Some(&merges(&GOOD)),
            Some(b"llama"),
            &none,
        )
        .expect("llama");
    }

    #[test]
    fn a_byte_level_vocabulary_under_a_tokenizer_that_does_not_decode_one_is_refused() {
        // One word in twenty spelled with a leading `Ġ` is byte-level.
        let mut texts: Vec<Vec<u8>> = (0..40).map(|i| format!("w{i}").into_bytes()).collect();
        texts[3] = "\u{120}the".into();
        let run = |texts: &[Vec<u8>], name: &str, pre: &str| {
            let pre = pre.as_bytes().to_vec();
            let get = move |key: &[u8]| {
                (key == b"tokenizer.ggml.pre" && !pre.is_empty()).then(|| Meta::Str(pre.clone()))
            };
            check(texts, None, None, Some(name.as_bytes()), &get).map_err(|e| format!("{e:#}"))
        };
        run(&texts, "bert", "").expect("one in forty");
        texts[9] = "\u{120}a".into();
        for name in ["bert", "t5", "gemma4", "llama", "plamo2", "rwkv"] {
            let e = run(&texts, name, "").unwrap_err();
            let want = format!(
                "2 of the 40 token texts start with `Ġ`, the byte-level spelling of a space, \
                 but `tokenizer.ggml.model` `{name}` does not decode byte-level text"
            );
            assert!(e.contains(&want), "{e}");
        }
        for name in ["gpt2", "hybriddna", "whitespace"] {
            run(&texts, name, "").expect("byte-level BPE");
            run(&texts, name, "smollm").expect("a pre-tokenizer that keeps bytes");
            let e = run(&texts, name, "sarvam-moe").unwrap_err();
            let want = format!(
                "but `tokenizer.ggml.model` `{name}` with the pre-tokenizer `sarvam-moe` does \
                 not decode byte-level text"
            );
            assert!(e.contains(&want), "{e}");
        }
        // The other way round: SentencePiece's `▁` under a byte-level decoder.
        let spm: Vec<Vec<u8>> = texts
            .iter()
            .map(|t| {
                String::from_utf8_lossy(t)
                    .replace('\u{120}', "\u{2581}")
                    .into_bytes()
            })
            .collect();
        for name in ["t5", "llama", "gemma4"] {
            run(&spm, name, "").expect("spaces as ▁");
        }
        run(&spm, "gpt2", "gemma4").expect("a pre-tokenizer that writes ▁");
        for (name, pre) in [("gpt2", ""), ("gpt2", "smollm"), ("whitespace", "")] {
            let e = run(&spm, name, pre).unwrap_err();
            let want = "2 of the 40 token texts hold characters that byte-level text never has";
            assert!(e.contains(want), "{e}");
            assert!(
                e.contains("would print each of those tokens as an unknown byte"),
                "{e}"
            );
        }
        // A decoder that prints texts as they are takes neither spelling.
        for name in ["plamo2", "rwkv"] {
            let e = run(&spm, name, "").unwrap_err();
            assert!(e.contains("2 of the 40 token texts start with `▁`"), "{e}");
            assert!(e.contains("prints token texts as they are"), "{e}");
        }
        // Spaces written as themselves, or any text byte-level text never
        // holds, print as unknown bytes too, unless the tokens are not
        // normal ones, which print as they are.
        let mut plain = spm.clone();
        plain[3] = " the".into();
        plain[9] = "\u{4e2d}".into();
        run(&plain, "hybriddna", "").unwrap_err();
        let mut types = vec![1; 40];
        types[3] = 4;
        let typed = check(&plain, Some(&types), None, Some(b"gpt2"), &|_: &[u8]| None);
        typed.expect("one normal token in forty");
        // `hybriddna`'s DNA words end with a mark llama.cpp strips.
        let dna: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("ACGT{i}\u{e000}").into_bytes())
            .collect();
        run(&dna, "hybriddna", "").expect("marked DNA words");
        run(&dna, "gpt2", "").unwrap_err();
        // A `Ġ` inside a word is no space.
        texts[3] = "x\u{120}".into();
        texts[9] = "y\u{120}".into();
        run(&texts, "t5", "").expect("no leading marks");
        // Below twenty tokens one is enough.
        let few: Vec<Vec<u8>> = ["\u{120}a", "b", "c"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        run(&few, "bert", "").unwrap_err();
    }

    #[test]
    fn an_end_id_outside_the_vocabulary_or_on_text_is_refused() {
        let e = run(&TYPES, &GOOD, Some(7)).unwrap_err();
        assert!(
            e.contains("`tokenizer.ggml.eos_token_id` is 7, outside the vocabulary of 7"),
            "{e}"
        );
        for text in [0, 3, 4] {
            let e = run(&TYPES, &GOOD, Some(text)).unwrap_err();
            assert!(
                e.contains("the merges build words from, not a marker"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn a_merged_token_llama_cpp_ends_replies_at_by_its_text_is_warned_of() {
        // `end` built by merges, a character at a time, beside a marker.
        // With `marker_key`, the key `tokenizer.ggml.{marker_key}_token_id`
        // names the marker.
        let check_with = |end: &str, marker_key: Option<&str>| {
            let chars: Vec<String> = end.chars().map(String::from).collect();
            let mut texts: Vec<String> = Vec::new();
            for c in &chars {
                if !texts.contains(c) {
                    texts.push(c.clone());
                }
            }
            let mut list = Vec::new();
            for k in 2..=chars.len() {
                list.push(format!("{} {}", chars[..k - 1].concat(), chars[k - 1]));
                texts.push(chars[..k].concat());
            }
            let marker = texts.len() as u32;
            texts.extend(["<x>".to_owned(), "<0x0A>".to_owned()]);
            let mut types = vec![1; texts.len() - 2];
            types.extend([3, 6]);
            let texts: Vec<Vec<u8>> = texts.into_iter().map(String::into_bytes).collect();
            let wanted = marker_key.map(|k| format!("tokenizer.ggml.{k}_token_id"));
            let get = |key: &[u8]| match &wanted {
                Some(k) if key == k.as_bytes() => Some(Meta::U32(marker)),
                _ => None,
            };
            let list: Vec<&str> = list.iter().map(String::as_str).collect();
            check(
                &texts,
                Some(&types),
                Some(&merges(&list)),
                Some(b"gpt2"),
                &get,
            )
            .map_err(|e| format!("{e:#}"))
        };
        let warnings = check_with("</s>", None).expect("a warning, not a refusal");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("token 6, \"</s>\", is text the merges build words from"),
            "{warnings:?}"
        );
        assert_eq!(check_with("</t>", None), Ok(vec![]));
        // `<PAD>` ends replies only when no fim_pad id is given.
        assert_eq!(check_with("<PAD>", None).map(|w| w.len()), Ok(1));
        assert_eq!(check_with("<PAD>", Some("fim_pad")), Ok(vec![]));
        // `<PRE>` ends nothing, but is made a control token, which prints
        // nothing.
        let hidden = check_with("<PRE>", None).expect("a warning");
        assert!(
            hidden.len() == 1 && hidden[0].contains("makes it a control token by its text"),
            "{hidden:?}"
        );
        // A prefix id under the key llama.cpp still reads by its old name
        // is as good as one under the new.
        assert_eq!(check_with("<PRE>", Some("fim_pre")), Ok(vec![]));
        assert_eq!(check_with("<PRE>", Some("prefix")), Ok(vec![]));
    }

    #[test]
    fn an_id_llama_cpp_fills_in_or_drops_is_judged_as_it_uses_it() {
        // Eleven letters, then `ab` at id 11, the id llama.cpp gives a BPE
        // vocabulary's BOS and EOS when no key names one.
        let mut texts: Vec<Vec<u8>> = (b'a'..=b'k').map(|c| vec![c]).collect();
        let rest = [
            "ab", "<x>", "<0x0A>", "<", "P", "A", "D", ">", "<P", "<PA", "<PAD", "<PAD>",
        ];
        texts.extend(rest.iter().map(|t| t.as_bytes().to_vec()));
        let mut types = vec![1; texts.len()];
        types[12] = 3;
        types[13] = 6;
        let list = merges(&["a b", "< P", "<P A", "<PA D", "<PAD >"]);
        let run_as = |tokenizer: &[u8], keys: &[(&str, Meta)]| {
            let get = |key: &[u8]| {
                keys.iter()
                    .find(|(k, _)| k.as_bytes() == key)
                    .map(|(_, v)| v.clone())
            };
            check(&texts, Some(&types), Some(&list), Some(tokenizer), &get)
                .map_err(|e| format!("{e:#}"))
        };
        let run = |keys: &[(&str, Meta)]| run_as(b"gpt2", keys);
        let eos = ("tokenizer.ggml.eos_token_id", Meta::U32(12));
        let e = run(&[]).unwrap_err();
        assert!(
            e.starts_with("`tokenizer.ggml.eos_token_id` is not set, so llama.cpp takes token 11"),
            "{e}"
        );
        assert_eq!(
            run(std::slice::from_ref(&eos)).map(|w| w.len()),
            Ok(1),
            "only `<PAD>`"
        );
        let adds_bos = ("tokenizer.ggml.add_bos_token", Meta::Bool(true));
        let e = run(&[eos.clone(), adds_bos.clone()]).unwrap_err();
        assert!(
            e.contains("`tokenizer.ggml.bos_token_id` is not set"),
            "{e}"
        );
        let bos = ("tokenizer.ggml.bos_token_id", Meta::U32(12));
        run(&[eos.clone(), adds_bos, bos]).expect("named ids");
        // A fim_pad id outside the vocabulary is dropped, and `<PAD>`
        // taken by its text.
        let far = ("tokenizer.ggml.fim_pad_token_id", Meta::U32(99));
        assert_eq!(run(&[eos.clone(), far]).map(|w| w.len()), Ok(1));
        let marker = ("tokenizer.ggml.fim_pad_token_id", Meta::U32(12));
        assert_eq!(run(&[eos.clone(), marker]), Ok(vec![]));
        // The BPE tokenizers whose merges follow other rules are held to
        // the merges they have.
        for tokenizer in [&b"whitespace"[..], b"hybriddna"] {
            let e = run_as(tokenizer, &[]).unwrap_err();
            assert!(
                e.contains("`tokenizer.ggml.eos_token_id` is not set"),
                "{e}"
            );
        }
        // Pre-tokenizers that add a BOS unless told not to, and those that
        // give no BOS without a key.
        let pre = |name: &str| ("tokenizer.ggml.pre", Meta::Str(name.as_bytes().to_vec()));
        let e = run(&[eos.clone(), pre("llama-bpe")]).unwrap_err();
        assert!(
            e.contains("`tokenizer.ggml.bos_token_id` is not set"),
            "{e}"
        );
        let off = ("tokenizer.ggml.add_bos_token", Meta::Bool(false));
        assert_eq!(
            run(&[eos.clone(), pre("llama-bpe"), off]).map(|w| w.len()),
            Ok(1)
        );
        let on = ("tokenizer.ggml.add_bos_token", Meta::Bool(true));
        assert_eq!(run(&[eos, pre("glm4"), on]).map(|w| w.len()), Ok(1));
    }

    #[test]
    fn fill_in_the_middle_ids_that_end_replies_are_held_to_the_same_rule() {
        for name in ["fim_pad", "fim_rep", "fim_sep"] {
            let e = run_id(&TYPES, &GOOD, name, Some(3)).unwrap_err();
            let want = format!("`tokenizer.ggml.{name}_token_id` is 3, the ordinary text \"ab\"");
            assert!(e.contains(&want), "{e}");
            run_id(&TYPES, &GOOD, name, Some(5)).expect("a marker");
            // llama.cpp drops one outside the vocabulary: it ends nothing.
            run_id(&TYPES, &GOOD, name, Some(7)).expect("dropped");
        }
        // The beginning-of-fill ids end nothing and are not checked.
        run_id(&TYPES, &GOOD, "fim_pre", Some(3)).expect("not an end");
    }
}
