//! The stack the command runs on, and the input sizes it bounds.
//!
//! Two inputs are read by recursion one frame per unit of their size:
//! llama.cpp's pre-tokenizer regular expressions recurse once per byte of
//! some runs (digits, spaces), and minijinja parses and renders a chat
//! template one frame per level of an expression (a run of unary minus
//! signs, a chain of filters or subscripts), with no limit of its own for
//! some of them. So the command runs on a thread with a large stack (only
//! what is used is ever mapped), and the largest prompt and template it
//! takes are bound to that stack's size.
//!
//! Where the address space is limited (`ulimit -v`), a stack of the full
//! size may not be reserved; the command then runs on a smaller one and
//! takes proportionally smaller prompts and templates, which its errors
//! name.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Stacks to run the command on, the first that can be reserved.
pub const SIZES: [usize; 4] = [FULL, 1 << 28, 1 << 26, SMALLEST];

/// The stack the command runs on wherever it can be reserved.
pub const FULL: usize = 1 << 30;

/// The last stack tried, whatever the limit on the address space.
pub const SMALLEST: usize = 1 << 24;

/// Largest chat template on any stack, in bytes.
const MAX_TEMPLATE: usize = 64 << 10;

/// The stacks worth trying, largest first: under a limit on the address
/// space, none above a quarter of it, which leaves the rest to the model
/// and the heap (a stack that takes all but a little makes the first
/// allocation that does not fit end the process); the smallest when even
/// that one is above it.
pub fn candidates() -> impl Iterator<Item = usize> {
    let quarter = address_space_limit().unwrap_or(u64::MAX) / 4;
    let fitting = SIZES
        .into_iter()
        .filter(move |&size| size as u64 <= quarter);
    let last = (SMALLEST as u64 > quarter).then_some(SMALLEST);
    fitting.chain(last)
}

/// The soft limit on the address space (`ulimit -v`), in bytes, if any.
pub fn address_space_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_AS) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// When the address space is limited (`ulimit -v`), a note of it for an
/// error that may come from too little memory; else nothing.
pub fn address_space_note() -> String {
    address_space_limit().map_or_else(String::new, |soft| {
        format!(
            "; the address space is limited to {} MiB (ulimit -v), which may be too little",
            soft >> 20
        )
    })
}

/// The stack of the thread that runs the command; the largest until set.
static SIZE: AtomicUsize = AtomicUsize::new(FULL);

/// Records the size of the stack the command runs on.
pub fn set(bytes: usize) {
    SIZE.store(bytes, Ordering::Relaxed);
}

/// Most bytes of text tokenized as one prompt: 1 MiB on the full stack.
///
/// 4 MB of digits overflowed a 1 GiB stack in llama.cpp's pre-tokenizer,
/// 2 MB did not: a byte takes between 256 and 512 bytes of stack, and this
/// leaves it 1024.
pub fn max_prompt_bytes() -> usize {
    SIZE.load(Ordering::Relaxed) >> 10
}

/// Largest chat template, in bytes: 64 KiB on a stack of 256 MiB or
/// more, where real ones are a few kilobytes.
///
/// On a 64 MiB stack, templates of 32 KiB that nest as deep as their
/// length allows (unary minus or `not`, chained filters, `+` or `~`)
/// render: under 2 KiB of stack a byte. This leaves a byte 4 KiB.
pub fn max_template() -> usize {
    (SIZE.load(Ordering::Relaxed) >> 12).min(MAX_TEMPLATE)
}

/// When the command runs on a smaller stack than usual, a note that the
/// address space's limit (`ulimit -v`) lowered the bounds on prompts and
/// templates; else nothing.
pub fn reduced_note() -> String {
    let size = SIZE.load(Ordering::Relaxed);
    match address_space_limit() {
        Some(limit) if size < FULL => format!(
            " (lowered from the usual, since the address space is limited to {} MiB by \
             ulimit -v)",
            limit >> 20
        ),
        _ => String::new(),
    }
}
