//! Replays sampler-core's golden vectors on a Cortex-M4F and reports every
//! result through semihosting.
//!
//! The vectors come from `fixtures/`, turned into statics by `build.rs`.
//! The replay itself is [`replay`], the same file the x86-64 test compiles,
//! so any difference in the printed lines is a difference in sampler-core's
//! arithmetic between the two machines. The program ends with a semihosting
//! exit: status 0 after `done`, 1 after a panic.
#![no_std]
#![no_main]

mod replay;
mod semihost;
mod stack;

use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use sampler_core::Candidate;

use crate::semihost::Console;

include!(concat!(env!("OUT_DIR"), "/vectors.rs"));

#[entry]
fn main() -> ! {
    // cortex-m-rt hands this to `main` as a `&'static mut`, in .bss: the
    // sampler's scratch, one candidate per token of the largest vocabulary.
    static mut SCRATCH: [Candidate; MAX_VOCAB] = [Candidate { id: 0, logit: 0.0 }; MAX_VOCAB];
    // The same for the rotated logits of the golden vectors.
    static mut ROTATED: [f32; MAX_ROTATED] = [0.0; MAX_ROTATED];

    let mut console = Console::new();
    let buffers = replay::Buffers {
        scratch: SCRATCH,
        rotated: ROTATED,
    };
    replay::all(&mut console, RUNS, CASES, buffers);

    debug::exit(debug::EXIT_SUCCESS);
    // Only reached when no debugger or emulator answers the exit request.
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    semihost::report_panic(info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
