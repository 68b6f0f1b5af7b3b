//! Allocation-free, panic-free, bit-reproducible token sampling.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod stream;
pub use stream::{Pushed, StopSet, StreamError, TextStream};
