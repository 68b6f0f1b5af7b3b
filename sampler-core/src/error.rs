//! The one error type of the crate.
//!
//! Input: nothing. Output: [`Error`], returned by configuration checks and by
//! every sampling call. Invariant: every variant is `Copy` and carries no
//! borrowed or heap data, so errors can cross any boundary.

use core::fmt;

/// What went wrong when checking a configuration or sampling one token.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The temperature is below zero.
    NegativeTemperature,
    /// The temperature is NaN or infinite.
    NonFiniteTemperature,
    /// Top-p is NaN or outside `[0, 1]`.
    TopPOutOfRange,
    /// Min-p is NaN or outside `[0, 1]`.
    MinPOutOfRange,
    /// The repetition penalty is NaN, infinite, zero or negative.
    InvalidRepeatPenalty,
    /// The presence penalty is NaN or infinite.
    NonFinitePresencePenalty,
    /// The frequency penalty is NaN or infinite.
    NonFiniteFrequencyPenalty,
    /// A logit bias value is NaN.
    InvalidBias {
        /// The token the bias was meant for.
        id: u32,
    },
    /// The logits slice is empty.
    EmptyLogits,
    /// Every logit is NaN or negative infinity (after penalties and bias).
    NoFiniteLogit,
    /// The vocabulary is longer than the scratch buffer can hold.
    VocabTooLarge {
        /// Length of the logits slice.
        len: usize,
        /// Largest vocabulary the sampler accepts.
        capacity: usize,
    },
    /// A token id in the penalty window or the bias list is not in the vocabulary.
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Length of the vocabulary.
        vocab: usize,
    },
    /// The penalty window holds more tokens than [`MAX_RECENT`](crate::MAX_RECENT).
    PenaltyWindowTooLarge {
        /// Length of the window given.
        len: usize,
        /// Largest window accepted.
        capacity: usize,
    },
    /// The bias list holds more entries than [`MAX_BIAS`](crate::MAX_BIAS).
    TooManyBiases {
        /// Length of the list given.
        len: usize,
        /// Largest list accepted.
        capacity: usize,
    },
    /// A stage order repeats a stage, has too many stages, or lacks temperature.
    InvalidOrder,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NegativeTemperature => f.write_str("temperature is negative"),
            Self::NonFiniteTemperature => f.write_str("temperature is not finite"),
            Self::TopPOutOfRange => f.write_str("top-p is not in [0, 1]"),
            Self::MinPOutOfRange => f.write_str("min-p is not in [0, 1]"),
            Self::InvalidRepeatPenalty => f.write_str("repeat penalty is not finite and positive"),
            Self::NonFinitePresencePenalty => f.write_str("presence penalty is not finite"),
            Self::NonFiniteFrequencyPenalty => f.write_str("frequency penalty is not finite"),
            Self::InvalidBias { id } => write!(f, "logit bias for token {id} is NaN"),
            Self::EmptyLogits => f.write_str("logits are empty"),
            Self::NoFiniteLogit => f.write_str("every logit is NaN or negative infinity"),
            Self::VocabTooLarge { len, capacity } => {
                write!(f, "vocabulary of {len} exceeds the capacity of {capacity}")
            }
            Self::TokenOutOfRange { id, vocab } => {
                write!(f, "token {id} is outside the vocabulary of {vocab}")
            }
            Self::PenaltyWindowTooLarge { len, capacity } => {
                write!(
                    f,
                    "penalty window of {len} exceeds the capacity of {capacity}"
                )
            }
            Self::TooManyBiases { len, capacity } => {
                write!(f, "{len} logit biases exceed the capacity of {capacity}")
            }
            Self::InvalidOrder => {
                f.write_str("stage order must name each stage at most once and include temperature")
            }
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::string::ToString;

    #[test]
    fn display_is_lowercase_and_names_values() {
        let e = Error::VocabTooLarge {
            len: 10,
            capacity: 4,
        };
        assert_eq!(e.to_string(), "vocabulary of 10 exceeds the capacity of 4");
        let e = Error::TokenOutOfRange { id: 7, vocab: 5 };
        assert_eq!(e.to_string(), "token 7 is outside the vocabulary of 5");
        for e in [
            Error::NegativeTemperature,
            Error::NonFiniteTemperature,
            Error::TopPOutOfRange,
            Error::MinPOutOfRange,
            Error::InvalidRepeatPenalty,
            Error::NonFinitePresencePenalty,
            Error::NonFiniteFrequencyPenalty,
            Error::InvalidBias { id: 1 },
            Error::EmptyLogits,
            Error::NoFiniteLogit,
            Error::PenaltyWindowTooLarge {
                len: 2,
                capacity: 1,
            },
            Error::TooManyBiases {
                len: 2,
                capacity: 1,
            },
            Error::InvalidOrder,
        ] {
            let s = e.to_string();
            let first = s.chars().next().unwrap_or('X');
            assert!(!first.is_uppercase(), "{s}");
        }
    }
}
