//! Checks that a file is a well-formed GGUF model before llama.cpp sees it.
//!
//! llama.cpp reports a broken file as a bare load failure, and some
//! malformed headers make it abort the process instead of returning. So the
//! whole header is walked here first, with every length checked against the
//! file's size: key-value pairs, tensor descriptions, and that each
//! tensor's data lies inside the file. The message names the path and the
//! first fault found.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Data alignment when the file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Checks the path, the header, and that every tensor's data is present.
///
/// # Errors
///
/// - the path is missing, a directory, unreadable or empty;
/// - the file is not GGUF, its header is corrupt, or it is truncated.
pub fn check_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        if path.exists() {
            format!("cannot read model {}", path.display())
        } else {
            format!(
                "model {} does not exist (run fixtures/fetch-model.sh, or pass --model)",
                path.display()
            )
        }
    })?;
    if meta.is_dir() {
        bail!("model {} is a directory, not a GGUF file", path.display());
    }
    let file = File::open(path).with_context(|| format!("cannot open model {}", path.display()))?;
    if meta.len() == 0 {
        bail!("model {} is empty", path.display());
    }
    let mut reader = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len: meta.len(),
    };
    check(&mut reader)
        .with_context(|| format!("model {} is not a usable GGUF file", path.display()))
}

/// Bytes a tensor of `elements` elements of ggml type `kind` takes, when the
/// type is known: (block size in elements, bytes per block).
fn type_layout(kind: u32) -> Option<(u64, u64)> {
    Some(match kind {
        0 => (1, 4),     // F32
        1 => (1, 2),     // F16
        2 => (32, 18),   // Q4_0
        3 => (32, 20),   // Q4_1
        6 => (32, 22),   // Q5_0
        7 => (32, 24),   // Q5_1
        8 => (32, 34),   // Q8_0
        9 => (32, 36),   // Q8_1
        10 => (256, 84), // Q2_K
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        20 => (32, 18),
        21 => (256, 110),
        22 => (256, 82),
        23 => (256, 136),
        24 => (1, 1), // I8
        25 => (1, 2), // I16
        26 => (1, 4), // I32
        27 => (1, 8), // I64
        28 => (1, 8), // F64
        29 => (256, 56),
        30 => (1, 2), // BF16
        34 => (256, 54),
        35 => (256, 66),
        _ => return None,
    })
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

    /// Skips one value of GGUF type `kind`; returns it when it is a u32.
    fn value(&mut self, kind: u32, what: &str, depth: u32) -> Result<Option<u64>> {
        let fixed = match kind {
            0 | 1 | 7 => 1,
            2..=3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                self.string(what, 0)?;
                return Ok(None);
            }
            9 => {
                if depth > 2 {
                    bail!("{what} nests arrays too deeply");
                }
                let item = self.u32(what)?;
                let n = self.u64(what)?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2..=3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => bail!("{what} is an array of unknown type {item}"),
                };
                if n.saturating_mul(min) > self.remaining() {
                    bail!(
                        "{what} claims {n} items but only {} bytes remain",
                        self.remaining()
                    );
                }
                if item == 8 || item == 9 {
                    for _ in 0..n {
                        self.value(item, what, depth + 1)?;
                    }
                } else {
                    self.skip(n * min, what)?;
                }
                return Ok(None);
            }
            _ => bail!("{what} has unknown value type {kind}"),
        };
        if kind == 4 {
            return Ok(Some(u64::from(self.u32(what)?)));
        }
        self.skip(fixed, what)?;
        Ok(None)
    }
}

fn check<R: Read + Seek>(r: &mut Reader<R>) -> Result<()> {
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
    for i in 0..n_kv {
        let key = r.string(&format!("key {i}"), 256)?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let kind = r.u32(&format!("the type of `{key}`"))?;
        let value = r.value(kind, &format!("the value of `{key}`"), 0)?;
        if key == "general.alignment" {
            match value {
                Some(a) if a > 0 && a.is_power_of_two() => alignment = a,
                _ => bail!("`general.alignment` must be a power of two"),
            }
        }
    }

    let mut tensors = Vec::new();
    for i in 0..n_tensors {
        let name = r.string(&format!("the name of tensor {i}"), 256)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let dims = r.u32(&format!("the dimensions of `{name}`"))?;
        if dims == 0 || dims > MAX_DIMS {
            bail!("tensor `{name}` has {dims} dimensions (1 to {MAX_DIMS} allowed)");
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            let d = r.u64(&format!("a dimension of `{name}`"))?;
            elements = elements
                .checked_mul(d)
                .with_context(|| format!("tensor `{name}` has an impossible size"))?;
        }
        let kind = r.u32(&format!("the type of `{name}`"))?;
        let offset = r.u64(&format!("the offset of `{name}`"))?;
        if offset % alignment != 0 {
            bail!("tensor `{name}` is not aligned to {alignment} bytes");
        }
        tensors.push((name, elements, kind, offset));
    }

    let data_start = r.pos.div_ceil(alignment) * alignment;
    let data_len = r.len.saturating_sub(data_start);
    for (name, elements, kind, offset) in tensors {
        let Some((block, bytes)) = type_layout(kind) else {
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

    fn run(bytes: Vec<u8>) -> Result<()> {
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
}
