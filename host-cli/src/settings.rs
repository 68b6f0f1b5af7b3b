//! The effective settings of a run, as printed with `-v`, written to JSON
//! output and recorded in traces so that any run can be repeated.

use std::ops::RangeInclusive;

use anyhow::{anyhow, bail, Result};
use sampler_core::{Config, Order, Stage};
use serde::{Deserialize, Deserializer, Serialize};

use crate::cli::{GenerationArgs, ModelArgs, SamplingArgs};
use crate::generate::Engine;

/// Context size when `--ctx-size` is not given and the model was trained on
/// at least as many tokens.
pub const DEFAULT_CTX: u32 = 4096;
/// Context sizes `--ctx-size` accepts, in tokens.
pub const CTX_SIZES: RangeInclusive<u32> = 16..=1_048_576;
/// Batch sizes `--batch-size` accepts, in tokens.
pub const BATCH_SIZES: RangeInclusive<u32> = 1..=65_536;
/// Thread counts `--threads` accepts.
pub const THREADS: RangeInclusive<u32> = 1..=1024;

/// Everything that decides which tokens a run produces, given the prompt
/// and the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Temperature; 0 is greedy.
    #[serde(deserialize_with = "json_non_negative")]
    pub temperature: f32,
    /// Top-k; 0 is off.
    pub top_k: u32,
    /// Top-p; 1 is off.
    #[serde(deserialize_with = "json_unit")]
    pub top_p: f32,
    /// Min-p; 0 is off.
    #[serde(deserialize_with = "json_unit")]
    pub min_p: f32,
    /// Repetition penalty; 1 is off.
    #[serde(deserialize_with = "json_positive")]
    pub repeat_penalty: f32,
    /// Penalty window length.
    pub repeat_last_n: u32,
    /// Presence penalty.
    #[serde(deserialize_with = "json_finite")]
    pub presence_penalty: f32,
    /// Frequency penalty.
    #[serde(deserialize_with = "json_finite")]
    pub frequency_penalty: f32,
    /// Stage order, by stage name.
    pub sampler_order: Vec<String>,
    /// Seed of the random draw.
    pub seed: u64,
    /// Token cap, if any.
    pub n_predict: Option<u32>,
    /// Stop strings.
    pub stops: Vec<String>,
    /// Whether end-of-generation tokens were masked.
    pub ignore_eos: bool,
    /// Context size in tokens.
    pub ctx_size: u32,
    /// Prompt tokens decoded per batch.
    pub batch_size: u32,
    /// Which sampler picked the tokens.
    #[serde(default, deserialize_with = "engine")]
    pub sampler: Engine,
    /// Decoding threads: llama.cpp's logits depend on the count, so a
    /// replay uses it too. Absent from traces of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// Reads a JSON number into an f32 from its own text, by `parse`, one of
/// the readers of the matching command-line flag.
///
/// Going through an f64 rounds twice: `7.038531e-26`, which talkback
/// writes for an f32, read back as another f32, and `1.00000001` became 1,
/// which passes a check the flag fails. The flag's reader also refuses a
/// number beyond the f32 range (which would become an infinity) and one
/// that is not 0 but would become 0 (a temperature of `1e-50`, greedy),
/// and reads `-0` as 0.
fn json_f32<'de, D: Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> Result<f32, String>,
) -> Result<f32, D::Error> {
    use serde::de::Error as _;
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    let text = raw.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        let kind = crate::infile::json_kind(text.as_bytes());
        return Err(D::Error::custom(format!("expected a number, found {kind}")));
    }
    parse(text).map_err(D::Error::custom)
}

/// A finite number, read from its text as `--presence-penalty` is.
///
/// # Errors
///
/// - the value is not a number, or not one that fits an f32.
pub fn json_finite<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    json_f32(d, crate::cli::finite)
}

/// A number of 0 or more, read from its text as `--temp` is.
///
/// # Errors
///
/// - [`json_finite`]'s, or a number below 0.
pub fn json_non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    json_f32(d, crate::cli::non_negative)
}

/// A number above 0, read from its text as `--repeat-penalty` is.
///
/// # Errors
///
/// - [`json_finite`]'s, or a number of 0 or less.
pub fn json_positive<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    json_f32(d, crate::cli::positive)
}

/// A number from 0 to 1, read from its text as `--top-p` is.
///
/// # Errors
///
/// - [`json_finite`]'s, or a number outside 0..=1 as written.
pub fn json_unit<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    json_f32(d, crate::cli::unit_interval)
}

/// A sampler by the name traces record it with.
///
/// serde_json's reader of enums answers a value that is no string (`null`)
/// with "expected value", which names nothing.
///
/// # Errors
///
/// - the value is not a string, or names no sampler.
fn engine<'de, D: Deserializer<'de>>(d: D) -> Result<Engine, D::Error> {
    use serde::de::Error as _;
    match String::deserialize(d)?.as_str() {
        "talkback" => Ok(Engine::Talkback),
        "llama.cpp" => Ok(Engine::LlamaCpp),
        other => Err(D::Error::custom(format!(
            "unknown sampler `{other}`, expected `talkback` or `llama.cpp`"
        ))),
    }
}

/// The stages of `order` by the names runs record.
pub fn order_names(order: &Order) -> Vec<String> {
    order
        .stages()
        .iter()
        .map(|&s| stage_name(s).to_owned())
        .collect()
}

/// The name of a stage as the CLI spells it.
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::TopK => "top-k",
        Stage::TopP => "top-p",
        Stage::MinP => "min-p",
        _ => "temp",
    }
}

impl Settings {
    /// Collects the settings of one run.
    pub fn new(sampling: &SamplingArgs, gen: &GenerationArgs, model: &ModelArgs) -> Self {
        Self {
            temperature: sampling.stages.temp,
            top_k: sampling.stages.top_k,
            top_p: sampling.stages.top_p,
            min_p: sampling.stages.min_p,
            repeat_penalty: sampling.repeat_penalty,
            repeat_last_n: sampling.repeat_last_n,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            sampler_order: order_names(&sampling.stages.sampler_order),
            seed: sampling.seed.unwrap_or_else(random_seed),
            n_predict: gen.n_predict,
            stops: gen.stops.clone(),
            ignore_eos: gen.ignore_eos,
            // Until the model loads and says what it was trained on.
            ctx_size: model.ctx_size.unwrap_or(DEFAULT_CTX),
            batch_size: model.batch_size,
            sampler: sampling.sampler,
            threads: Some(model.threads()),
        }
    }

    /// The core's configuration for these settings.
    ///
    /// # Errors
    ///
    /// - the stage order names an unknown stage or is invalid.
    pub fn config(&self) -> Result<Config> {
        let order = self.order()?;
        let config = Config {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            order,
        };
        config
            .validate()
            .map_err(|e| anyhow!("invalid sampling settings: {e}"))?;
        Ok(config)
    }

    /// The stage order the names of `sampler_order` give: one preset name,
    /// or stage names (as a trace lists them, each on its own).
    ///
    /// # Errors
    ///
    /// - an empty list, or a name that is not one stage (or a lone preset);
    /// - an order the core refuses (a stage twice, no temperature).
    fn order(&self) -> Result<Order> {
        if let [one] = self.sampler_order.as_slice() {
            if let Some(order) = Order::from_name(one) {
                return Ok(order);
            }
        }
        if self.sampler_order.is_empty() {
            bail!("sampler_order names no stage");
        }
        let mut stages = Vec::new();
        for name in &self.sampler_order {
            let Some(stage) = crate::cli::stage_of(name) else {
                bail!(
                    "sampler_order: `{name}` is not the name of a stage (temp, top-k, top-p, \
                     min-p), nor a whole order alone (talkback, llama.cpp)"
                );
            };
            stages.push(stage);
        }
        Order::new(&stages).map_err(|e| anyhow!("sampler_order: {e}"))
    }

    /// Checks every setting against the limits the command line enforces
    /// and those of the sampler and the text stream, so that settings read
    /// from elsewhere (a trace) or too many stop strings fail before the
    /// model loads rather than partway through a run.
    ///
    /// # Errors
    ///
    /// - any error of [`Settings::config`];
    /// - too many, empty or too long stop strings;
    /// - a penalty window, context, batch or token cap out of range.
    pub fn check(&self) -> Result<Config> {
        let config = self.config()?;
        crate::generate::stop_set(&self.stops)?;
        if self.repeat_last_n as usize > sampler_core::MAX_RECENT {
            bail!(
                "a penalty window of {} tokens exceeds the limit of {}",
                self.repeat_last_n,
                sampler_core::MAX_RECENT
            );
        }
        if !CTX_SIZES.contains(&self.ctx_size) {
            bail!(
                "a context of {} tokens is outside {}..={}",
                self.ctx_size,
                CTX_SIZES.start(),
                CTX_SIZES.end()
            );
        }
        if !BATCH_SIZES.contains(&self.batch_size) {
            bail!(
                "a batch of {} tokens is outside {}..={}",
                self.batch_size,
                BATCH_SIZES.start(),
                BATCH_SIZES.end()
            );
        }
        if self.n_predict == Some(0) {
            bail!("a token cap of 0 generates nothing");
        }
        if let Some(t) = self.threads.filter(|t| !THREADS.contains(t)) {
            bail!(
                "{t} decoding threads is outside {}..={}",
                THREADS.start(),
                THREADS.end()
            );
        }
        // llama.cpp's generator keeps the low 32 bits, and all ones there
        // asks it for a fresh random seed: the run would not repeat.
        let draws = self.temperature != 0.0;
        if self.sampler == Engine::LlamaCpp && draws && self.seed & LLAMA_RANDOM == LLAMA_RANDOM {
            bail!(
                "seed {}: llama.cpp's sampler keeps its low 32 bits, and {LLAMA_RANDOM} \
                 there asks it for a random seed; pick another",
                self.seed
            );
        }
        Ok(config)
    }

    /// `value`, or `-` when the order leaves out the stage named `stage`.
    fn in_order(&self, stage: &str, value: String) -> String {
        if self.sampler_order.iter().any(|s| s == stage) {
            value
        } else {
            "-".to_owned()
        }
    }

    /// One line for `-v`: every setting in force, so the run can be
    /// repeated (`-` for a stage the order leaves out).
    pub fn describe(&self) -> String {
        let (temp, repeat, presence, frequency) = (
            number(self.temperature),
            number(self.repeat_penalty),
            number(self.presence_penalty),
            number(self.frequency_penalty),
        );
        format!(
            "seed {} | temp {} | top-k {} | top-p {} | min-p {} | repeat-penalty {} \
             (last {}) | presence {} | frequency {} | order {} | ctx {} | n {} | stop {:?} \
             | ignore-eos {} | sampler {} | threads {}",
            self.seed,
            temp,
            self.in_order("top-k", self.top_k.to_string()),
            self.in_order("top-p", number(self.top_p)),
            self.in_order("min-p", number(self.min_p)),
            repeat,
            self.repeat_last_n,
            presence,
            frequency,
            self.sampler_order.join(","),
            self.ctx_size,
            self.n_predict
                .map_or("unlimited".to_owned(), |n| n.to_string()),
            self.stops,
            self.ignore_eos,
            match self.sampler {
                Engine::Talkback => "talkback",
                Engine::LlamaCpp => "llama.cpp",
            },
            self.threads
                .map_or("not recorded".to_owned(), |n| n.to_string()),
        )
    }
}

/// `x` as the shortest text that reads back as it: in plain decimals while
/// they stay short, else with an exponent (`1e-45`, not 45 zeros).
pub fn number(x: f32) -> String {
    let plain = x.to_string();
    if plain.len() <= 12 {
        plain
    } else {
        format!("{x:e}")
    }
}

/// The low 32 bits of a seed that llama.cpp reads as "pick one at random".
const LLAMA_RANDOM: u64 = 0xffff_ffff;

/// Largest seed [`random_seed`] gives: `2^53 - 1`, the largest integer that
/// JSON tools which read numbers as doubles (jq, JavaScript) keep exactly.
pub const RANDOM_SEED_MAX: u64 = (1 << 53) - 1;

/// A seed from the operating system's hasher keys and the clock, at most
/// [`RANDOM_SEED_MAX`].
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = RandomState::new().hash_one(nanos) & RANDOM_SEED_MAX;
    // A seed that `-v` prints must repeat the run with either sampler.
    if seed & LLAMA_RANDOM == LLAMA_RANDOM {
        seed ^ 1
    } else {
        seed
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// The settings of `talkback complete x` with `extra` flags.
    fn parsed(extra: &[&str]) -> Option<Settings> {
        let mut argv = vec!["talkback", "complete", "x"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).ok()?.command {
            Command::Complete(a) => Some(Settings::new(&a.sampling, &a.generation, &a.model)),
            _ => None,
        }
    }

    #[test]
    fn numbers_print_short_and_read_back_exactly() {
        for (x, shown) in [
            (0.8f32, "0.8"),
            (1.0, "1"),
            (0.05, "0.05"),
            (1e-45, "1e-45"),
            (3e38, "3e38"),
            (123_456.79, "123456.79"),
        ] {
            assert_eq!(number(x), shown);
            assert_eq!(shown.parse::<f32>().map(f32::to_bits), Ok(x.to_bits()));
        }
    }

    #[test]
    fn check_agrees_with_the_command_line_at_every_edge() {
        for (flag, good, bad) in [
            ("--ctx-size", *CTX_SIZES.start(), CTX_SIZES.start() - 1),
            ("--ctx-size", *CTX_SIZES.end(), CTX_SIZES.end() + 1),
            (
                "--batch-size",
                *BATCH_SIZES.start(),
                BATCH_SIZES.start() - 1,
            ),
            ("--batch-size", *BATCH_SIZES.end(), BATCH_SIZES.end() + 1),
            ("--repeat-last-n", 1024, 1025),
        ] {
            let good = parsed(&[flag, &good.to_string()]).expect(flag);
            assert!(good.check().is_ok(), "{flag} {good:?}");
            assert!(parsed(&[flag, &bad.to_string()]).is_none(), "{flag} {bad}");
        }
        let base = parsed(&[]).expect("defaults");
        let cases = [
            Settings {
                ctx_size: 15,
                ..base.clone()
            },
            Settings {
                batch_size: 0,
                ..base.clone()
            },
            Settings {
                repeat_last_n: 1025,
                ..base.clone()
            },
            Settings {
                n_predict: Some(0),
                ..base.clone()
            },
            Settings {
                stops: vec![String::new()],
                ..base.clone()
            },
        ];
        for bad in cases {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_seeds_stay_within_what_json_tools_read_exactly() {
        let mut high = 0;
        for _ in 0..10_000 {
            let seed = random_seed();
            assert!(seed <= RANDOM_SEED_MAX, "{seed}");
            assert_ne!(seed & LLAMA_RANDOM, LLAMA_RANDOM, "{seed}");
            high |= seed;
        }
        // The bits below 2^53 are all used.
        assert_eq!(high, RANDOM_SEED_MAX);
    }

    #[test]
    fn a_seed_llama_cpp_reads_as_random_is_refused_for_its_sampler() {
        let check = |extra: &[&str]| {
            let settings = parsed(extra).expect("parses");
            settings.check().err().map(|e| format!("{e:#}"))
        };
        for seed in ["4294967295", "18446744073709551615", "8589934591"] {
            let err = check(&["--sampler", "llama.cpp", "--seed", seed]).unwrap_or_default();
            assert_eq!(
                err,
                format!(
                    "seed {seed}: llama.cpp's sampler keeps its low 32 bits, and 4294967295 \
                     there asks it for a random seed; pick another"
                )
            );
            // sampler-core takes all 64 bits, and greedy draws nothing.
            assert_eq!(check(&["--seed", seed]), None);
            assert_eq!(
                check(&["--sampler", "llama.cpp", "--seed", seed, "--temp", "0"]),
                None
            );
        }
        assert_eq!(
            check(&["--sampler", "llama.cpp", "--seed", "4294967294"]),
            None
        );
    }

    #[test]
    fn stop_strings_are_held_to_the_stream_limits() {
        use crate::generate::{MAX_STOPS, MAX_STOP_LEN};
        let many: Vec<String> = (0..=MAX_STOPS).map(|i| format!("s{i}")).collect();
        let base = parsed(&[]).expect("defaults");
        let at_limit = Settings {
            stops: many[..MAX_STOPS].to_vec(),
            ..base.clone()
        };
        assert!(at_limit.check().is_ok());
        let err = Settings {
            stops: many,
            ..base.clone()
        }
        .check()
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("at most 16"), "{err}");
        let long = Settings {
            stops: vec!["x".repeat(MAX_STOP_LEN + 1)],
            ..base
        };
        let err = long
            .check()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("257 bytes"), "{err}");
    }
}
