//! Sampler settings: the numbers of each stage and the order the stages run in.
//!
//! Input: values chosen by the caller. Output: a [`Config`] that
//! [`Config::validate`] accepts or rejects with a typed [`Error`].
//! Invariant: an [`Order`] can only be built valid (each stage at most once,
//! temperature present), so a `Config` needs no further check of its order.

use core::fmt;

use crate::Error;

/// Most stages an [`Order`] can hold.
pub const MAX_STAGES: usize = 4;

/// One stage of the truncation chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Divide logits by the temperature; temperature 0 keeps only the top token.
    Temperature,
    /// Keep the `top_k` highest-ranked tokens.
    TopK,
    /// Keep the smallest top set whose probability mass reaches `top_p`.
    TopP,
    /// Keep tokens whose probability is at least `min_p` times the top one's.
    MinP,
}

impl Stage {
    /// The stage's name as the command line spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::TopK => "top-k",
            Self::TopP => "top-p",
            Self::MinP => "min-p",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The order in which the stages of the chain run.
///
/// Penalties and logit bias always run first, and the softmax and draw always
/// run last; only the four [`Stage`]s can be reordered or left out. A stage
/// left out does nothing even when its setting would be active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Order {
    // Unused slots hold `Temperature` so that derived equality compares content.
    stages: [Stage; MAX_STAGES],
    len: u8,
}

impl Order {
    /// Temperature, then top-k, top-p and min-p: truncation sees the tempered
    /// distribution.
    pub const TALKBACK: Order = Order {
        stages: [Stage::Temperature, Stage::TopK, Stage::TopP, Stage::MinP],
        len: 4,
    };

    /// Top-k, top-p and min-p, then temperature: llama.cpp's default chain, in
    /// which top-p and min-p see temperature-1 probabilities.
    pub const LLAMA_CPP: Order = Order {
        stages: [Stage::TopK, Stage::TopP, Stage::MinP, Stage::Temperature],
        len: 4,
    };

    /// Builds an order from a list of stages.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidOrder`] if a stage appears twice or temperature is missing.
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::{Order, Stage};
    /// let order = Order::new(&[Stage::TopK, Stage::Temperature])?;
    /// assert_eq!(order.stages(), &[Stage::TopK, Stage::Temperature]);
    /// assert!(Order::new(&[Stage::TopK]).is_err());
    /// # Ok::<(), sampler_core::Error>(())
    /// ```
    ///
    /// It is a `const fn`, so an order can be fixed at build time, where a
    /// bad one fails the build:
    ///
    /// ```
    /// use sampler_core::{Config, Order, Stage};
    /// const MIN_P_FIRST: Order = match Order::new(&[Stage::MinP, Stage::Temperature]) {
    ///     Ok(order) => order,
    ///     Err(_) => panic!("not a valid order"),
    /// };
    /// static CONFIG: Config = Config { order: MIN_P_FIRST, ..Config::DEFAULT };
    /// assert_eq!(CONFIG.order.stages(), &[Stage::MinP, Stage::Temperature]);
    /// ```
    pub const fn new(stages: &[Stage]) -> Result<Order, Error> {
        // Written for a const fn, with no slice indexing: each stage enters
        // at the end of `out`, shifting the fillers out at the front, and a
        // rotation brings the stages to the front at the end.
        let mut out = [Stage::Temperature; MAX_STAGES];
        let mut seen = 0u8;
        let mut len = 0u8;
        let mut rest = stages;
        while let [stage, tail @ ..] = rest {
            let bit = 1u8 << (*stage as u8);
            // Four distinct stages at most, so `len` stays within `out`.
            if seen & bit != 0 {
                return Err(Error::InvalidOrder);
            }
            seen |= bit;
            out = [out[1], out[2], out[3], *stage];
            len += 1;
            rest = tail;
        }
        if seen & (1u8 << (Stage::Temperature as u8)) == 0 {
            return Err(Error::InvalidOrder);
        }
        let mut fillers = MAX_STAGES as u8 - len;
        while fillers > 0 {
            out = [out[1], out[2], out[3], out[0]];
            fillers -= 1;
        }
        Ok(Order { stages: out, len })
    }

    /// The stages in the order they run.
    pub fn stages(&self) -> &[Stage] {
        self.stages.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Looks up a preset by name: `"talkback"` or `"llama.cpp"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::Order;
    /// assert_eq!(Order::from_name("llama.cpp"), Some(Order::LLAMA_CPP));
    /// assert_eq!(Order::from_name("other"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Order> {
        match name {
            "talkback" => Some(Order::TALKBACK),
            "llama.cpp" => Some(Order::LLAMA_CPP),
            _ => None,
        }
    }

    /// The preset's name if this order is one of the presets.
    pub fn name(&self) -> Option<&'static str> {
        if *self == Order::TALKBACK {
            Some("talkback")
        } else if *self == Order::LLAMA_CPP {
            Some("llama.cpp")
        } else {
            None
        }
    }
}

impl Default for Order {
    fn default() -> Self {
        Order::TALKBACK
    }
}

/// Settings of every stage of the sampling chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Temperature; 0 picks the top token (greedy).
    pub temperature: f32,
    /// Tokens kept by top-k; 0, or a value at least the vocabulary size, turns it off.
    pub top_k: u32,
    /// Probability mass kept by top-p, in `[0, 1]`; 1 turns it off.
    pub top_p: f32,
    /// Min-p ratio in `[0, 1]`; 0 turns it off.
    pub min_p: f32,
    /// Repetition penalty (positive logits divided by it, others multiplied); 1 is off.
    ///
    /// Any finite positive value is accepted: above 1 it lowers the logits of the
    /// window's tokens, below 1 it raises them (favouring repeats), as in
    /// llama.cpp.
    pub repeat_penalty: f32,
    /// Subtracted once from the logit of every token in the penalty window; 0 is off.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the penalty window; 0 is off.
    pub frequency_penalty: f32,
    /// The order in which temperature, top-k, top-p and min-p run.
    pub order: Order,
}

impl Config {
    /// llama.cpp's defaults, as [`Config::default`] gives them, for `const`
    /// and `static` items.
    pub const DEFAULT: Config = Config {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        order: Order::TALKBACK,
    };

    /// Temperature 0 with every other stage off: always the top token.
    pub const fn greedy() -> Self {
        Config {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            order: Order::TALKBACK,
        }
    }

    /// Checks every setting's range.
    ///
    /// # Errors
    ///
    /// - [`Error::NonFiniteTemperature`] if the temperature is NaN or infinite.
    /// - [`Error::NegativeTemperature`] if it is below zero.
    /// - [`Error::TopPOutOfRange`] if top-p is NaN or outside `[0, 1]`.
    /// - [`Error::MinPOutOfRange`] if min-p is NaN or outside `[0, 1]`.
    /// - [`Error::InvalidRepeatPenalty`] if the repetition penalty is not
    ///   finite and positive.
    /// - [`Error::NonFinitePresencePenalty`] or
    ///   [`Error::NonFiniteFrequencyPenalty`] if that penalty is not finite.
    ///
    /// # Panics
    ///
    /// Never.
    ///
    /// # Examples
    ///
    /// ```
    /// use sampler_core::{Config, Error};
    /// assert_eq!(Config::default().validate(), Ok(()));
    /// let bad = Config { temperature: -1.0, ..Config::default() };
    /// assert_eq!(bad.validate(), Err(Error::NegativeTemperature));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        if !self.temperature.is_finite() {
            return Err(Error::NonFiniteTemperature);
        }
        if self.temperature < 0.0 {
            return Err(Error::NegativeTemperature);
        }
        // Written as a positive range test so that NaN fails it.
        if !(self.top_p >= 0.0 && self.top_p <= 1.0) {
            return Err(Error::TopPOutOfRange);
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(Error::MinPOutOfRange);
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(Error::InvalidRepeatPenalty);
        }
        if !self.presence_penalty.is_finite() {
            return Err(Error::NonFinitePresencePenalty);
        }
        if !self.frequency_penalty.is_finite() {
            return Err(Error::NonFiniteFrequencyPenalty);
        }
        Ok(())
    }

    /// True when temperature is so small that it keeps only the top token.
    ///
    /// Temperatures below `f32::MIN_POSITIVE` count as 0: their reciprocal
    /// would overflow.
    pub fn is_greedy(&self) -> bool {
        self.temperature < f32::MIN_POSITIVE
    }

    /// True when any of the three penalties would change a logit.
    pub fn penalties_active(&self) -> bool {
        self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

impl Default for Config {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
    /// penalties off, with [`Order::TALKBACK`].
    fn default() -> Self {
        Config::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_hold_their_stages() {
        use Stage::*;
        assert_eq!(Order::TALKBACK.stages(), &[Temperature, TopK, TopP, MinP]);
        assert_eq!(Order::LLAMA_CPP.stages(), &[TopK, TopP, MinP, Temperature]);
        assert_eq!(Order::from_name("talkback"), Some(Order::TALKBACK));
        assert_eq!(Order::from_name("llama.cpp"), Some(Order::LLAMA_CPP));
        assert_eq!(Order::from_name("Talkback"), None);
        assert_eq!(Order::LLAMA_CPP.name(), Some("llama.cpp"));
        assert_eq!(Order::new(&[Temperature]).map(|o| o.name()), Ok(None));
    }

    #[test]
    fn order_rejects_duplicates_and_missing_temperature() {
        use Stage::*;
        assert_eq!(
            Order::new(&[Temperature, Temperature]),
            Err(Error::InvalidOrder)
        );
        assert_eq!(Order::new(&[TopK, TopP, MinP]), Err(Error::InvalidOrder));
        assert_eq!(Order::new(&[]), Err(Error::InvalidOrder));
        assert_eq!(
            Order::new(&[TopK, TopP, MinP, Temperature, TopK]),
            Err(Error::InvalidOrder)
        );
        let o = Order::new(&[MinP, Temperature]);
        assert_eq!(o.map(|o| o.stages().len()), Ok(2));
        assert_eq!(
            Order::new(&[Temperature, TopK, TopP, MinP]),
            Ok(Order::TALKBACK)
        );
    }

    #[test]
    fn every_order_of_every_subset_keeps_its_stages_in_turn() {
        use Stage::*;
        let all = [Temperature, TopK, TopP, MinP];
        // Each list of up to four distinct stages, by its digits in base 5
        // (0 ends the list).
        for code in 0..5u32.pow(4) {
            let mut list = [Temperature; 4];
            let mut len = 0;
            let mut rest = code;
            while rest % 5 != 0 && len < 4 {
                list[len] = all[(rest % 5 - 1) as usize];
                len += 1;
                rest /= 5;
            }
            let list = &list[..len];
            let distinct = (0..len).all(|i| !list[..i].contains(&list[i]));
            let got = Order::new(list);
            if distinct && list.contains(&Temperature) {
                let order = got.unwrap();
                assert_eq!(order.stages(), list);
                // The unused slots hold temperature, so equal lists are
                // equal orders.
                assert_eq!(order.stages, {
                    let mut full = [Temperature; MAX_STAGES];
                    full[..len].copy_from_slice(list);
                    full
                });
            } else {
                assert_eq!(got, Err(Error::InvalidOrder), "{list:?}");
            }
        }
    }

    #[test]
    fn the_default_is_the_const_default() {
        const ORDER: Order = match Order::new(&[Stage::MinP, Stage::Temperature]) {
            Ok(order) => order,
            Err(_) => Order::TALKBACK,
        };
        assert_eq!(Config::default(), Config::DEFAULT);
        assert_eq!(ORDER.stages(), &[Stage::MinP, Stage::Temperature]);
    }

    #[test]
    fn default_matches_llama_cpp_numbers() {
        let c = Config::default();
        assert_eq!(
            (c.temperature, c.top_k, c.top_p, c.min_p),
            (0.8, 40, 0.95, 0.05)
        );
        assert!(!c.penalties_active());
        assert_eq!(c.order, Order::TALKBACK);
        assert!(Config::greedy().is_greedy());
        assert_eq!(Config::greedy().validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_each_bad_value() {
        let base = Config::default();
        let cases = [
            (
                Config {
                    temperature: f32::NAN,
                    ..base
                },
                Error::NonFiniteTemperature,
            ),
            (
                Config {
                    temperature: f32::INFINITY,
                    ..base
                },
                Error::NonFiniteTemperature,
            ),
            (
                Config {
                    temperature: -0.1,
                    ..base
                },
                Error::NegativeTemperature,
            ),
            (
                Config {
                    top_p: 1.01,
                    ..base
                },
                Error::TopPOutOfRange,
            ),
            (
                Config {
                    top_p: -0.01,
                    ..base
                },
                Error::TopPOutOfRange,
            ),
            (
                Config {
                    top_p: f32::NAN,
                    ..base
                },
                Error::TopPOutOfRange,
            ),
            (Config { min_p: 1.5, ..base }, Error::MinPOutOfRange),
            (
                Config {
                    min_p: f32::NAN,
                    ..base
                },
                Error::MinPOutOfRange,
            ),
            (
                Config {
                    repeat_penalty: 0.0,
                    ..base
                },
                Error::InvalidRepeatPenalty,
            ),
            (
                Config {
                    repeat_penalty: f32::INFINITY,
                    ..base
                },
                Error::InvalidRepeatPenalty,
            ),
            (
                Config {
                    presence_penalty: f32::NAN,
                    ..base
                },
                Error::NonFinitePresencePenalty,
            ),
            (
                Config {
                    frequency_penalty: f32::NEG_INFINITY,
                    ..base
                },
                Error::NonFiniteFrequencyPenalty,
            ),
        ];
        for (config, want) in cases {
            assert_eq!(config.validate(), Err(want), "{config:?}");
        }
        let edges = [
            Config {
                temperature: -0.0,
                ..base
            },
            Config {
                top_p: 0.0,
                min_p: 1.0,
                ..base
            },
            Config {
                presence_penalty: -2.0,
                frequency_penalty: 2.0,
                ..base
            },
        ];
        for config in edges {
            assert_eq!(config.validate(), Ok(()), "{config:?}");
        }
    }
}
