//! Output through semihosting: the emulator's stdout and stderr.
//!
//! Each line is gathered in a buffer and sent in one semihosting call, as
//! every call traps into the emulator. Stdout is written with the raw
//! calls rather than `hio::HostStream`, whose `write_all` retries forever
//! when the host cannot write (a closed pipe): here a write that makes no
//! progress ends the program with a failure status.
#![allow(unsafe_code)]

use core::fmt::{self, Write};

use cortex_m_semihosting::{debug, hio, syscall};

use crate::{replay, stack};

/// Opens the host's terminal for writing, as semihosting's `:tt` file.
fn open_stdout() -> Option<usize> {
    const NAME: &[u8] = b":tt\0";
    // SAFETY: SYS_OPEN reads the NUL-terminated name; mode 4 is "w" and the
    // length excludes the NUL. It returns -1 on failure.
    let fd = unsafe { syscall!(OPEN, NAME.as_ptr(), 4, NAME.len() - 1) };
    (fd != usize::MAX).then_some(fd)
}

/// Writes all of `bytes` to `fd`; false when the host stops taking them.
fn write_all(fd: usize, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: SYS_WRITE reads `bytes.len()` bytes from `bytes` and
        // returns how many it did not write.
        let left = unsafe { syscall!(WRITE, fd, bytes.as_ptr(), bytes.len()) };
        if left >= bytes.len() {
            return false;
        }
        bytes = bytes.get(bytes.len() - left..).unwrap_or(&[]);
    }
    true
}

/// Bytes gathered before one semihosting write.
const LINE: usize = 256;

/// The host's stdout, seen as a [`replay::Host`].
pub struct Console {
    out: Option<usize>,
    buf: [u8; LINE],
    len: usize,
}

impl Console {
    /// Opens the host's stdout; without a host, lines are dropped.
    pub fn new() -> Self {
        Console {
            out: open_stdout(),
            buf: [0; LINE],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if let (Some(fd), Some(bytes)) = (self.out, self.buf.get(..self.len)) {
            if !write_all(fd, bytes) {
                // Nobody reads the results any more: stop rather than spin.
                debug::exit(debug::EXIT_FAILURE);
            }
        }
        self.len = 0;
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl replay::Host for Console {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.write_fmt(args);
        let _ = self.write_str("\n");
        self.flush();
    }

    fn measure<R>(&mut self, f: impl FnOnce() -> R) -> (R, Option<usize>) {
        let (r, used) = stack::high_water(f);
        (r, Some(used))
    }
}

/// Writes the panic message to the host's stderr.
pub fn report_panic(info: &core::panic::PanicInfo<'_>) {
    if let Ok(mut err) = hio::hstderr() {
        let _ = writeln!(err, "panic: {info}");
    }
}
