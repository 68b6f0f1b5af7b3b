//! Output through semihosting: the emulator's stdout and stderr.
//!
//! Each line is gathered in a buffer and sent in one semihosting call, as
//! every call traps into the emulator.

use core::fmt::{self, Write};

use cortex_m_semihosting::hio::{self, HostStream};

use crate::{replay, stack};

/// Bytes gathered before one semihosting write.
const LINE: usize = 256;

/// The host's stdout, seen as a [`replay::Host`].
pub struct Console {
    out: Option<HostStream>,
    buf: [u8; LINE],
    len: usize,
}

impl Console {
    /// Opens the host's stdout; without a host, lines are dropped.
    pub fn new() -> Self {
        Console {
            out: hio::hstdout().ok(),
            buf: [0; LINE],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if let (Some(out), Some(bytes)) = (self.out.as_mut(), self.buf.get(..self.len)) {
            // A failed write has nowhere to be reported; the test then sees a short output.
            let _ = out.write_all(bytes);
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
