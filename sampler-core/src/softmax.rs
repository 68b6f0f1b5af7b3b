//! Deterministic exponentials and the integer weights every stage and the draw share.
//!
//! Input: an effective logit `x`, the top logit `m` and the current
//! temperature. Output: the scaled difference `d = (x - m) * (1 / t)`, its
//! exponential, and an integer weight `round(e^d * 2^30)`.
//! Invariants: the exponential is a fixed sequence of IEEE f32 operations
//! (no platform `exp`, no fused multiply-add), so it gives the same bits on
//! every platform and in both its scalar and vectorised uses. Weights are
//! integers, so their sums are exact and independent of summation order;
//! this is what makes every choice independent of the selection algorithm.
//! The one other exponential here, [`small_weight_approx`], only bounds
//! sums of weights, with an error checked on every input it can get; a
//! cut is taken from such bounds only when every total within them gives
//! the same one.

/// Weight of the top token: `2^30`. Weights below half a unit round to zero.
pub(crate) const WEIGHT_ONE: f32 = 1_073_741_824.0;

const LOG2E: f32 = core::f32::consts::LOG2_E;
// ln 2 split so that `n * LN2_HI` is exact for every exponent `n` used:
// LN2_HI is 0x3F31_7000, ln 2 with its low 12 mantissa bits cleared.
const LN2_HI: f32 = 0.693_115_23;
const LN2_LO: f32 = 3.194_618_3e-5;
// 1.5 * 2^23: adding it rounds a small float to an integer held in the low
// mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: i32 = 0x4B40_0000;
// Below this the result is under 2^-125 and is never used as a weight.
const EXP_FLOOR: f32 = -87.0;

/// `e^d` for `d <= 0`, to about one unit in the last place.
///
/// NaN and values below -87 give about `1.6e-38`; positive values give 1.
/// Written as straight-line selects and arithmetic so that a loop over it
/// vectorises on any target.
#[inline(always)]
pub(crate) fn exp_det(d: f32) -> f32 {
    // The comparisons are ordered so that NaN lands on the floor.
    let d = if d > EXP_FLOOR { d } else { EXP_FLOOR };
    let d = if d < 0.0 { d } else { 0.0 };

    let k = d * LOG2E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let r = (d - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r to degree 7; |r| <= 0.35 keeps the error near
    // one unit in the last place.
    let p = taylor7(r);

    // n is in [-126, 0], so 2^n is a normal float built from its exponent bits.
    let n_int = (k.to_bits() as i32).wrapping_sub(ROUND_MAGIC_BITS);
    let scale = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    p * scale
}

/// The degree-7 Taylor polynomial of `e^r`, by Horner's rule.
#[inline(always)]
fn taylor7(r: f32) -> f32 {
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    p * r + 1.0
}

/// At or below this scaled difference every weight is below 2^23.
///
/// `e^-4.86 * 2^30` is about 0.8% under 2^23, far more than the
/// exponential's error of about one unit in the last place.
pub(crate) const SMALL_CUT: f32 = -4.86;

/// `2^23`: adding it to a non-negative float below 2^23 rounds that float
/// to an integer, ties to even, and leaves the integer in the low mantissa
/// bits (floats in `[2^23, 2^24)` are spaced 1 apart).
const TWO_23: f32 = 8_388_608.0;

/// The bits of `2^23`: what [`small_weight_bits`] adds to every weight.
pub(crate) const TWO_23_BITS: u32 = 0x4B00_0000;

/// Exponent bits of `2^(n + 30)` from the bits of `n + ROUND_MAGIC`:
/// `ROUND_MAGIC_BITS` off, the float bias of 127 and the 30 of
/// [`WEIGHT_ONE`] on.
const WEIGHT_EXP: i32 = (127 + 30) - ROUND_MAGIC_BITS;

/// `TWO_23_BITS + weight_of(d)`, for `d <= SMALL_CUT`, -inf or NaN.
///
/// The same sequence of operations as [`exp_det`] followed by the scaling
/// and rounding of [`weight_of`], with three steps left out that change
/// nothing in this range: the clamp at 0 (d is already below it); the
/// separate products by `2^n` and by `2^30`, replaced by one product by
/// `2^(n + 30)` (all three are exact where the weight is not 0); and the
/// removal of `2^23`, left to the caller, who sums the bits of many weights
/// and takes `TWO_23_BITS` off once per weight summed. A test runs it on
/// every float of its range.
#[inline(always)]
pub(crate) fn small_weight_bits(d: f32) -> u32 {
    // NaN fails the comparison and lands on the floor, as in exp_det.
    let d = if d > EXP_FLOOR { d } else { EXP_FLOOR };
    let k = d * LOG2E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let r = (d - n * LN2_HI) - n * LN2_LO;
    let p = taylor7(r);
    // n is in [-126, -7], so 2^(n + 30) is a normal float.
    let scale = f32::from_bits(((k.to_bits() as i32).wrapping_add(WEIGHT_EXP) << 23) as u32);
    (p * scale + TWO_23).to_bits()
}

/// A degree-3 polynomial within 7.6e-5 of `2^f`, relatively, for
/// `|f| <= 1/2`: coefficients of `f^0` to `f^3`, those of the polynomial
/// for `e^r` on `|r| <= ln 2 / 2` fitted for the least largest relative
/// error (0.999_928_24, 1.000_164_1, 0.504_957_84, 0.165_664_9), times
/// `(ln 2)^i`.
const APPROX3: [f32; 4] = [0.999_928_24, 0.693_260_9, 0.242_608_52, 0.055_170_495];

/// Below this scaled difference [`small_weight_approx3`] may stand in for
/// [`small_weight_approx`] in a bound: the weights there are under
/// `e^-10` of the top token's, and on real logits those of the chunks
/// lying wholly below it add up to a small part of the total.
pub(crate) const CHEAP_CUT: f32 = -10.0;

/// What [`small_weight_approx3`] may be off by, as a fraction of its
/// value, before the weight's rounding: `|weight_of(d) - approx| <=
/// APPROX3_ERROR * approx + 1/2`. A test checks it on every float below
/// [`CHEAP_CUT`]; the largest error found there is under half of it.
pub(crate) const APPROX3_ERROR: f64 = 1.0 / 4096.0;

/// `e^d * 2^30` to within [`APPROX3_ERROR`] relative, for `d < CHEAP_CUT`,
/// -inf or NaN: [`small_weight_approx`] with a shorter polynomial, in
/// powers of two: `e^d = 2^y` with `y = d * log2(e)`, whose rounding errs
/// by under 6e-6 here, split into an integer `n` and `f = y - n`, which is
/// exact. One multiplication fewer than reducing `d` by `n * ln 2`.
///
/// For bounds on a sum of weights, never for a weight itself.
#[inline(always)]
pub(crate) fn small_weight_approx3(d: f32) -> f32 {
    let [c0, c1, c2, c3] = APPROX3;
    // NaN fails the comparison and lands on the floor, as in exp_det.
    let d = if d > EXP_FLOOR { d } else { EXP_FLOOR };
    let y = d * LOG2E;
    let k = y + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let f = y - n;
    let p = c3 * f + c2;
    let p = p * f + c1;
    let p = p * f + c0;
    // n is in [-126, -14], so 2^(n + 30) is a normal float.
    p * f32::from_bits(((k.to_bits() as i32).wrapping_add(WEIGHT_EXP) << 23) as u32)
}

/// Below this scaled difference every weight is at most [`LOW_WEIGHT_MAX`].
///
/// Bounds on a total need no exponential for such weights: on SmolLM2's
/// logits at temperature 0.8, a third of the chunks of sixteen have their
/// largest difference between here and
/// [`ZERO_WEIGHT_CUT`](crate::chain::ZERO_WEIGHT_CUT), and each such chunk
/// weighs between 0 and `16 * LOW_WEIGHT_MAX`, under a quarter of a
/// millionth of the top token's weight.
pub(crate) const LOW_CUT: f32 = -18.0;

/// The largest weight of a scaled difference below [`LOW_CUT`]:
/// `round(e^-18 * 2^30)`. A test checks every float below the cut.
pub(crate) const LOW_WEIGHT_MAX: u32 = 16;

/// A degree-5 polynomial within 1.4e-7 of `e^r`, relatively, for
/// `|r| <= ln 2 / 2`: coefficients of `r^0` to `r^5`, fitted for the least
/// largest relative error.
const APPROX: [f32; 6] = [
    1.000_000_1,
    0.999_999_7,
    0.499_988_94,
    0.166_675_76,
    0.041_915_59,
    0.008_297_597,
];

/// What [`small_weight_approx`] may be off by, as a fraction of its value,
/// before the weight's rounding: `|weight_of(d) - approx| <= APPROX_ERROR *
/// approx + 1/2`. A test checks it on every float of its range; the
/// largest error found there is under half of it.
pub(crate) const APPROX_ERROR: f64 = 1.0 / 1_048_576.0;

/// `e^d * 2^30` to within [`APPROX_ERROR`] relative, for `d <= SMALL_CUT`,
/// -inf or NaN; cheaper than [`small_weight_bits`] by a shorter polynomial
/// that needs no rounding to an integer.
///
/// For bounds on a sum of weights, never for a weight itself.
#[inline(always)]
pub(crate) fn small_weight_approx(d: f32) -> f32 {
    let [c0, c1, c2, c3, c4, c5] = APPROX;
    // NaN fails the comparison and lands on the floor, as in exp_det.
    let d = if d > EXP_FLOOR { d } else { EXP_FLOOR };
    let k = d * LOG2E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let r = (d - n * LN2_HI) - n * LN2_LO;
    let p = c5 * r + c4;
    let p = p * r + c3;
    let p = p * r + c2;
    let p = p * r + c1;
    let p = p * r + c0;
    // As in small_weight_bits: 2^(n + 30) is a normal float.
    p * f32::from_bits(((k.to_bits() as i32).wrapping_add(WEIGHT_EXP) << 23) as u32)
}

/// `2^52`: adding and removing it rounds a non-negative f64 below 2^52 to an integer.
const INTEGER_MAGIC: f64 = 4_503_599_627_370_496.0;

/// Integer weight of a scaled difference, `round(e^d * 2^30)`, held exactly in an f64.
///
/// `e^d * 2^30` is formed in f32 (exact: a power-of-two scaling), widened
/// to f64 (exact), and rounded to the nearest integer, ties to even, by
/// adding and removing `2^52`. Plain arithmetic, so a loop over it
/// vectorises, and sums of these values are exact integers below 2^53.
#[inline(always)]
pub(crate) fn weight_f64(d: f32) -> f64 {
    (f64::from(exp_det(d) * WEIGHT_ONE) + INTEGER_MAGIC) - INTEGER_MAGIC
}

/// Integer weight of a scaled difference: `round(e^d * 2^30)`, in `[0, 2^30]`.
#[inline(always)]
pub(crate) fn weight_of(d: f32) -> u32 {
    // Exact: the value is a non-negative integer below 2^31.
    weight_f64(d) as u32
}

/// The reference point and temperature of one distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scale {
    /// The top effective logit.
    pub m: f32,
    /// `1 / temperature` (1 before temperature has run).
    pub inv_t: f32,
    /// Whether `m` is +inf: then the +inf tokens share all the mass.
    pub inf: bool,
}

impl Scale {
    /// A scale for top logit `m` at temperature 1.
    pub(crate) fn new(m: f32) -> Self {
        // +0.0 turns a top logit of -0.0 into +0.0; differences are unchanged.
        Scale {
            m: m + 0.0,
            inv_t: 1.0,
            inf: m == f32::INFINITY,
        }
    }

    /// The same reference point at a new temperature `t > 0`.
    pub(crate) fn with_temperature(self, t: f32) -> Self {
        Scale {
            inv_t: 1.0 / t,
            ..self
        }
    }

    /// `(x - m) / t`, computed as `(x - m) * (1 / t)`; 0 for the top token.
    #[inline(always)]
    pub(crate) fn d(&self, x: f32) -> f32 {
        if self.inf {
            if x == f32::INFINITY {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        } else {
            (x - self.m) * self.inv_t
        }
    }

    /// The integer weight of logit `x`.
    #[inline(always)]
    pub(crate) fn weight(&self, x: f32) -> u64 {
        u64::from(weight_of(self.d(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_closely() {
        let mut worst = 0.0f64;
        let mut d = 0.0f32;
        while d > -87.0 {
            let got = f64::from(exp_det(d));
            let want = libm::exp(f64::from(d));
            let rel = ((got - want) / want).abs();
            worst = worst.max(rel);
            d -= 0.000_731;
        }
        assert!(worst < 3.0e-7, "worst relative error {worst}");
    }

    #[test]
    fn ln2_split_is_exact() {
        assert_eq!(LN2_HI.to_bits(), 0x3F31_7000);
        let sum = f64::from(LN2_HI) + f64::from(LN2_LO);
        assert!((sum - core::f64::consts::LN_2).abs() < 1e-11);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp_det(0.0), 1.0);
        assert_eq!(exp_det(-0.0), 1.0);
        assert_eq!(exp_det(5.0), 1.0);
        assert!(exp_det(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_det(f32::NAN) < 1e-37);
        assert!(exp_det(-1000.0) < 1e-37);
    }

    #[test]
    fn weights_are_rounded_integers() {
        let mut d = 0.0f32;
        while d > -25.0 {
            let w = weight_f64(d);
            assert_eq!(w, w.round(), "{d}");
            let exact = f64::from(exp_det(d)) * f64::from(WEIGHT_ONE);
            assert!((w - exact).abs() <= 0.5, "{d}: {w} vs {exact}");
            d -= 0.013_7;
        }
        // Ties go to even.
        assert_eq!((2.5f64 + INTEGER_MAGIC) - INTEGER_MAGIC, 2.0);
        assert_eq!((3.5f64 + INTEGER_MAGIC) - INTEGER_MAGIC, 4.0);
    }

    #[test]
    fn weights_vanish_below_the_zero_cut() {
        let mut d = crate::chain::ZERO_WEIGHT_CUT;
        while d > -200.0 {
            assert_eq!(weight_of(d), 0, "{d}");
            d -= 0.001_3;
        }
        assert!(weight_of(-21.0) > 0);
    }

    /// Calls `f` on every float from `SMALL_CUT` down to -88 (below -87
    /// every kernel clamps to the same floor) and on NaN, the infinity and
    /// a few values far below. Unoptimised builds take every 61st float.
    fn every_small_float(mut f: impl FnMut(f32)) {
        for d in [
            f32::NAN,
            -f32::NAN,
            f32::NEG_INFINITY,
            -f32::MAX,
            -1.0e6,
            -87.0,
        ] {
            f(d);
        }
        let step = if cfg!(debug_assertions) { 61 } else { 1 };
        let (mut bits, last) = (SMALL_CUT.to_bits(), (-88.0f32).to_bits());
        while bits <= last {
            f(f32::from_bits(bits));
            bits += step;
        }
    }

    #[test]
    fn small_weights_match_on_every_float_of_their_range() {
        every_small_float(|d| {
            let got = small_weight_bits(d).wrapping_sub(TWO_23_BITS);
            assert_eq!(got, weight_of(d), "{d} ({:#010x})", d.to_bits());
        });
    }

    /// Checks `approx` against the exact weights on every float below
    /// `cut` that [`every_small_float`] visits: within `error` of its value
    /// plus half a unit, and the bound neither too tight nor loose by
    /// orders of magnitude.
    fn approximation_holds(cut: f32, approx: impl Fn(f32) -> f32, error: f64) {
        let mut worst = 0.0f64;
        every_small_float(|d| {
            if d >= cut {
                return;
            }
            let (w, f) = (f64::from(weight_of(d)), f64::from(approx(d)));
            assert!(f >= 0.0, "{d}");
            assert!(
                (w - f).abs() <= error * f + 0.5,
                "{d}: weight {w}, approximation {f}"
            );
            // Before rounding, the error is relative alone.
            let exact = f64::from(exp_det(d)) * f64::from(WEIGHT_ONE);
            if exact > 0.0 {
                worst = worst.max((exact - f).abs() / exact);
            }
        });
        assert!(worst < error / 2.0, "{worst}");
        assert!(worst > error / 20.0, "{worst}");
    }

    #[test]
    fn approximate_weights_stay_within_their_bound_on_every_float_of_their_range() {
        approximation_holds(f32::INFINITY, small_weight_approx, APPROX_ERROR);
    }

    #[test]
    fn cheap_weights_stay_within_their_bound_on_every_float_of_their_range() {
        // Only chunks lying wholly below the cheap cut use it.
        approximation_holds(CHEAP_CUT, small_weight_approx3, APPROX3_ERROR);
    }

    #[test]
    fn weights_below_the_low_cut_stay_under_their_bound_on_every_float() {
        let below = f32::from_bits(LOW_CUT.to_bits() + 1);
        assert!(below < LOW_CUT);
        assert_eq!(weight_of(below), LOW_WEIGHT_MAX);
        assert!(weight_of(LOW_CUT) >= LOW_WEIGHT_MAX);
        let mut largest = 0;
        every_small_float(|d| {
            // NaN counts too: the pass compares chunk maxima the same way.
            if d < LOW_CUT || d.is_nan() {
                largest = largest.max(weight_of(d));
            }
        });
        assert_eq!(largest, LOW_WEIGHT_MAX);
    }

    #[test]
    fn weights_span_zero_to_one() {
        assert_eq!(weight_of(0.0), 1 << 30);
        assert_eq!(weight_of(f32::NEG_INFINITY), 0);
        assert_eq!(weight_of(f32::NAN), 0);
        assert_eq!(weight_of(-30.0), 0);
        assert_eq!(weight_of(-20.0), 2);
        let half = weight_of(-core::f32::consts::LN_2);
        assert!((i64::from(half) - (1 << 29)).abs() <= 128, "{half}");
    }

    #[test]
    fn scale_handles_infinities_and_tiny_temperature() {
        let s = Scale::new(f32::INFINITY);
        assert_eq!(s.d(f32::INFINITY), 0.0);
        assert_eq!(s.d(1e30), f32::NEG_INFINITY);
        let s = Scale::new(1000.0).with_temperature(0.01);
        assert_eq!(s.d(1000.0), 0.0);
        assert!((s.d(999.0) + 100.0).abs() < 1e-3);
        assert_eq!(s.weight(999.0), 0);
        assert_eq!(s.weight(1000.0), 1 << 30);
        assert_eq!(Scale::new(-0.0).m.to_bits(), 0);
    }
}
