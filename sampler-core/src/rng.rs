//! The random number generator behind every draw.
//!
//! Input: a `u64` seed. Output: a stream of uniform numbers in `[0, 1)`.
//! Invariant: the stream for a seed is part of the crate's stable behaviour;
//! a change to it changes every seeded output and is a breaking change.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A seeded xoshiro256++ generator with a documented mapping to `[0, 1)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    inner: Xoshiro256PlusPlus,
}

impl Rng {
    /// Seeds the generator through `Xoshiro256PlusPlus::seed_from_u64`.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::Rng;
    /// let (mut a, mut b) = (Rng::new(7), Rng::new(7));
    /// assert_eq!(a.next_u64(), b.next_u64());
    /// ```
    pub fn new(seed: u64) -> Self {
        Rng {
            inner: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// The next raw 64-bit output of the generator.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// The next uniform number in `[0, 1)`: `(next_u64() >> 11) as f64 * 2^-53`.
    ///
    /// Every value is a multiple of `2^-53`; the smallest is 0 and the largest
    /// `1 - 2^-53`. The conversion is exact, so the result is the same on
    /// every platform.
    pub fn next_unit(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_in_range_and_uses_top_bits() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let raw = a.next_u64();
            let u = b.next_unit();
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u * (1u64 << 53) as f64, (raw >> 11) as f64);
        }
    }

    /// Pins the stream: a change here changes every seeded output of the
    /// crate, the golden vectors included, and must be a deliberate decision.
    #[test]
    fn output_is_pinned_for_fixed_seeds() {
        let cases: [(u64, [u64; 4], [f64; 3]); 3] = [
            (
                0,
                [
                    0x5317_5d61_490b_23df,
                    0x61da_6f3d_c380_d507,
                    0x5c0f_df91_ec9a_7bfc,
                    0x02ee_bf8c_3bbe_5e1a,
                ],
                [
                    f64::from_bits(0x3fd4_c5d7_5852_42c8),
                    f64::from_bits(0x3fd8_769b_cf70_e034),
                    f64::from_bits(0x3fd7_03f7_e47b_269e),
                ],
            ),
            (
                42,
                [
                    0xd076_4d4f_4476_689f,
                    0x519e_4174_576f_3791,
                    0xfbe0_7cfb_0c24_ed8c,
                    0xb37d_9f60_0cd8_35b8,
                ],
                [
                    f64::from_bits(0x3fea_0ec9_a9e8_8ecd),
                    f64::from_bits(0x3fd4_6790_5d15_dbcc),
                    f64::from_bits(0x3fef_7c0f_9f61_849d),
                ],
            ),
            (
                u64::MAX,
                [
                    0x56cc_f8ce_948e_27b2,
                    0xe685_8843_2e5a_5b90,
                    0xe3e9_b5a4_8119_ca8b,
                    0x460f_1949_5532_ae73,
                ],
                [
                    f64::from_bits(0x3fd5_b33e_33a5_2388),
                    f64::from_bits(0x3fec_d0b1_0865_cb4b),
                    f64::from_bits(0x3fec_7d36_b490_2339),
                ],
            ),
        ];
        for (seed, raw, units) in cases {
            let mut r = Rng::new(seed);
            for want in raw {
                assert_eq!(r.next_u64(), want, "seed {seed}");
            }
            let mut r = Rng::new(seed);
            for want in units {
                assert_eq!(r.next_unit().to_bits(), want.to_bits(), "seed {seed}");
            }
        }
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
