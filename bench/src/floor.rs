//! The floor: what any exact softmax sampler must at least do per token.
//!
//! Sampling exactly from softmax(logits / t) needs the top logit and the sum
//! of `exp` over the vocabulary (or an equivalent bound), so one pass for the
//! maximum and one for the exponentials is a lower bound on its cost. Each
//! pass keeps [`LANES`] independent accumulators so that the compiler
//! vectorises it for the baseline target (floats do not reassociate
//! otherwise).

/// Independent accumulators per pass.
const LANES: usize = 16;

/// The largest logit (-inf if none; NaN never wins).
#[inline(never)]
pub fn max(logits: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        m = if x > m { x } else { m };
    }
    m
}

/// The maximum, then the sum of `exp(x - max)` with a polynomial exponential.
#[inline(never)]
pub fn max_sum_exp_poly(logits: &[f32]) -> f32 {
    let m = max(logits);
    sum_with(logits, m, exp_poly)
}

/// The maximum, then the sum of `exp(x - max)` with the C library's `expf`.
#[inline(never)]
pub fn max_sum_exp_libm(logits: &[f32]) -> f32 {
    let m = max(logits);
    sum_with(logits, m, f32::exp)
}

#[inline(always)]
fn sum_with(logits: &[f32], m: f32, exp: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += exp(x - m);
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for &x in tail {
        sum += exp(x - m);
    }
    sum
}

/// `e^x` for `x <= 0`, to within 5e-6 relative error, branch-free.
///
/// Splits `x = n ln 2 + r` with `|r| <= ln 2 / 2`, evaluates a degree-6
/// Taylor polynomial for `e^r` and builds `2^n` from its exponent bits.
/// Inputs below -87 (and NaN) are clamped to -87, whose result is below
/// 2^-125 and adds nothing to a sum that holds at least 1.
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer,
    // and leaves that integer in the low mantissa bits of the sum.
    const SHIFT: f32 = 12_582_912.0;
    let x = if x > -87.0 { x } else { -87.0 };
    let x = if x < 0.0 { x } else { 0.0 };
    let shifted = x * core::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * core::f32::consts::LN_2;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    p * f32::from_bits((n_bits.wrapping_add(127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_exp_tracks_the_library() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -80.0 {
            let got = f64::from(exp_poly(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x -= 0.001_37;
        }
        // A single-constant ln 2 reduction loses a few ulps for large |x|.
        assert!(worst < 5e-6, "worst relative error {worst}");
        assert_eq!(exp_poly(0.0), 1.0);
        assert!(exp_poly(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_poly(f32::NAN) < 1e-37);
    }

    #[test]
    fn passes_agree_with_a_plain_loop() {
        let logits: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0)
            .collect();
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&logits), m);
        let want: f64 = logits.iter().map(|&x| f64::from(x - m).exp()).sum();
        for got in [max_sum_exp_poly(&logits), max_sum_exp_libm(&logits)] {
            assert!(
                (f64::from(got) - want).abs() / want < 1e-5,
                "{got} vs {want}"
            );
        }
        assert_eq!(max(&[f32::NAN, -1.0]), -1.0);
    }
}
