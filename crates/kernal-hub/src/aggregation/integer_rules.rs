//! How a model's integer and bool tensors are folded. They are not
//! parameters that gradients move but counters, indices and masks
//! (BatchNorm's `num_batches_tracked` counts the batches a module has
//! seen), so averaging them like weights is wrong (a mean of counts is not a
//! count) and clipping them makes no sense. Each integer tensor follows a
//! rule chosen by name pattern in the model's aggregation settings
//! (`integer_rules`, first match wins; a tensor no pattern matches follows
//! `round_mean`):
//!
//! - `sum`: the hub's value plus the sum of the members' deltas (a count:
//!   the batches seen by everyone);
//! - `max`: the hub's value plus the largest member delta;
//! - `keep`: the hub's value never changes;
//! - `round_mean`: the hub's value plus the members' mean delta, rounded to
//!   the nearest integer (halves away from zero).
//!
//! Every member of the fold counts once (superseded and dropped updates
//! never). The result is rounded and saturated to the tensor's dtype range
//! within ±2^24 (what the hub holds exactly): never a panic, never a
//! fraction.

use serde::{Deserialize, Serialize};

use crate::protocol::ModelLayout;

/// What an integer tensor's new value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntegerRule {
    Sum,
    Max,
    Keep,
    RoundMean,
}

impl IntegerRule {
    fn parse(s: &str) -> Option<IntegerRule> {
        Some(match s {
            "sum" => IntegerRule::Sum,
            "max" => IntegerRule::Max,
            "keep" => IntegerRule::Keep,
            "round_mean" => IntegerRule::RoundMean,
            _ => return None,
        })
    }
}

/// One rule: tensors whose name matches `pattern` (`*` matches any run of
/// characters, anything else itself) follow `rule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegerRuleEntry {
    pub pattern: String,
    pub rule: IntegerRule,
}

/// The rules of a model, first match wins. Written as a list of `{pattern,
/// rule}` tables, or (for a query string or an environment variable) as one
/// string `PATTERN:RULE,PATTERN:RULE`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "RulesInput", into = "Vec<IntegerRuleEntry>")]
#[schema(value_type = Vec<IntegerRuleEntry>)]
pub struct IntegerRules(pub Vec<IntegerRuleEntry>);

/// At most this many rules, of patterns of at most this many bytes: every
/// integer tensor of every fold is matched against them.
pub const MAX_RULES: usize = 64;
pub const MAX_PATTERN_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(untagged)]
enum RulesInput {
    List(Vec<IntegerRuleEntry>),
    Text(String),
}

/// Why a list of rules was refused (serde shows the sentence).
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("`{}` is not PATTERN:RULE", .0.escape_default())]
    NotPatternRule(String),
    #[error("`{}` is not one of sum, max, keep, round_mean", .0.escape_default())]
    UnknownRule(String),
    #[error("{0} rules; at most {MAX_RULES}")]
    TooMany(usize),
    #[error("pattern `{}` must have 1 to {MAX_PATTERN_BYTES} bytes", .0.escape_default())]
    BadPattern(String),
}

impl TryFrom<RulesInput> for IntegerRules {
    type Error = RulesError;
    fn try_from(r: RulesInput) -> Result<Self, RulesError> {
        let list = match r {
            RulesInput::List(l) => l,
            RulesInput::Text(t) => t
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|part| {
                    let (pattern, rule) = part
                        .rsplit_once(':')
                        .ok_or_else(|| RulesError::NotPatternRule(part.to_string()))?;
                    let rule = IntegerRule::parse(rule.trim())
                        .ok_or_else(|| RulesError::UnknownRule(rule.to_string()))?;
                    Ok(IntegerRuleEntry {
                        pattern: pattern.trim().to_string(),
                        rule,
                    })
                })
                .collect::<Result<_, RulesError>>()?,
        };
        if list.len() > MAX_RULES {
            return Err(RulesError::TooMany(list.len()));
        }
        if let Some(e) = list
            .iter()
            .find(|e| e.pattern.is_empty() || e.pattern.len() > MAX_PATTERN_BYTES)
        {
            return Err(RulesError::BadPattern(e.pattern.clone()));
        }
        Ok(IntegerRules(list))
    }
}

impl From<IntegerRules> for Vec<IntegerRuleEntry> {
    fn from(r: IntegerRules) -> Self {
        r.0
    }
}

impl IntegerRules {
    /// The rule of a tensor: the first pattern it matches, else `round_mean`.
    pub fn rule_for(&self, name: &str) -> IntegerRule {
        self.0
            .iter()
            .find(|e| glob(&e.pattern, name))
            .map(|e| e.rule)
            .unwrap_or(IntegerRule::RoundMean)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters. Iterative with one backtrack point: linear-ish, never
/// exponential, whatever the pattern.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Sets every integer and bool tensor of `new` from `old` and the fold's
/// members' values of those tensors (`members`: each member's integer
/// deltas, end to end in layout order, as
/// [`ModelLayout::integer_values`] reads them), by each tensor's rule. A
/// member whose values have the wrong length (never: the layout checked
/// them) is left out. Floating tensors are untouched.
pub fn fold_integers(
    layout: &ModelLayout,
    rules: &IntegerRules,
    old: &[f32],
    members: &[&[f32]],
    new: &mut [f32],
) {
    if !layout.has_integers() {
        return;
    }
    let ints: usize = layout
        .tensors
        .iter()
        .filter(|t| t.is_integer())
        .map(|t| t.numel())
        .sum();
    let members: Vec<&[f32]> = members
        .iter()
        .copied()
        .filter(|m| m.len() == ints)
        .collect();
    let (mut at, mut k) = (0usize, 0usize);
    for t in &layout.tensors {
        let n = t.numel();
        if t.is_integer() {
            let dtype = t.tensor_dtype();
            let rule = if members.is_empty() {
                IntegerRule::Keep
            } else {
                rules.rule_for(&t.name)
            };
            for e in 0..n {
                let base = old.get(at + e).copied().unwrap_or(0.0) as f64;
                let deltas = members.iter().map(|m| m[k + e] as f64);
                let v = match rule {
                    IntegerRule::Keep => base,
                    IntegerRule::Sum => base + deltas.sum::<f64>(),
                    IntegerRule::Max => base + deltas.fold(f64::NEG_INFINITY, f64::max),
                    IntegerRule::RoundMean => {
                        base + (deltas.sum::<f64>() / members.len() as f64).round()
                    }
                };
                if let Some(slot) = new.get_mut(at + e) {
                    *slot = dtype.saturate(v.clamp(f32::MIN as f64, f32::MAX as f64) as f32);
                }
            }
            k += n;
        }
        at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorDtype;

    fn rules(s: &str) -> IntegerRules {
        serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
    }

    #[test]
    fn patterns_match_and_parse() {
        assert!(glob("*num_batches_tracked", "bn1.num_batches_tracked"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("bn1.*", "bn2.x"));
        assert!(glob("bn?", "bn?"));
        // No exponential blow-up on a hostile pattern.
        let long = "a".repeat(200);
        assert!(!glob(&"*a".repeat(100), &format!("{long}b")));
        let r = rules("*num_batches_tracked:sum, mask*:keep");
        assert_eq!(r.rule_for("bn.num_batches_tracked"), IntegerRule::Sum);
        assert_eq!(r.rule_for("mask.0"), IntegerRule::Keep);
        assert_eq!(r.rule_for("other"), IntegerRule::RoundMean);
        let list: IntegerRules =
            serde_json::from_str(r#"[{"pattern": "x", "rule": "max"}]"#).unwrap();
        assert_eq!(list.rule_for("x"), IntegerRule::Max);
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"[{"pattern":"x","rule":"max"}]"#
        );
        for bad in [
            r#""x:avg""#,
            r#""x""#,
            r#"[{"pattern": "", "rule": "sum"}]"#,
            r#"[{"pattern": "x", "rule": "sum", "extra": 1}]"#,
        ] {
            assert!(serde_json::from_str::<IntegerRules>(bad).is_err(), "{bad}");
        }
        let many = vec!["x:sum"; MAX_RULES + 1].join(",");
        assert!(serde_json::from_value::<IntegerRules>(many.into()).is_err());
    }

    #[test]
    fn each_rule_on_hand_checked_numbers_and_saturation() {
        let layout = ModelLayout::with_dtypes(vec![
            ("w".into(), vec![2], TensorDtype::F32),
            ("count".into(), vec![], TensorDtype::I64),
            ("peak".into(), vec![2], TensorDtype::I32),
            ("frozen".into(), vec![], TensorDtype::I64),
            ("avg".into(), vec![], TensorDtype::I16),
            ("small".into(), vec![], TensorDtype::U8),
            ("flag".into(), vec![], TensorDtype::Bool),
        ]);
        let r = rules("count:sum,peak:max,frozen:keep");
        let old = [0.5, 0.5, 100.0, 1.0, 2.0, 7.0, 3.0, 250.0, 1.0];
        // Integer values of two members: count, peak[2], frozen, avg, small, flag.
        let a = [10.0, 5.0, -1.0, 99.0, 1.0, 3.0, 0.0];
        let b = [20.0, -2.0, -3.0, 99.0, 2.0, 9.0, -1.0];
        let mut new = [9.0; 9];
        fold_integers(&layout, &r, &old, &[&a, &b], &mut new);
        assert_eq!(&new[..2], &[9.0, 9.0], "floating tensors untouched");
        assert_eq!(new[2], 130.0, "sum");
        assert_eq!(&new[3..5], &[6.0, 1.0], "max");
        assert_eq!(new[5], 7.0, "keep");
        assert_eq!(new[6], 5.0, "round_mean of 1 and 2 is 1.5 -> 2");
        assert_eq!(new[7], 255.0, "U8 saturates");
        assert_eq!(new[8], 0.0, "bool: 1 + round(-0.5) = 0");
        // Overflow saturates at ±2^24, never panics.
        let big = [1.6e7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut new = [0.0; 9];
        fold_integers(&layout, &r, &old, &[&big, &big], &mut new);
        assert_eq!(new[2], 16_777_216.0);
        // No members (or members of the wrong length): the hub's values.
        let mut new = [0.0; 9];
        fold_integers(&layout, &r, &old, &[&[1.0][..]], &mut new);
        assert_eq!(&new[2..], &old[2..]);
    }
}
