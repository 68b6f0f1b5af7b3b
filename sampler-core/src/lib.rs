//! Allocation-free, panic-free, bit-reproducible token sampling.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod chain;
mod config;
mod dense;
mod draw;
mod error;
mod minp;
mod penalty;
mod rng;
mod sampler;
mod select;
mod shape;
mod softmax;
mod stream;
mod temperature;
mod topk;
mod topp;

pub use config::{Config, Order, Stage, MAX_STAGES};
pub use error::Error;
pub use minp::MIN_P_TOLERANCE;
pub use penalty::{MAX_BIAS, MAX_RECENT};
pub use rng::Rng;
pub use sampler::{Alternative, Candidate, Choice, Input, Report, Sampler, Survivors};
pub use shape::{shape, ShapeReport, ShapeRow};
pub use stream::{Pushed, StopSet, StreamError, TextStream};
pub use topp::TOP_P_TOLERANCE;
