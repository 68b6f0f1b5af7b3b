//! The error type of the text stream and of stop-string configuration.
//!
//! Input: none. Output: [`StreamError`], a small `Copy` enum whose variants
//! carry only numbers. Invariant: every failing operation in the `stream`
//! module returns one of these and leaves its value as it was before the call.

use core::fmt;

/// Why a stop string was refused or a text-stream call failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// A stop string was empty; it would match before any text.
    EmptyStop,
    /// A stop string is longer than the per-string capacity `L`.
    StopTooLong {
        /// Length of the refused stop string, in bytes.
        len: usize,
        /// The capacity `L`, in bytes.
        capacity: usize,
    },
    /// The stop set already holds its capacity `S` of strings.
    TooManyStops {
        /// The capacity `S`.
        capacity: usize,
    },
    /// A stop string is not valid UTF-8, so it could never match the
    /// sanitized text that stops are matched against.
    StopNotUtf8,
    /// The caller's output buffer cannot take the bytes this call releases.
    OutputTooSmall {
        /// Bytes this call would release; a buffer this long succeeds.
        needed: usize,
        /// Length of the buffer that was given.
        capacity: usize,
    },
    /// `push` was called after `finish`; call `reset` to start a new text.
    Finished,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::EmptyStop => f.write_str("stop string is empty"),
            Self::StopTooLong { len, capacity } => {
                write!(
                    f,
                    "stop string of {len} bytes exceeds the limit of {capacity} bytes"
                )
            }
            Self::TooManyStops { capacity } => {
                write!(f, "too many stop strings (at most {capacity})")
            }
            Self::StopNotUtf8 => f.write_str("stop string is not valid utf-8"),
            Self::OutputTooSmall { needed, capacity } => write!(
                f,
                "output buffer too small: {needed} bytes needed, {capacity} available"
            ),
            Self::Finished => f.write_str("text stream already finished"),
        }
    }
}

impl core::error::Error for StreamError {}
