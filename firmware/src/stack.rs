//! Stack high-water mark of one call: paint the free stack, run, scan.
//!
//! Everything between the end of the statics (`__sheap`, from cortex-m-rt's
//! linker script) and the current stack pointer is unused. [`high_water`]
//! fills up to [`WINDOW`] bytes of it below the stack pointer with
//! [`PATTERN`], runs the call in a frame of its own, and finds the lowest
//! word that no longer holds the pattern: the distance from the stack
//! pointer before the call is the most the call used. No interrupt is
//! enabled, so nothing else touches the stack meanwhile.
//!
//! The mark counts words written, not words reserved: stack space a frame
//! sets aside and never writes (a buffer filled only in part) stays painted
//! unless something deeper writes below it. A call that happened to write
//! the pattern itself at its deepest word also reads a few bytes short.
#![allow(unsafe_code)]

use core::ptr;

use cortex_m::register::msp;

/// The paint: a word a sampler is unlikely to leave on the stack.
const PATTERN: u32 = 0xC0DE_5A17;

/// Most bytes painted below the stack pointer.
pub const WINDOW: usize = 256 * 1024;

/// Bytes left unpainted below [`paint`]'s own stack pointer, for its frame.
const MARGIN: usize = 64;

extern "C" {
    /// First address after the statics: the lowest the stack may grow to.
    static __sheap: u32;
}

/// Lowest address the paint reaches below `sp`.
fn floor(sp: usize) -> usize {
    // Only the symbol's address is taken, never its value.
    let heap = ptr::addr_of!(__sheap) as usize;
    let floor = sp.saturating_sub(WINDOW).max(heap);
    (floor + 3) & !3
}

/// Fills the stack from `floor` up to just below this function's frame.
#[inline(never)]
fn paint(floor: usize) {
    let top = (msp::read() as usize).saturating_sub(MARGIN);
    let mut at = floor;
    while at < top {
        // SAFETY: `at` is word-aligned, in RAM, above the statics and below
        // the live stack, so no one else owns the word.
        unsafe { ptr::write_volatile(at as *mut u32, PATTERN) };
        at += 4;
    }
}

/// Runs `f` in a frame of its own.
///
/// Were `f` inlined into [`high_water`], its locals would sit in that
/// function's frame, above the stack pointer the mark is taken from, and
/// go uncounted (a sampling step's own frame is about 2 KiB of them).
#[inline(never)]
fn call<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` and returns its result with the most stack bytes it used.
///
/// # Panics
///
/// - when `f` used the whole painted window, so the mark is unknown.
#[inline(never)]
pub fn high_water<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = msp::read() as usize;
    let floor = floor(base);
    paint(floor);

    let r = call(f);

    let mut lowest = base;
    let mut at = floor;
    while at < base {
        // SAFETY: the same words `paint` wrote, aligned and in RAM.
        if unsafe { ptr::read_volatile(at as *const u32) } != PATTERN {
            lowest = at;
            break;
        }
        at += 4;
    }
    #[allow(clippy::panic)] // a wrong stack figure must stop the proof, not print
    if lowest == floor {
        panic!(
            "one call used all {} bytes of the painted stack",
            base - floor
        );
    }
    (r, base - lowest)
}
