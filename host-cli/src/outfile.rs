//! A file opened before the work that fills it.
//!
//! A chart or a trace is written only when a run ends, minutes later; a path
//! that cannot be written must fail before the model even loads. The file is
//! opened at once without touching its contents, replaced whole when it is
//! finally written, and removed again if this opening created it and the
//! run ended without writing it.

use std::fs::File;
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// An output file, opened early and written once at the end.
pub struct ReservedFile {
    file: File,
    path: PathBuf,
    /// Whether opening it created it.
    created: bool,
    written: bool,
}

impl ReservedFile {
    /// Opens `path` for writing, creating it if needed, without changing it
    /// yet; `what` names it in the error ("cannot write chart PATH").
    ///
    /// # Errors
    ///
    /// - the file cannot be opened for writing (a directory, a missing
    ///   folder, no permission).
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        let created = !path.exists();
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write {what} {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            created,
            written: false,
        })
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents with `bytes`.
    ///
    /// # Errors
    ///
    /// - the write fails (a full disk, a pipe whose reader left).
    pub fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        // A pipe or a device such as /dev/null has no length to cut and no
        // position to return to.
        if self.file.metadata()?.is_file() {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
        }
        self.file.write_all(bytes)?;
        self.file.flush()?;
        self.written = true;
        Ok(())
    }
}

impl Drop for ReservedFile {
    fn drop(&mut self) {
        // A run that ends without its output leaves no empty file behind.
        if self.created && !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("talkback-outfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn an_unwritten_new_file_is_removed_and_an_old_one_kept() {
        let new = temp("new");
        let _ = std::fs::remove_file(&new);
        drop(ReservedFile::open(&new, "chart").unwrap());
        assert!(!new.exists());

        let old = temp("old");
        std::fs::write(&old, b"earlier").unwrap();
        drop(ReservedFile::open(&old, "chart").unwrap());
        assert_eq!(std::fs::read(&old).unwrap(), b"earlier");
        std::fs::remove_file(&old).unwrap();
    }

    #[test]
    fn a_write_replaces_longer_contents_whole() {
        let path = temp("replace");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        let mut f = ReservedFile::open(&path, "trace").unwrap();
        f.replace(b"first").unwrap();
        f.replace(b"2nd").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"2nd");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_device_takes_the_bytes_without_a_cut() {
        let mut f = ReservedFile::open(Path::new("/dev/null"), "chart").unwrap();
        f.replace(b"<svg/>").unwrap();
        assert_eq!(f.path(), Path::new("/dev/null"));
    }

    #[test]
    fn an_unopenable_path_names_what_and_where() {
        let e = ReservedFile::open(Path::new("/nonexistent/dir/x.svg"), "chart")
            .err()
            .unwrap();
        assert!(format!("{e:#}").starts_with("cannot write chart /nonexistent/dir/x.svg: "));
    }
}
