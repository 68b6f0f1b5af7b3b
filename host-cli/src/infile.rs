//! Reading a text input whole, up to a size no real input reaches.
//!
//! A path may name a device or a pipe that never ends (`/dev/zero`, `yes |`),
//! and reading it to the end grew memory until the system killed the
//! process. Each input is read up to its limit plus one byte, so one too
//! large is refused as soon as it passes the limit.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Most bytes of a prompt, a messages file or a chat template: 64 MiB,
/// more text than the largest context (1048576 tokens) holds at 64 bytes
/// a token.
pub const MAX_TEXT: u64 = 64 << 20;

/// Most bytes of a trace: 256 MiB, a trace of the largest context with
/// room to spare (a step takes about 60 bytes).
pub const MAX_TRACE: u64 = 256 << 20;

/// Reads all of `input`, failing once it holds more than `limit` bytes.
///
/// # Errors
///
/// - the read fails, or the input holds more than `limit` bytes.
pub fn read_bounded(input: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it holds more than {} MiB", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// Whether `path` is `-`, which names stdin in place of an input file
/// (`./-` names a file called `-`).
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// An input's name in messages: `<stdin>` for `-`, else its path as
/// [`named`] shows it.
pub fn shown(path: &Path) -> impl fmt::Display + '_ {
    struct Shown<'p>(&'p Path);
    impl fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if is_stdin(self.0) {
                f.write_str("<stdin>")
            } else {
                named(self.0).fmt(f)
            }
        }
    }
    Shown(path)
}

/// A path in messages: as it is, or between backticks when it is empty or
/// starts or ends with whitespace, which would otherwise not show.
pub fn named(path: &Path) -> impl fmt::Display + '_ {
    struct Named<'p>(&'p Path);
    impl fmt::Display for Named<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let text = self.0.to_string_lossy();
            let blank_edge = text.is_empty()
                || text.starts_with(char::is_whitespace)
                || text.ends_with(char::is_whitespace);
            if blank_edge {
                write!(f, "`{}`", self.0.display())
            } else {
                self.0.display().fmt(f)
            }
        }
    }
    Named(path)
}

/// Reads all of the file at `path`, or of stdin for `-`, failing once it
/// holds more than `limit` bytes.
///
/// # Errors
///
/// - the file cannot be opened or read, or holds more than `limit` bytes.
pub fn read_input(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    if is_stdin(path) {
        read_bounded(io::stdin().lock(), limit)
    } else {
        read_bounded(File::open(path)?, limit)
    }
}

/// `bytes` without a leading UTF-8 byte-order mark, which some editors
/// write at the start of a text file.
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// What the JSON text in `bytes` holds at its top, for a message about a
/// file that did not read as expected: "an object", "an array" and so on
/// for its first value; "nothing" when blank, "no JSON" when its first
/// value does not parse. Later values (a JSON Lines file) are not read.
pub fn json_kind(bytes: &[u8]) -> &'static str {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return "nothing";
    }
    let first = serde_json::Deserializer::from_slice(bytes)
        .into_iter::<serde::de::IgnoredAny>()
        .next();
    if !matches!(first, Some(Ok(_))) {
        return "no JSON";
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "true or false",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Reads a `T` from JSON, naming where in the document a value was
/// refused (`settings.seed`, `steps[3].id`, `[2].role`): serde_json alone
/// gives only a line and column, which a file on one line makes useless.
///
/// # Errors
///
/// - the text is not JSON, or `T`'s reader refuses a value; the message
///   starts with the value's place unless it is the whole document.
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        use serde_path_to_error::Segment;
        // A place known only in part (a key cut off, a syntax error inside
        // a value) is named by the part known.
        let mut path = String::new();
        for segment in e
            .path()
            .iter()
            .take_while(|s| !matches!(s, Segment::Unknown))
        {
            match segment {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                named => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&named.to_string());
                }
            }
        }
        let inner = e.into_inner();
        let hint = escape_hint(&inner);
        match path.is_empty() {
            true => format!("{inner}{hint}"),
            false => format!("at `{path}`: {inner}{hint}"),
        }
    })?;
    // What follows the value (a second document, stray text) is an error,
    // as serde_json::from_slice makes it.
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// What serde_json's terse errors about a `\u` escape mean: its "end of
/// hex escape" is what a lone surrogate (`"\ud800x"`) gets, which JSON text
/// cannot hold, as well as an escape cut short.
fn escape_hint(e: &serde_json::Error) -> &'static str {
    let text = e.to_string();
    if e.is_syntax() && (text.contains("hex escape") || text.contains("surrogate")) {
        " (a `\\u` escape takes four hex digits, and one from `\\uD800` to `\\uDFFF` must \
         be followed by the other half of its surrogate pair)"
    } else {
        ""
    }
}

/// Whether the first JSON value in `bytes` is an object without `field`
/// (such as another program's output where a trace was expected).
pub fn object_without(bytes: &[u8], field: &str) -> bool {
    use serde::de::DeserializeSeed as _;
    // Only the keys are kept: a file of hundreds of megabytes read into
    // JSON values would take gigabytes.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    HasField(field).deserialize(&mut de).is_ok_and(|has| !has)
}

/// Reads a struct from a JSON object only, for `#[serde(deserialize_with)]`.
///
/// A derived reader also takes an array, as the fields in order, which in
/// a hand-edited file is a mistake to report, not a meaning to guess.
///
/// # Errors
///
/// - the value is not an object, or the struct's own reader refuses it.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    d.deserialize_map(ObjectOf(std::marker::PhantomData))
}

/// [`object`] for each element of an array.
///
/// # Errors
///
/// - the value is not an array, or an element is refused as by [`object`].
pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    d.deserialize_seq(ObjectsOf(std::marker::PhantomData))
}

/// Reads a `T` from a JSON object, refusing every other value.
struct ObjectOf<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectOf<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::de::DeserializeSeed<'de> for ObjectOf<T> {
    type Value = T;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

/// Reads an array of JSON objects, each a `T`.
struct ObjectsOf<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectsOf<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of JSON objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(ObjectOf(std::marker::PhantomData))? {
            out.push(item);
        }
        Ok(out)
    }
}

/// Reads a JSON object's keys, passing over their values, and tells
/// whether one of them is the field named.
struct HasField<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for HasField<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for HasField<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut has = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            has |= key == self.0;
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(has)
    }
}

/// Reads the file at `path` (stdin for `-`) as UTF-8 text of at most
/// `limit` bytes, without a leading byte-order mark.
///
/// # Errors
///
/// - the file cannot be opened or read, holds more than `limit` bytes, or
///   is not UTF-8.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    let mut bytes = read_input(path, limit)?;
    let bom = bytes.len() - without_bom(&bytes).len();
    bytes.drain(..bom);
    String::from_utf8(bytes).map_err(|e| {
        // Offsets count the file's own bytes, the mark included.
        let at = e.utf8_error().valid_up_to() + bom;
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is not valid UTF-8 (invalid byte at offset {at})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_input_stops_one_byte_past_the_limit() {
        let e = read_bounded(io::repeat(0), 4 << 20).unwrap_err();
        assert_eq!(e.to_string(), "it holds more than 4 MiB");
        let zero = read_text(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(zero.to_string(), "it holds more than 1 MiB");
        assert_eq!(read_bounded(&[7u8; 10][..], 10).unwrap(), [7; 10]);
    }

    #[test]
    fn a_lone_surrogate_is_explained() {
        let hint = "(a `\\u` escape takes four hex digits, and one from `\\uD800` to \
                    `\\uDFFF` must be followed by the other half of its surrogate pair)";
        for json in [r#"["a\ud800b"]"#, r#"["\udc00"]"#, r#"["\ud800\u0041"]"#] {
            let e = from_json::<Vec<String>>(json.as_bytes()).unwrap_err();
            assert!(e.ends_with(hint), "{json}: {e}");
            assert!(e.starts_with("at `[0]`: "), "{json}: {e}");
        }
        let pair = from_json::<Vec<String>>(r#"["\ud83d\ude00"]"#.as_bytes()).unwrap();
        assert_eq!(pair, ["\u{1f600}"]);
        let other = from_json::<Vec<String>>(br#"["a\q"]"#).unwrap_err();
        assert!(!other.contains("surrogate"), "{other}");
    }

    #[test]
    fn a_path_that_would_not_show_is_quoted() {
        let named = |p: &str| named(Path::new(p)).to_string();
        assert_eq!(named("models/m.gguf"), "models/m.gguf");
        assert_eq!(named("a b"), "a b");
        assert_eq!(named(""), "``");
        assert_eq!(named(" "), "` `");
        assert_eq!(named("m.gguf\t"), "`m.gguf\t`");
        assert_eq!(named(" m.gguf"), "` m.gguf`");
        assert_eq!(shown(Path::new("-")).to_string(), "<stdin>");
        assert_eq!(shown(Path::new(" - ")).to_string(), "` - `");
    }

    #[test]
    fn text_that_is_not_utf8_names_the_offset() {
        let path = std::env::temp_dir().join(format!("talkback-infile-{}", std::process::id()));
        std::fs::write(&path, b"\xef\xbb\xbfok\xff").unwrap();
        let e = read_text(&path, MAX_TEXT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is not valid UTF-8 (invalid byte at offset 5)"
        );
        std::fs::write(&path, "ok").unwrap();
        assert_eq!(read_text(&path, MAX_TEXT).unwrap(), "ok");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_byte_order_mark_is_dropped_and_json_is_named_by_its_top() {
        assert_eq!(without_bom(b"\xef\xbb\xbf[1]"), b"[1]");
        assert_eq!(without_bom(b"\xef\xbb[1]"), b"\xef\xbb[1]");
        let path = std::env::temp_dir().join(format!("talkback-bom-{}", std::process::id()));
        std::fs::write(&path, "\u{feff}[]\u{feff}").unwrap();
        assert_eq!(read_text(&path, MAX_TEXT).unwrap(), "[]\u{feff}");
        std::fs::remove_file(&path).unwrap();
        let kinds = [
            ("", "nothing"),
            (" \n{}", "an object"),
            ("[1, {}]", "an array"),
            ("\"a\"", "a string"),
            ("-1", "a number"),
            ("7e3 ", "a number"),
            ("true", "true or false"),
            ("null", "null"),
            ("{\"a\": 1}\n{\"b\": 2}\n", "an object"),
            ("#", "no JSON"),
            ("[", "no JSON"),
            ("no messages", "no JSON"),
            ("fatal: not a git repository", "no JSON"),
            ("- role: user", "no JSON"),
            ("nothing", "no JSON"),
        ];
        for (text, kind) in kinds {
            assert_eq!(json_kind(text.as_bytes()), kind, "{text:?}");
        }
        assert!(object_without(b"{\"a\": 1}\n{\"version\": 2}", "version"));
        assert!(!object_without(
            b"{\"version\": 1, \"steps\": [}",
            "version"
        ));
        assert!(!object_without(b"[{\"a\": 1}]", "version"));
        assert!(!object_without(
            b"{\"a\": [1, {\"version\": 2}], \"version\": 1}",
            "version"
        ));
        assert!(object_without(b"{\"a\": {\"version\": 2}}", "version"));
        // An escaped key is the name it spells.
        assert!(!object_without(b"{\"v\\u0065rsion\": 1}", "version"));
        assert!(!object_without(b"{\"a\": 1", "version"));
    }

    #[test]
    fn a_dash_names_stdin_and_a_path_to_it_a_file() {
        assert!(is_stdin(Path::new("-")));
        assert!(!is_stdin(Path::new("./-")));
        assert!(!is_stdin(Path::new("--")));
        assert_eq!(shown(Path::new("-")).to_string(), "<stdin>");
        assert_eq!(shown(Path::new("./-")).to_string(), "./-");
    }
}
