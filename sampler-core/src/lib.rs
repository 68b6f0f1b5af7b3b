//! Allocation-free, panic-free, bit-reproducible token sampling.
//!
//! `sampler-core` turns one step's logits into one token: penalties, logit
//! bias, temperature, top-k, top-p and min-p, a softmax and a seeded draw,
//! with the per-step diagnostics a front end shows (the chosen token's
//! log-probability, the most probable alternatives, the entropy and how many
//! tokens each stage kept). It is `no_std` without `alloc`: every buffer
//! belongs to the caller. It also holds the text stream ([`TextStream`]) that
//! turns sampled token pieces into clean UTF-8 and stops at stop strings.
//!
//! # Pipeline
//!
//! One [`Sampler::sample`] call runs, in this order:
//!
//! 1. **Penalties** over the caller's window [`Input::recent`], with
//!    llama.cpp's rules: a positive logit is divided by `repeat_penalty`, a
//!    zero or negative one multiplied by it; then the sum
//!    `count * frequency_penalty + presence_penalty` is subtracted, `count`
//!    being the token's occurrences in the window. Only ids in the window
//!    change.
//! 2. **Logit bias** [`Input::bias`], added entry by entry in list order.
//! 3. **The four stages** in [`Config::order`]:
//!    - [`Order::TALKBACK`] (the default): temperature, top-k, top-p, min-p.
//!      Top-p and min-p see the tempered distribution.
//!    - [`Order::LLAMA_CPP`]: top-k, top-p, min-p, temperature, as in
//!      llama.cpp's default chain. Top-p and min-p see temperature-1
//!      probabilities and temperature only reshapes what survived.
//!
//!    The two agree at temperature 1 and whenever top-p and min-p are off.
//!    Below 1 (a sharper distribution) `TALKBACK` keeps at most as many
//!    tokens as `LLAMA_CPP`, above 1 at least as many, in real arithmetic.
//!    Top-p is decided on the rounded integer weights (see Definitions), so
//!    where rounding decides a cut this can fail: near temperature 1
//!    (within about `1e-6`) by a token either way, and at any temperature
//!    when thousands of tokens tied at tiny weights all round the same way.
//!    Top-k keeps the same tokens in both, and so does greedy.
//!    [`Order::new`] builds other orders.
//! 4. **Softmax and draw** over the survivors.
//!
//! # Definitions
//!
//! - *Candidates* are the tokens whose effective logit (after penalties and
//!   bias) is neither NaN nor -inf. A NaN logit is never drawn.
//! - *Rank order* is effective logit descending, then id ascending: every
//!   tie, anywhere, goes to the lower id. Each stage keeps a prefix of it.
//! - With `m` the top logit and `t` the temperature in force (1 before the
//!   temperature stage), a token's scaled difference is `d = (x - m) * (1/t)`
//!   in f32, and its weight is `round(e^d * 2^30)`, an integer; `e^d` comes
//!   from a fixed polynomial in plain f32 arithmetic (about 1 ulp), never the
//!   platform's `exp`. If `m` is +inf, the +inf tokens share all the mass
//!   equally and every other token weighs 0. Probabilities are weights over
//!   their sum; sums are exact integers, so no result depends on summation
//!   order, on the selection algorithm or on the platform. A token whose
//!   weight rounds to 0 (below about `2^-31` of the top token's) can
//!   survive a stage but is never drawn. A difference `x - m` beyond the
//!   f32 range is -inf, so a logit more than `f32::MAX` below the top
//!   weighs 0 at every temperature, even above about 1e37 where a wider
//!   format would give it weight.
//! - **Temperature** 0 keeps only the top token (greedy); temperatures
//!   below `f32::MIN_POSITIVE` count as 0.
//! - **Top-k** keeps exactly `min(k, candidates)` tokens in rank order; 0,
//!   or `k` at least the vocabulary size, is off.
//! - **Top-p** keeps the shortest rank prefix whose mass reaches `p` of the
//!   survivors' mass, at least one token. Masses are sums of the integer
//!   weights. A prefix short of `p` by at most [`TOP_P_TOLERANCE`] of the
//!   mass counts as reaching it, which absorbs the exponential's rounding
//!   (a relative `2^-23` or so per weight). It need not absorb the rounding
//!   of each weight to a whole unit: half a unit per token, which on real
//!   logits mostly cancels, but `n` tokens tied at one small logit all round
//!   the same way and move the total by up to `n / 2` units, `n * 2^-31` of
//!   the top token's weight (`3e-5` for 60000 tokens). A cut that close to
//!   `p` then follows the integer weights, not real arithmetic. `p = 1` is
//!   off.
//! - **Min-p** keeps tokens with `d >= ln(min_p) - MIN_P_TOLERANCE`, that is
//!   probability at least `min_p` times the top token's, with the same kind
//!   of tolerance ([`MIN_P_TOLERANCE`], in log space). 0 is off.
//! - **Draw**: the generator gives `u = (next_u64 >> 11) * 2^-53` in
//!   `[0, 1)` ([`Rng::next_unit`]); with total weight `W` the target is
//!   `min(floor(u * W), W - 1)`, in exact arithmetic, and the token drawn is the first, scanning
//!   the survivors in rank order, whose cumulative weight exceeds it. `u = 0`
//!   picks the top token. Every successful call makes exactly one draw,
//!   greedy included, so seeded runs stay aligned step for step.
//! - The reported log-probability of a token is `d - ln(W / 2^30)`; the
//!   entropy is that of the weights, in nats.
//!
//! # Guarantees
//!
//! - **No allocation**: nothing here touches a heap; the caller passes the
//!   scratch buffer, the alternatives buffer and the shape table.
//! - **No panic on any input**: every input, NaN and infinities included,
//!   gives a value or a typed [`Error`]. The crate denies `unwrap`, `expect`,
//!   `panic!` and slice indexing outside tests, and fuzzing and property
//!   tests back the promise. It is not proved at link time: the panic
//!   paths inside `core` that the crate calls (the bounds checks of
//!   `slice::swap` and `copy_from_slice`, the sorting and selection
//!   routines) stay in a binary, unreachable, so a build whose panic
//!   handler must never be linked does not link.
//! - **Reproducible**: the token and every reported number depend only on
//!   the logits, the settings, the seed, the step and the crate version; not
//!   on the platform, the selection algorithm or whether a report was asked
//!   for. A failed call draws nothing and leaves the sampler as it was.
//!   (The logarithms behind min-p's cut, the log-probabilities and the
//!   entropy come from `libm` in f64 and are rounded to f32, so another `libm`
//!   release could change one of them only where its f64 result moved
//!   across an f32 rounding boundary; a lockfile fixes the release.)
//! - **Cost**: no stage copies, exponentiates or sorts the whole vocabulary
//!   when top-k is on: greedy is one vectorised pass of block maxima, and a
//!   top-k of up to 64 the same pass keeping the blocks that can hold one
//!   of the k, which alone are read again (larger k: a threshold scan);
//!   min-p is a maximum scan and one collecting scan. Top-k followed by
//!   min-p (with or without top-p between them), when no report is asked
//!   for, reads again only the blocks that can hold a token above min-p's
//!   cut, and settles top-p from a lower bound on the best k's weight
//!   when it can. Penalties and bias
//!   change only the ids they name; the scans leave those ids' raw logits
//!   out and let their changed logits join. A sampler keeps the counts of
//!   its last penalty window (up to 64 ids) and updates them when the next
//!   window is the same or moved on by a token. A chain that truncates
//!   nothing sums every weight exactly in one vectorised pass (one
//!   exponential per token) and then draws among the tokens within 10 nats
//!   of the top, where real language-model logits put nearly all the mass.
//!   Top-p with top-k off makes the same pass with cheaper polynomials
//!   that only bound the total weight: to within a few millionths of the
//!   weights below 2^23, or 2.5 ten-thousandths for chunks of sixteen
//!   tokens lying wholly more than 10 nats under the top, plus half a unit
//!   for each weight; where a sample of chunks finds many that weigh
//!   nothing, chunks wholly more than 18 nats under the top are only
//!   counted, at up to 16 units of weight per token. It finds its cut
//!   among those tokens; the cut is exact whenever it is the same for
//!   every total within the bounds, and an exact pass settles the other
//!   cases.
//!
//! # Limitations
//!
//! - Top-p with top-k off looks for its cut among the tokens within 10
//!   nats of the top. When more than 16,384 tokens are that close, or they
//!   hold less than `p` of the mass (hot temperatures, flat logits), it
//!   sums every weight again, exactly, into bins of an eighth of a nat,
//!   collects the tokens down to the bin where the target is reached and
//!   selects the cut among that bin's tokens: two more passes over the
//!   vocabulary and one over the collected tokens. On 64 steps of a story
//!   continuation by SmolLM2 (V = 49,152) the median call takes about
//!   60 µs at temperature 1, 0.3 ms at 1.5 with `p = 0.99`, and 0.5 ms at
//!   2 with `p = 0.95`, where the nucleus holds about ten thousand tokens.
//! - Weights are integers in units of `2^-30` of the top token's, rounded
//!   to the nearest, so a token less likely than about `2^-31` times the
//!   top token weighs 0 and is never drawn.
//! - Logit bias values must not be NaN; +inf and -inf are accepted. An
//!   infinite bias forces or bans a token whose logit is finite, but added
//!   to a logit of the other infinity, or to a NaN logit, it gives NaN,
//!   which is never drawn: a +inf bias cannot bring back a token whose
//!   logit is -inf.
//!
//! # Capacities
//!
//! | what | capacity | beyond it |
//! | --- | --- | --- |
//! | vocabulary | the scratch buffer's length (at most `u32::MAX`) | [`Error::VocabTooLarge`] |
//! | penalty window | [`MAX_RECENT`] = 1024 ids | [`Error::PenaltyWindowTooLarge`] |
//! | logit bias | [`MAX_BIAS`] = 256 entries | [`Error::TooManyBiases`] |
//! | alternatives | the caller's buffer in [`Report`] | the top ones are written |
//! | shape rows | the caller's buffer in [`ShapeReport`] | the top ones are written |
//! | stages in an order | [`MAX_STAGES`] = 4, each at most once | [`Error::InvalidOrder`] |
//! | stop strings | [`StopSet<S, L>`]: `S` of up to `L` bytes | `TooManyStops`, `StopTooLong` |
//! | held bytes | [`TextStream<S, L, H>`]: `H >= L + 3` | a build error |
//! | text out of a push | [`TextStream::output_bound`] | `OutputTooSmall`, nothing taken |
//! | text out of `finish` | [`TextStream::finish_bound`] | `OutputTooSmall`, nothing taken |
//!
//! **Stack**: in optimised x86-64 builds [`Sampler::sample`] needs under
//! 8 KiB of stack and [`shape()`] under 20 KiB. The difference is the list
//! of changed logits (one 8-byte slot per window id and bias entry, 10 KiB
//! in all): a [`Sampler`] holds it, and is about 11 KiB because of it,
//! while [`shape()`] builds it on its stack. `tests/stack_bound.rs` checks
//! both. [`Sampler::new`] returns the sampler by value, so building one
//! passes those 11 KiB through the stack even when it ends up in a
//! static: build it once where the stack is shallow (at start-up) and
//! start each new generation with [`Sampler::restart`]. The sampler itself
//! cannot be built at compile time ([`Sampler::new`] seeds a generator),
//! but its settings and the small values around it can:
//! [`Config::DEFAULT`], [`Config::greedy`], [`Order::new`], [`Input::new`],
//! [`StopSet::new`] and [`TextStream::new`] are `const`. Unoptimised
//! builds need several times these figures (frames of 10 to 23 KiB on
//! `thumbv7em-none-eabihf`); firmware should optimise this crate in its
//! dev profile too (`[profile.dev.package.sampler-core] opt-level = 2`).
//! `firmware/README.md` in the repository measures the Cortex-M4F.
//!
//! # Features
//!
//! None. The crate builds for bare-metal targets such as
//! `thumbv7em-none-eabihf`. Exact sums and some bounds use `f64`, which
//! targets without a double-precision unit (the Cortex-M4F's is single)
//! get from the compiler's software routines.
//!
//! # Examples
//!
//! ```
//! use sampler_core::{Alternative, Candidate, Config, Input, Report, Sampler};
//!
//! let logits = [3.4f32, 2.8, 2.1, 1.6, 1.0];
//! let mut scratch = [Candidate::default(); 5];
//! let mut sampler = Sampler::new(Config::default(), 42, &mut scratch).unwrap();
//! // Room for every token, so the report lists each survivor.
//! let mut alternatives = [Alternative::default(); 5];
//! let mut report = Report::new(&mut alternatives);
//! let choice = sampler.sample(Input::new(&logits), Some(&mut report)).unwrap();
//! assert_eq!(report.written().len(), report.survivors.final_count);
//! assert!(report.written().iter().any(|a| a.id == choice.id));
//! assert_eq!(sampler.step(), 1);
//! ```
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
