//! The effective settings of a run, as printed with `-v`, written to JSON
//! output and recorded in traces so that any run can be repeated.

use anyhow::{anyhow, Result};
use sampler_core::{Config, Order, Stage};
use serde::{Deserialize, Serialize};

use crate::cli::{GenerationArgs, ModelArgs, SamplingArgs};
use crate::generate::Engine;

/// Everything that decides which tokens a run produces, given the prompt
/// and the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Temperature; 0 is greedy.
    pub temperature: f32,
    /// Top-k; 0 is off.
    pub top_k: u32,
    /// Top-p; 1 is off.
    pub top_p: f32,
    /// Min-p; 0 is off.
    pub min_p: f32,
    /// Repetition penalty; 1 is off.
    pub repeat_penalty: f32,
    /// Penalty window length.
    pub repeat_last_n: u32,
    /// Presence penalty.
    pub presence_penalty: f32,
    /// Frequency penalty.
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
    #[serde(default)]
    pub sampler: Engine,
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
            temperature: sampling.temp,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repeat_penalty: sampling.repeat_penalty,
            repeat_last_n: sampling.repeat_last_n,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            sampler_order: sampling
                .sampler_order
                .stages()
                .iter()
                .map(|&s| stage_name(s).to_owned())
                .collect(),
            seed: sampling.seed.unwrap_or_else(random_seed),
            n_predict: gen.n_predict,
            stops: gen.stops.clone(),
            ignore_eos: gen.ignore_eos,
            ctx_size: model.ctx_size,
            batch_size: model.batch_size,
            sampler: sampling.sampler,
        }
    }

    /// The core's configuration for these settings.
    ///
    /// # Errors
    ///
    /// - the stage order names an unknown stage or is invalid.
    pub fn config(&self) -> Result<Config> {
        let order: Order =
            crate::cli::parse_order(&self.sampler_order.join(",")).map_err(|e| anyhow!("{e}"))?;
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

    /// One line for `-v`: every setting, so the run can be repeated.
    pub fn describe(&self) -> String {
        format!(
            "seed {} | temp {} | top-k {} | top-p {} | min-p {} | repeat-penalty {} \
             (last {}) | presence {} | frequency {} | order {} | ctx {} | n {} | stop {:?} \
             | ignore-eos {} | sampler {}",
            self.seed,
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repeat_penalty,
            self.repeat_last_n,
            self.presence_penalty,
            self.frequency_penalty,
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
        )
    }
}

/// A seed from the operating system's hasher keys and the clock.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one(nanos)
}
