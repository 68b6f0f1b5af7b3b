//! A file opened before the work that fills it.
//!
//! A chart or a trace is written only when a run ends, minutes later, and a
//! logits dump only once the model has loaded; a path that cannot be written
//! must fail before the model even loads. An existing file is opened at once
//! without touching its contents; a new one is made and removed again at
//! once, to find out that it can be, and made for good only when written,
//! so that a run that ends first, however it ends, leaves nothing behind.
//!
//! A chart or a trace is written whole to a new file beside it, which is
//! then renamed over it: a write that fails (a full disk, a size limit)
//! leaves the file as it was. Where a new file cannot stand in for the old
//! one (see [`ReservedFile::replace`]) it is written in place. A dump is
//! streamed into the file itself, so that it grows as the run goes on; a
//! write that fails cuts it back to the records written whole, and removes
//! it if this run created it and wrote none.
//!
//! Before any of that, [`check_distinct`] makes sure that no output names a
//! file the run reads or another output writes: the model is mapped into
//! memory while it runs, so cutting it short kills the process, and a
//! trace written over the messages file it was made from loses them.

use std::fs::File;
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result};

use crate::infile::named;

/// Files a stop at once removes: new files not yet renamed over an output.
static UNWRITTEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Takes `path` off [`UNWRITTEN`].
fn forget(path: &Path) {
    if let Ok(mut paths) = UNWRITTEN.lock() {
        paths.retain(|p| p != path);
    }
}

/// Removes the new files not yet renamed over an output, for a process
/// about to end at once (see [`crate::signals`]).
pub fn remove_unwritten() {
    if let Ok(paths) = UNWRITTEN.lock() {
        for path in paths.iter() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An output file, checked early and written once at the end.
pub struct ReservedFile {
    /// The file, open since the check; `None` for one that did not exist.
    file: Option<File>,
    path: PathBuf,
    /// The file itself: `path`, or the end of the link `path` names. A
    /// new file is made and renamed here, so a link stays a link.
    made: PathBuf,
    /// Whether `path` or a link on the way to `made` is in `/dev` or `/proc`.
    through_devices: bool,
    /// Whether it is written in place whatever it is: a new file in a
    /// folder that lets files be made but not removed (append-only), where
    /// the new file beside it could not be renamed or removed either.
    in_place_only: bool,
}

/// A new file in the folder of an output, written in full and then renamed
/// over it; removed if it is dropped before that.
struct Sibling {
    file: File,
    path: PathBuf,
    target: PathBuf,
    renamed: bool,
}

/// Why [`Sibling::commit`] did not replace its target.
enum Commit {
    /// Writing the new file failed: the target is as it was.
    Write(io::Error),
    /// The rename was refused (a file mounted on its own, a folder whose
    /// sticky bit protects files of other owners): write in place instead.
    Rename,
}

impl Sibling {
    /// A new empty file beside `target`, made to match `like` (its
    /// permissions, and its owner and group where they differ from this
    /// process's).
    ///
    /// `Ok(None)` where the new file could not stand in for the target
    /// (a folder this user cannot write, an owner it cannot give away),
    /// and the output is then written in place.
    ///
    /// # Errors
    ///
    /// - the new file cannot be made for another reason (a full disk, no
    ///   free inodes, a quota): writing in place would then destroy the
    ///   old file for a write that is bound to fail too.
    fn create(target: &Path, like: Option<&std::fs::Metadata>) -> io::Result<Option<Self>> {
        let folder = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        for attempt in 0..16u32 {
            // A short name of its own, so that a target's long name cannot
            // make it too long.
            let name = format!(".talkback-{}-{attempt}.tmp", std::process::id());
            let path = folder.join(name);
            let mut options = File::options();
            options.write(true).create_new(true);
            // Readable by this user alone until it has the old file's owner
            // and mode: a handle opened before that would read what it gets.
            #[cfg(unix)]
            if like.is_some() {
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            }
            let file = match options.open(&path) {
                Ok(file) => file,
                // Left by a process of the same id that was killed.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
                Err(e) => return Err(e),
            };
            if let Ok(mut paths) = UNWRITTEN.lock() {
                paths.push(path.clone());
            }
            let sibling = Self {
                file,
                path,
                target: target.to_path_buf(),
                renamed: false,
            };
            // A file that belongs to another user or group keeps them,
            // which only a privileged process can give a new file; then
            // its mode, set after the owner since a change of owner may
            // clear the set-id bits.
            let kept = like.map_or(true, |like| {
                sibling.keeps_owner(like)
                    && sibling.file.set_permissions(like.permissions()).is_ok()
            });
            return Ok(kept.then_some(sibling));
        }
        Ok(None)
    }

    #[cfg(unix)]
    fn keeps_owner(&self, like: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(own) = self.file.metadata() else {
            return false;
        };
        if (own.uid(), own.gid()) == (like.uid(), like.gid()) {
            return true;
        }
        std::os::unix::fs::fchown(&self.file, Some(like.uid()), Some(like.gid())).is_ok()
    }

    #[cfg(not(unix))]
    fn keeps_owner(&self, _like: &std::fs::Metadata) -> bool {
        true
    }

    /// Writes `bytes` and renames the file over its target; returns it.
    fn commit(mut self, bytes: &[u8]) -> Result<File, Commit> {
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.flush())
            .map_err(Commit::Write)?;
        // Held across the rename, so that a stop at once removes either
        // the new file or nothing, never the output it has just become.
        let mut paths = UNWRITTEN.lock().ok();
        if std::fs::rename(&self.path, &self.target).is_err() {
            drop(paths);
            return Err(Commit::Rename);
        }
        self.renamed = true;
        if let Some(paths) = paths.as_mut() {
            paths.retain(|p| p != &self.path);
        }
        drop(paths);
        self.file.try_clone().map_err(|_| Commit::Rename)
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
            forget(&self.path);
        }
    }
}

impl ReservedFile {
    /// Checks that `path` can be written, without changing it or leaving
    /// a new file behind; `what` names it in the error ("cannot write
    /// chart PATH"). An existing file is kept open for the write.
    ///
    /// # Errors
    ///
    /// - the file cannot be opened or made for writing (a directory, a
    ///   missing folder, no permission).
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        let cannot = || format!("cannot write {what} {}", named(path));
        let (made, through_devices) = link_end_noting_devices(path);
        let (file, in_place_only) = match File::options().write(true).truncate(false).open(path) {
            Ok(file) => (Some(file), false),
            // Through a link to nowhere, the file is made at its end.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let kept = probe(&made).with_context(cannot)?;
                let only = kept.is_some();
                (kept, only)
            }
            Err(e) => return Err(anyhow::Error::new(e).context(cannot())),
        };
        Ok(Self {
            in_place_only,
            file,
            path: path.to_path_buf(),
            made,
            through_devices,
        })
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents with `bytes`: through a new file
    /// renamed over it, which leaves it as it was if the write fails; in
    /// place where a new file cannot take its place (see
    /// `ReservedFile::renamable`).
    ///
    /// # Errors
    ///
    /// - the write fails (a full disk, a pipe whose reader left), or the
    ///   new file cannot be made (see `Sibling::create`).
    pub fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut meta = self.file.as_ref().map(File::metadata).transpose()?;
        if meta.as_ref().is_some_and(|m| self.moved(m)) {
            // Moved or deleted during the run: the output goes to the path,
            // as a new file, and the file that was there is left alone.
            (self.file, meta) = (None, None);
        }
        let sibling = match &meta {
            Some(meta) if !self.renamable(meta) => None,
            _ => Sibling::create(&self.made, meta.as_ref())?,
        };
        if let Some(sibling) = sibling {
            match sibling.commit(bytes) {
                Ok(file) => {
                    // The file the path now names, for a later write.
                    self.file = Some(file);
                    return Ok(());
                }
                Err(Commit::Write(e)) => return Err(e),
                Err(Commit::Rename) => {}
            }
        }
        let file = self.in_place()?;
        file.write_all(bytes)?;
        file.flush()
    }

    /// The file, emptied for a write in place; made if it did not exist.
    fn in_place(&mut self) -> io::Result<&mut File> {
        let file = match self.file.take() {
            Some(mut file) => {
                // A pipe or a device such as /dev/null has no length to
                // cut and no position to return to.
                if file.metadata()?.is_file() {
                    file.set_len(0)?;
                    file.seek(SeekFrom::Start(0))?;
                }
                file
            }
            // Never through a link someone has put there since the check.
            None => File::options()
                .write(true)
                .create_new(true)
                .open(&self.made)?,
        };
        Ok(self.file.insert(file))
    }

    /// Whether the regular file opened at the check is no longer the one
    /// the path names. Through `/dev/fd`, the file is the descriptor's.
    fn moved(&self, meta: &std::fs::Metadata) -> bool {
        if !meta.is_file() || self.through_devices {
            return false;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            !std::fs::metadata(&self.made)
                .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Whether a new file renamed over this one would stand in for it:
    /// a regular file with no other names (hard links would keep the old
    /// contents) and no extended attributes (an access list, which a new
    /// file would not have, may be all that keeps others out), reached by
    /// a path that does not go through `/dev` or `/proc` (`/dev/fd/N`
    /// writes to a descriptor the caller holds).
    fn renamable(&self, meta: &std::fs::Metadata) -> bool {
        if !meta.is_file() || self.through_devices || self.in_place_only {
            return false;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            // The security label SELinux gives every file comes with the
            // folder, so it alone does not keep a file in place.
            let attributes = xattr::list(&self.made)
                .map(|mut names| names.any(|n| n != "security.selinux"))
                .unwrap_or(false);
            meta.nlink() == 1 && !attributes
        }
        #[cfg(not(unix))]
        {
            true
        }
    }

    /// Empties the file (or makes it) and hands it over to be written as
    /// a stream.
    ///
    /// # Errors
    ///
    /// - the file cannot be made, emptied or its handle duplicated.
    pub fn into_stream(mut self) -> io::Result<File> {
        let meta = self.file.as_ref().map(File::metadata).transpose()?;
        if meta.is_some_and(|m| self.moved(&m)) {
            // As for a trace: the moved file is left alone.
            self.file = None;
        }
        self.in_place()?.try_clone()
    }
}

/// A reserved file that becomes a stream at its first write, so that a
/// run that fails before it (a prompt longer than the context) leaves the
/// file as it found it.
///
/// Each [`io::Write::flush`] marks the end of a whole record. If a write
/// fails, the file is cut back to the last such end when it is dropped,
/// and removed if this run created it and no record was finished.
pub struct LazyStream {
    reserved: Option<ReservedFile>,
    stream: Option<File>,
    /// Whether opening the file created it.
    created: bool,
    /// Where the stream's file is, to remove it.
    path: PathBuf,
    /// Bytes written, and how many of them ended at a flush.
    written: u64,
    kept: u64,
    failed: bool,
}

impl LazyStream {
    /// Wraps `reserved`, untouched until the first write.
    pub fn new(reserved: ReservedFile) -> Self {
        Self {
            created: reserved.file.is_none(),
            path: reserved.made.clone(),
            reserved: Some(reserved),
            stream: None,
            written: 0,
            kept: 0,
            failed: false,
        }
    }

    fn stream(&mut self) -> io::Result<&mut File> {
        if let Some(reserved) = self.reserved.take() {
            self.stream = Some(reserved.into_stream()?);
        }
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("the file could not be opened for streaming"))
    }

    /// Notes a failed write, so that the drop cuts the file back.
    fn failing<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        self.failed |= result.is_err();
        result
    }
}

impl io::Write for LazyStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.stream().and_then(|s| s.write(buf));
        let n = self.failing(written)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let flushed = match self.stream.as_mut() {
            Some(stream) => stream.flush(),
            None => Ok(()),
        };
        self.failing(flushed)?;
        if !self.failed {
            self.kept = self.written;
        }
        Ok(())
    }
}

impl Drop for LazyStream {
    fn drop(&mut self) {
        let Some(file) = self.stream.take() else {
            return;
        };
        if !self.failed || !file.metadata().is_ok_and(|m| m.is_file()) {
            return;
        }
        if self.created && self.kept == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            // Whole records only: a reader takes the file's length over the
            // record's as the number of steps.
            let _ = file.set_len(self.kept);
        }
    }
}

/// How a path is told apart from another: the file it names, or, for a
/// file not made yet, where it would be made.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    /// An existing regular file (a link leads to its target).
    File(FileId),
    /// A path that does not exist yet, with its folder made absolute.
    New(PathBuf),
}

#[cfg(unix)]
type FileId = (u64, u64);

#[cfg(not(unix))]
type FileId = PathBuf;

#[cfg(unix)]
fn file_id(_path: &Path, meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    // Device and inode see through symbolic and hard links alike.
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path, _meta: &std::fs::Metadata) -> Option<FileId> {
    path.canonicalize().ok()
}

/// What `path` names, or `None` when two flags may share it: a device or
/// pipe (such as `/dev/null`) takes any number of writers, and a path that
/// cannot be resolved fails later with its own message.
fn identity(path: &Path) -> Option<Identity> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => file_id(path, &meta).map(Identity::File),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A link to nowhere: writing creates the file it points to.
            let path = link_end(path);
            let name = path.file_name()?;
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Some(Identity::New(folder.canonicalize().ok()?.join(name)))
        }
        Err(_) => None,
    }
}

/// What stdin and stdout are (a file, a pipe, a terminal), unless
/// `/dev/null`, which takes any number of readers and writers.
#[cfg(unix)]
fn streams() -> (Option<FileId>, Option<FileId>) {
    use std::os::fd::AsFd as _;
    let id = |fd: std::os::fd::BorrowedFd<'_>| {
        let meta = File::from(fd.try_clone_to_owned().ok()?).metadata().ok()?;
        (!is_null(&meta)).then(|| file_id(Path::new(""), &meta))?
    };
    (id(io::stdin().as_fd()), id(io::stdout().as_fd()))
}

/// What stdin and stdout are: not found on this platform.
#[cfg(not(unix))]
fn streams() -> (Option<FileId>, Option<FileId>) {
    (None, None)
}

/// What `path` leads to, whatever kind of file, unless `/dev/null`.
fn target_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    (!is_null(&meta)).then(|| file_id(path, &meta))?
}

/// Whether `meta` is that of `/dev/null`.
#[cfg(unix)]
fn is_null(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    meta.file_type().is_char_device()
        && std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == meta.rdev())
}

/// Whether `meta` is that of `/dev/null`: not told on this platform.
#[cfg(not(unix))]
fn is_null(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Makes `path` as a new file and removes it again, to find out that it
/// can be made; under the lock a stop at once takes, so that no stop comes
/// between the two.
///
/// Where the folder lets a file be made but not removed (an append-only
/// folder), the file is kept and returned, to be written in place.
fn probe(path: &Path) -> io::Result<Option<File>> {
    let _held = UNWRITTEN.lock();
    let file = File::options().write(true).create_new(true).open(path)?;
    Ok(std::fs::remove_file(path).is_err().then_some(file))
}

/// Where a chain of symbolic links starting at `path` ends: the first path
/// that is not a link (`path` itself when it is none). Gives up after 40
/// links, as the system does.
fn link_end(path: &Path) -> PathBuf {
    link_end_noting_devices(path).0
}

/// [`link_end`], and whether the path or a link on the way is in `/dev` or
/// `/proc`.
fn link_end_noting_devices(path: &Path) -> (PathBuf, bool) {
    // Where the folder really is: `..` and linked folders reach /dev/fd
    // too, which is /proc/self/fd. Folders below /dev, such as /dev/shm,
    // hold ordinary files.
    let special = |p: &Path| {
        let folder = match p.parent() {
            Some(f) if !f.as_os_str().is_empty() => f,
            _ => Path::new("."),
        };
        let real = folder
            .canonicalize()
            .unwrap_or_else(|_| folder.to_path_buf());
        real == Path::new("/dev") || real.starts_with("/proc")
    };
    let mut at = path.to_path_buf();
    let mut through = special(&at);
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink());
        let Some(target) = is_link.then(|| std::fs::read_link(&at).ok()).flatten() else {
            break;
        };
        at = match at.parent() {
            Some(folder) => folder.join(target),
            None => target,
        };
        through |= special(&at);
    }
    (at, through)
}

/// Refuses an output that names the same file as an input or an earlier
/// output; each is given as the flag or role that names it and its path.
///
/// # Errors
///
/// - the first output that shares its file, naming both.
pub fn check_distinct(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    let inputs: Vec<_> = inputs
        .iter()
        .filter_map(|&(what, path)| Some((what, path, identity(path)?)))
        .collect();
    let (stdin, stdout) = streams();
    let mut seen: Vec<(&str, &Path, Identity)> = Vec::new();
    for &(what, path) in outputs {
        // Pipes and terminals too: `--trace /dev/stdout | less` mixed the
        // trace into the text.
        let target = target_id(path);
        if target.is_some() && target == stdout {
            anyhow::bail!(
                "{what} {} is where stdout goes, and would write into the output; give \
                 it a path of its own",
                named(path)
            );
        }
        if target.is_some() && target == stdin {
            anyhow::bail!(
                "{what} {} is what stdin reads, and would overwrite the input; give it a \
                 path of its own",
                named(path)
            );
        }
        let Some(id) = identity(path) else {
            continue;
        };
        if let Some((other, other_path, _)) =
            inputs.iter().chain(&seen).find(|(_, _, seen)| *seen == id)
        {
            anyhow::bail!(
                "{what} {} is the same file as {other} {}; give it a path of its own",
                named(path),
                named(other_path)
            );
        }
        seen.push((what, path, id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("talkback-outfile-{}-{name}", std::process::id()))
    }

    /// An empty folder of this test's own: the other tests make new files
    /// beside theirs at the same time, under names of the same process.
    fn fresh_folder(name: &str) -> PathBuf {
        let folder = temp(name);
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir(&folder).unwrap();
        folder
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
    fn a_write_through_a_link_keeps_the_link_and_the_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let folder = fresh_folder("kept");
        let real = folder.join("real");
        let link = folder.join("link");
        std::fs::write(&real, b"old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();

        let mut f = ReservedFile::open(&link, "trace").unwrap();
        f.replace(b"new").unwrap();
        drop(f);
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink(), "the link was replaced");
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let mode = std::fs::metadata(&real).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["link", "real"],
            "the new file was left beside the output"
        );
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn a_file_with_other_names_or_reached_through_dev_fd_is_written_in_place() {
        use std::io::Read as _;
        use std::os::fd::AsRawFd as _;
        // A new file renamed over one name would leave the other names
        // with the old contents.
        let first = temp("linked-first");
        let second = temp("linked-second");
        let _ = std::fs::remove_file(&second);
        std::fs::write(&first, b"old").unwrap();
        std::fs::hard_link(&first, &second).unwrap();
        let mut f = ReservedFile::open(&second, "trace").unwrap();
        f.replace(b"new").unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), b"new");
        assert_eq!(std::fs::read(&second).unwrap(), b"new");

        // /dev/fd/N names a descriptor the caller reads back, here one of
        // a file already deleted, which a rename could not reach.
        let held = temp("held");
        let mut handle = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&held)
            .unwrap();
        std::fs::remove_file(&held).unwrap();
        // Also by a way round, which the path as written does not show.
        let fd = handle.as_raw_fd();
        for through in [format!("/dev/fd/{fd}"), format!("/tmp/../dev/fd/{fd}")] {
            let mut f = ReservedFile::open(Path::new(&through), "trace").unwrap();
            f.replace(through.as_bytes()).unwrap();
            let mut back = String::new();
            handle.seek(SeekFrom::Start(0)).unwrap();
            handle.read_to_string(&mut back).unwrap();
            assert_eq!(back, through);
        }
        // Only names made from this test's own: other processes share /tmp.
        let folder = held.parent().unwrap();
        let name = held.file_name().unwrap().to_string_lossy().into_owned();
        let stray = std::fs::read_dir(folder)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(&name));
        assert!(!stray, "a file was made for the deleted one");
        std::fs::remove_file(&first).unwrap();
        std::fs::remove_file(&second).unwrap();
    }

    #[test]
    fn a_file_with_extended_attributes_is_written_in_place() {
        // An access list lives in an extended attribute; a new file would
        // come without it, and could be open to more users than the old.
        let folder = fresh_folder("attributes");
        let path = folder.join("trace.json");
        std::fs::write(&path, b"old").unwrap();
        xattr::set(&path, "user.talkback-test", b"kept").expect("user attributes here");
        let mut f = ReservedFile::open(&path, "trace").unwrap();
        f.replace(b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let kept = xattr::get(&path, "user.talkback-test").unwrap();
        assert_eq!(kept.as_deref(), Some(&b"kept"[..]));
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn a_file_moved_or_linked_during_the_run_is_left_alone() {
        let folder = fresh_folder("moved");
        // Moved away: the output goes to the path, the moved copy is kept.
        let path = folder.join("trace.json");
        let saved = folder.join("saved.json");
        std::fs::write(&path, b"old").unwrap();
        let mut f = ReservedFile::open(&path, "trace").unwrap();
        std::fs::rename(&path, &saved).unwrap();
        f.replace(b"new").unwrap();
        assert_eq!(std::fs::read(&saved).unwrap(), b"old");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");

        // A link put where a new file is to go is replaced, not written
        // through: the file it points to belongs to someone else.
        let fresh = folder.join("fresh.json");
        let victim = folder.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let mut f = ReservedFile::open(&fresh, "trace").unwrap();
        assert!(!fresh.exists(), "the check left a file");
        std::os::unix::fs::symlink(&victim, &fresh).unwrap();
        f.replace(b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(&fresh).unwrap();
        assert!(meta.is_file(), "written through the link");
        assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn only_descriptor_paths_count_as_devices() {
        let through = |p: &str| link_end_noting_devices(Path::new(p)).1;
        assert!(through("/dev/fd/1"));
        assert!(through("/dev/stdout"));
        assert!(through("/tmp/../dev/fd/1"));
        assert!(through("/proc/self/fd/1"));
        assert!(!through("/dev/shm/trace.json"));
        assert!(!through("/tmp/trace.json"));
    }

    #[test]
    fn a_write_goes_to_a_new_file_and_leaves_the_old_one_whole() {
        use std::io::Read as _;
        let folder = fresh_folder("renamed");
        let path = folder.join("trace.json");
        std::fs::write(&path, b"old").unwrap();
        // A handle on the old file sees whether it was written over.
        let mut old = File::open(&path).unwrap();
        let mut f = ReservedFile::open(&path, "trace").unwrap();
        f.replace(b"new").unwrap();
        let mut seen = String::new();
        old.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old", "written in place");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn a_stream_starts_empty_and_is_kept() {
        let path = temp("stream");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        let mut file = ReservedFile::open(&path, "logits dump")
            .unwrap()
            .into_stream()
            .unwrap();
        file.write_all(b"ab").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");

        let _ = std::fs::remove_file(&path);
        drop(
            ReservedFile::open(&path, "logits dump")
                .unwrap()
                .into_stream(),
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"", "a stream begun is kept");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_device_takes_the_bytes_without_a_cut() {
        let mut f = ReservedFile::open(Path::new("/dev/null"), "chart").unwrap();
        f.replace(b"<svg/>").unwrap();
        assert_eq!(f.path(), Path::new("/dev/null"));
    }

    #[test]
    fn an_output_may_not_share_a_file_with_an_input_or_another_output() {
        let model = temp("model.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let link = temp("link.gguf");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&model, &link).unwrap();
        let fresh = temp("fresh.json");
        let _ = std::fs::remove_file(&fresh);
        let inputs = [("the model", model.as_path())];

        let e = check_distinct(&[("--dump-logits", link.as_path())], &inputs).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--dump-logits {} is the same file as the model {}; give it a path of its own",
                named(&link),
                named(&model)
            )
        );
        // A file not made yet is told apart by where it would be made.
        let again = fresh
            .parent()
            .unwrap()
            .join(".")
            .join(fresh.file_name().unwrap());
        let both = [
            ("--trace", fresh.as_path()),
            ("--dump-logits", again.as_path()),
        ];
        let e = check_distinct(&both, &inputs).unwrap_err();
        assert!(e.to_string().ends_with(&format!(
            "is the same file as --trace {}; give it a path of its own",
            named(&fresh)
        )));
        assert!(!fresh.exists(), "the check creates nothing");

        // Devices take any number of writers; distinct files pass.
        let null = Path::new("/dev/null");
        check_distinct(&[("--trace", null), ("--dump-logits", null)], &inputs).unwrap();
        check_distinct(&[("--trace", fresh.as_path())], &inputs).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&model).unwrap();
    }

    #[test]
    fn an_unopenable_path_names_what_and_where() {
        let e = ReservedFile::open(Path::new("/nonexistent/dir/x.svg"), "chart")
            .err()
            .unwrap();
        assert!(format!("{e:#}").starts_with("cannot write chart /nonexistent/dir/x.svg: "));
    }
}
