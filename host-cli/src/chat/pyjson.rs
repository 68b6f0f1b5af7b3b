//! `tojson` as Hugging Face's chat templates have it: Python's
//! `json.dumps(value, ensure_ascii=False, indent=..., separators=...,
//! sort_keys=...)`, written out for minijinja's values.
//!
//! minijinja's own filter escapes `<`, `>`, `&` and `'` for HTML, takes only
//! `indent`, and writes floats as Rust does (`1e-7` where Python writes
//! `1e-07`), so a tool turn or a template's own literal would reach the
//! model as text it was never tuned on.

use minijinja::value::{from_args, Kwargs, Rest, ValueKind, ValueOrKwargs};
use minijinja::{Error, ErrorKind, Value};

/// The deepest nesting `tojson` writes, a little below Python's recursion
/// limit; a namespace can hold itself, and the writer recurses.
const MAX_DEPTH: usize = 900;

/// The most bytes one `tojson` writes. minijinja's fuel does not count the
/// bytes a filter of ours writes: a template that applies it over and over
/// to its own output would double it each time.
const MAX_JSON: usize = 8 << 20;

/// The filter: `value | tojson(ensure_ascii, indent, separators,
/// sort_keys)`, the signature Hugging Face gives it, each argument given
/// by place or by name. `indent` is a count of spaces (none below 1) or the
/// text of one level; `separators` the item and key separators.
pub fn tojson(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let args = args.into_values();
    let (by_place, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if by_place.len() > names.len() {
        return Err(invalid("tojson takes at most 4 arguments"));
    }
    let mut given: [Option<Value>; 4] = Default::default();
    for ((slot, name), placed) in given
        .iter_mut()
        .zip(names)
        .zip(by_place.iter().map(Some).chain(std::iter::repeat(None)))
    {
        let named = kwargs.get::<Option<Value>>(name)?;
        *slot = match (placed, named) {
            (Some(_), Some(_)) => return Err(invalid(&format!("tojson: {name} is given twice"))),
            (Some(v), None) => Some(v.clone()),
            (None, named) => named,
        }
        .filter(|v| !v.is_none() && !v.is_undefined());
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = given;
    let indent = match indent {
        None => None,
        Some(v) => Some(match v.as_str() {
            Some(text) => text.to_owned(),
            // Python writes a level of `n` spaces, none for `n` below 1.
            None if v.is_integer() || v.kind() == ValueKind::Bool => {
                let n = v.as_i64().unwrap_or(i64::from(v.is_true()));
                " ".repeat(usize::try_from(n).unwrap_or(0).min(MAX_JSON))
            }
            None => return Err(invalid("tojson: indent is not a whole number or a string")),
        }),
    };
    let (item, key) = match separators {
        Some(pair) => {
            let parts: Vec<Value> = pair.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => match (item.as_str(), key.as_str()) {
                    (Some(item), Some(key)) => (item.to_owned(), key.to_owned()),
                    _ => return Err(invalid("tojson: separators is not a pair of strings")),
                },
                _ => return Err(invalid("tojson: separators is not a pair of strings")),
            }
        }
        // Python's defaults: no space at line ends when indenting.
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let mut writer = Writer {
        out: String::new(),
        indent,
        item,
        key,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
    };
    writer.value(value, 0)?;
    Ok(Value::from_safe_string(writer.out))
}

fn invalid(what: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, what.to_owned())
}

/// One `json.dumps` call's settings and output.
struct Writer {
    out: String,
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl Writer {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        if self.out.len() > MAX_JSON {
            return Err(too_long());
        }
        if depth > MAX_DEPTH {
            return Err(invalid(&format!(
                "tojson: values nested more than {MAX_DEPTH} deep (one that holds itself?)"
            )));
        }
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => self.out.push_str(&value.to_string()),
            ValueKind::Number => {
                let x = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                self.out.push_str(&python_float(x));
            }
            ValueKind::String => self.string(value.as_str().unwrap_or_default())?,
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items, depth, |w, item, depth| {
                    w.value(&item, depth)
                })?;
            }
            ValueKind::Map => {
                let mut keyed = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    keyed.push((key, item));
                }
                if self.sort_keys {
                    // As Python sorts them: numbers by value, strings by
                    // code point, and no mix of the two.
                    let kinds = |k: &Value| match k.kind() {
                        ValueKind::String => 0,
                        ValueKind::Number | ValueKind::Bool => 1,
                        _ => 2,
                    };
                    let first = keyed.first().map_or(0, |(k, _)| kinds(k));
                    if keyed.iter().any(|(k, _)| kinds(k) != first || first == 2) {
                        return Err(invalid(
                            "tojson: sort_keys needs keys that are all strings or all numbers",
                        ));
                    }
                    keyed.sort_by(|a, b| a.0.cmp(&b.0));
                }
                let mut pairs = Vec::with_capacity(keyed.len());
                for (key, item) in keyed {
                    pairs.push((key_text(&key)?, item));
                }
                self.container('{', '}', pairs, depth, |w, (key, item), depth| {
                    w.string(&key)?;
                    let separator = w.key.clone();
                    w.out.push_str(&separator);
                    w.value(&item, depth)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    /// Writes `items` between `open` and `close`, each on a line of its
    /// own when indenting.
    fn container<T>(
        &mut self,
        open: char,
        close: char,
        items: Vec<T>,
        depth: usize,
        mut write: impl FnMut(&mut Self, T, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        let any = !items.is_empty();
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                let separator = self.item.clone();
                self.out.push_str(&separator);
            }
            self.new_line(depth + 1)?;
            write(self, item, depth + 1)?;
        }
        if any {
            self.new_line(depth)?;
        }
        self.out.push(close);
        Ok(())
    }

    fn new_line(&mut self, depth: usize) -> Result<(), Error> {
        if let Some(level) = &self.indent {
            if self.out.len() + level.len().saturating_mul(depth) > MAX_JSON {
                return Err(too_long());
            }
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(level);
            }
        }
        Ok(())
    }

    /// A JSON string as Python escapes it.
    fn string(&mut self, text: &str) -> Result<(), Error> {
        if self.out.len().saturating_add(text.len()) > MAX_JSON {
            return Err(too_long());
        }
        self.out.push('"');
        for c in text.chars() {
            // Escapes write up to twelve bytes for one character.
            if self.out.len() > MAX_JSON {
                return Err(too_long());
            }
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if c < ' ' || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0_u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
        Ok(())
    }
}

fn too_long() -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson would write more than {MAX_JSON} bytes"),
    )
}

/// A map key as Python's `json.dumps` writes it: strings as they are,
/// numbers, booleans and None as their JSON text.
fn key_text(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(python_float(f64::try_from(key.clone()).unwrap_or(f64::NAN))),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// A float as Python's `repr` writes it: the shortest digits that read
/// back as the same value, positionally from 1e-4 up to 1e16 and with an
/// exponent of at least two digits outside (`1e-07`, `1.5e+16`);
/// `NaN` and `Infinity` as `json.dumps` writes them.
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust writes the shortest digits that read back as `x`: `d.ddde±x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let text = if point <= 0 {
            let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
            format!("0.{zeros}{digits}")
        } else {
            let point = usize::try_from(point).unwrap_or(0);
            match (digits.get(..point), digits.get(point..)) {
                (Some(whole), Some(fraction)) if !fraction.is_empty() => {
                    format!("{whole}.{fraction}")
                }
                _ => format!(
                    "{digits}{}.0",
                    "0".repeat(point.saturating_sub(digits.len()))
                ),
            }
        };
        format!("{sign}{text}")
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (x, python) in [
            (1e-7, "1e-07"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123.5, "123.5"),
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (-2.5e-300, "-2.5e-300"),
            (0.1, "0.1"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(python_float(x), python, "{x:e}");
        }
    }
}
