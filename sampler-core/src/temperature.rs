//! The temperature stage.
//!
//! Input: the survivors so far (a rank prefix) and the current [`Scale`].
//! Output: either the same survivors under a scale with the new temperature,
//! or, at temperature 0, only the top-ranked survivor.
//! Invariant: temperature never changes rank order, since dividing by a
//! positive number keeps the order of the logits.

use crate::select::keep_top;
use crate::softmax::Scale;
use crate::{Candidate, Config};

/// Applies the temperature; returns the survivor count and the new scale.
pub(crate) fn apply(s: &mut [Candidate], config: &Config, scale: Scale) -> (usize, Scale) {
    if config.is_greedy() {
        keep_top(s, 1);
        (s.len().min(1), scale)
    } else {
        (s.len(), scale.with_temperature(config.temperature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_the_top_token_lowest_id_on_ties() {
        let mut s = [
            Candidate { id: 4, logit: 2.0 },
            Candidate { id: 2, logit: 2.0 },
            Candidate { id: 1, logit: 1.0 },
        ];
        let (n, _) = apply(&mut s, &Config::greedy(), Scale::new(2.0));
        assert_eq!(n, 1);
        assert_eq!(s.first().map(|c| c.id), Some(2));
    }

    #[test]
    fn positive_sets_the_reciprocal() {
        let mut s = [Candidate { id: 0, logit: 1.0 }];
        let c = Config {
            temperature: 0.5,
            ..Config::default()
        };
        let (n, scale) = apply(&mut s, &c, Scale::new(1.0));
        assert_eq!((n, scale.inv_t), (1, 2.0));
    }
}
