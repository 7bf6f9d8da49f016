//! A model's aggregation settings, declared once: the full settings (the
//! config's `[aggregation]` section and what a model runs with) and the
//! overrides (every key optional: `[models.NAME]`, the `aggregation` object of
//! `POST /v1/models`, a scenario's `[hub]`), their key list and their ranges.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::integer_rules::IntegerRules;
use super::strategy::Strategy;
use crate::range::{self, Ends};

macro_rules! aggregation_settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty => $range:expr; )*) => {
        /// The aggregation settings a model runs with.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct AggregationSettings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        /// Settings that override the defaults for one model; absent keys
        /// keep the default.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct AggregationOverrides {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        impl AggregationSettings {
            /// Every key, as config files and the API spell it.
            pub const KEYS: &'static [&'static str] = &[ $( stringify!($field), )* ];

            /// The range of every numeric key (the OpenAPI schema shows them).
            pub const RANGES: &'static [(&'static str, Option<Range>)] =
                &[ $( (stringify!($field), $range), )* ];

            /// These settings with `o`'s keys in place of their own.
            pub fn with(&self, o: &AggregationOverrides) -> AggregationSettings {
                AggregationSettings {
                    $( $field: o.$field.clone().unwrap_or_else(|| self.$field.clone()), )*
                }
            }

            /// Checks every value against its range; the error starts with the key.
            pub fn validate(&self) -> Result<(), String> {
                $( check(stringify!($field), &self.$field, $range)?; )*
                Ok(())
            }

            /// The keys whose values differ from `other`'s.
            pub fn changed_keys(&self, other: &AggregationSettings) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$field != other.$field { out.push(stringify!($field)); } )*
                out
            }
        }

        impl AggregationOverrides {
            /// Checks the keys that are set; the error starts with the key.
            pub fn validate(&self) -> Result<(), String> {
                $(
                    if let Some(v) = &self.$field {
                        check(stringify!($field), v, $range)?;
                    }
                )*
                Ok(())
            }

            /// These overrides with every key `later` sets in their place.
            pub fn then(&self, later: &AggregationOverrides) -> AggregationOverrides {
                AggregationOverrides {
                    $( $field: later.$field.clone().or_else(|| self.$field.clone()), )*
                }
            }

            /// Whether no key is set.
            pub fn is_empty(&self) -> bool {
                true $( && self.$field.is_none() )*
            }
        }
    };
}

/// A numeric setting's range.
pub type Range = (f64, f64, Ends);

/// A setting's value as a number, if it is one.
pub trait SettingValue {
    fn number(&self) -> Option<f64>;
}

impl<T: range::Num> SettingValue for T {
    fn number(&self) -> Option<f64> {
        Some(self.as_f64())
    }
}

impl SettingValue for Strategy {
    fn number(&self) -> Option<f64> {
        None
    }
}

impl SettingValue for IntegerRules {
    fn number(&self) -> Option<f64> {
        None
    }
}

fn check(key: &str, v: &impl SettingValue, r: Option<Range>) -> Result<(), String> {
    match (v.number(), r) {
        (Some(x), Some((lo, hi, ends))) => range::key(key, x, lo, hi, ends),
        _ => Ok(()),
    }
}

aggregation_settings! {
    /// One of fedavg, fedavgm, fedadam, median, trimmed_mean.
    strategy: Strategy => None;
    /// Fold as soon as this many accepted updates are buffered.
    min_updates: usize => Some((1.0, 100_000.0, Ends::Closed));
    /// ...or this many seconds after the first buffered update.
    round_timeout_secs: f64 => Some((0.0, 604_800.0, Ends::OpenLow));
    /// Updates whose base version is more than this many versions old are refused.
    max_staleness: u64 => Some((0.0, 1_000_000.0, Ends::Closed));
    /// Weight of an update of staleness s: num_examples / (1 + s)^a.
    staleness_exponent: f64 => Some((0.0, 10.0, Ends::Closed));
    /// Server learning rate applied to the aggregated delta.
    server_lr: f32 => Some((0.0, 1000.0, Ends::OpenLow));
    /// Momentum of fedavgm, beta1 of fedadam.
    momentum: f32 => Some((0.0, 1.0, Ends::OpenHigh));
    /// beta2 of fedadam.
    beta2: f32 => Some((0.0, 1.0, Ends::OpenHigh));
    /// Adaptivity constant (epsilon) of fedadam.
    tau: f32 => Some((0.0, 1000.0, Ends::OpenLow));
    /// Fraction trimmed from each end per coordinate by trimmed_mean.
    trim_fraction: f32 => Some((0.0, 0.5, Ends::OpenHigh));
    /// Each delta is scaled down to this fixed L2 norm if larger; 0 leaves
    /// clipping to the adaptive bound (`clip_quantile`).
    clip_norm: f32 => Some((0.0, 1e30, Ends::Closed));
    /// Adaptive clipping: every delta is scaled down to a bound that tracks
    /// this quantile of the members' update norms; 0 turns it off.
    clip_quantile: f32 => Some((0.0, 1.0, Ends::OpenHigh));
    /// How fast the adaptive bound moves: at most a factor exp(clip_lr) per fold.
    clip_lr: f32 => Some((0.0, 10.0, Ends::OpenLow));
    /// The adaptive bound is this many times the tracked norm quantile.
    clip_multiplier: f32 => Some((0.0, 1000.0, Ends::OpenLow));
    /// Each tensor of a member's delta is scaled down to this many times the
    /// round's lower-median norm of that tensor over its members, so no
    /// member moves one layer further than a typical member; 0 turns it off.
    tensor_clip_multiplier: f32 => Some((0.0, 1000.0, Ends::Closed));
    /// A member's num_examples counts at most this many times the median
    /// claim of the fold's members; 0 removes the cap.
    max_weight_ratio: f64 => Some((0.0, 1e6, Ends::Closed));
    /// Screening on the hub's own data: at most this share of a fold's
    /// members (always fewer than half) is left out when the model is
    /// measurably better without them; 0 turns screening off.
    screen_max_share: f32 => Some((0.0, 0.5, Ends::Closed));
    /// Largest num_examples an update may claim.
    max_num_examples: u64 => Some((1.0, 1e12, Ends::Closed));
    /// Updates whose delta has a larger L2 norm are refused with
    /// `update_too_large_norm`; 0 disables.
    max_update_norm: f32 => Some((0.0, 1e30, Ends::Closed));
    /// A pooling model's input normalisation freezes this many seconds
    /// after the first trainer's statistics, if `min_updates` trainers have
    /// not reported by then.
    normalisation_wait_secs: f64 => Some((0.0, 86_400.0, Ends::Closed));
    /// How integer and bool tensors are folded: `[{pattern, rule}]` (or
    /// "PATTERN:RULE,..."), first match wins; rules sum, max, keep,
    /// round_mean (the rule of a tensor no pattern matches).
    integer_rules: IntegerRules => None;
}

/// Writes the ranges of [`AggregationSettings::RANGES`] into the OpenAPI
/// schemas of the settings and overrides, so a client (or a fuzzer) knows
/// what the hub accepts.
pub fn document_ranges(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for name in ["AggregationSettings", "AggregationOverrides"] {
        let Some(RefOr::T(Schema::Object(obj))) = components.schemas.get_mut(name) else {
            continue;
        };
        for (key, r) in AggregationSettings::RANGES {
            let (Some((lo, hi, ends)), Some(RefOr::T(Schema::Object(p)))) =
                (r, obj.properties.get_mut(*key))
            else {
                continue;
            };
            let (lo, hi) = (utoipa::Number::Float(*lo), utoipa::Number::Float(*hi));
            match ends {
                Ends::Closed => {
                    p.minimum = Some(lo);
                    p.maximum = Some(hi);
                }
                Ends::OpenLow => {
                    p.exclusive_minimum = Some(lo);
                    p.maximum = Some(hi);
                }
                Ends::OpenHigh => {
                    p.minimum = Some(lo);
                    p.exclusive_maximum = Some(hi);
                }
            }
        }
    }
}

impl AggregationSettings {
    /// The round timeout as a duration; the range check keeps it representable.
    pub fn round_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.round_timeout_secs).unwrap_or(Duration::from_secs(604_800))
    }

    /// The normalisation wait as a duration; the range check keeps it representable.
    pub fn normalisation_wait(&self) -> Duration {
        Duration::try_from_secs_f64(self.normalisation_wait_secs)
            .unwrap_or(Duration::from_secs(86_400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_every_range_is_checked() {
        let base = crate::config::Config::builtin().aggregation;
        assert!(base.validate().is_ok());
        let o: AggregationOverrides =
            serde_json::from_str(r#"{"min_updates": 7, "strategy": "median"}"#).unwrap();
        let s = base.with(&o);
        assert_eq!((s.min_updates, s.strategy), (7, Strategy::Median));
        assert_eq!(s.changed_keys(&base), vec!["strategy", "min_updates"]);
        for (k, v) in [
            ("round_timeout_secs", "1e300"),
            ("round_timeout_secs", "1e19"),
            ("round_timeout_secs", "0"),
            ("min_updates", "0"),
            ("momentum", "1"),
            ("server_lr", "-1"),
            ("max_num_examples", "0"),
            ("max_update_norm", "-1"),
            ("staleness_exponent", "1e9"),
        ] {
            let o: AggregationOverrides =
                serde_json::from_str(&format!("{{\"{k}\": {v}}}")).unwrap();
            let e = o.validate().unwrap_err();
            assert!(e.starts_with(k), "{k}={v}: {e}");
            assert!(base.with(&o).validate().unwrap_err().starts_with(k));
        }
        assert!(serde_json::from_str::<AggregationOverrides>(r#"{"min_updatez": 1}"#).is_err());
    }
}
