//! The rules a scenario file must follow beyond its shape: names, who
//! holds which data, what only an attack case may ask for. Checked at load,
//! so a bad file is refused (exit 2) with the key that is wrong, before any
//! hub starts.

use super::flood::MAX_UPDATES_PER_VERSION;
use super::kernel;
use super::scenario::{RuleError, Scenario};

impl Scenario {
    pub(super) fn validate(&self) -> Result<(), RuleError> {
        for (c, case) in self.attacks.iter().enumerate() {
            for (i, a) in case.attackers.iter().enumerate() {
                if let Some(n) = a.updates_per_version {
                    if !(1..=MAX_UPDATES_PER_VERSION).contains(&n) {
                        return Err(RuleError::key(
                            format!("attacks[{c}].attackers[{i}].updates_per_version"),
                            format!("{n} is not in 1..={MAX_UPDATES_PER_VERSION}"),
                        ));
                    }
                }
            }
        }
        if self.trainers.is_empty() {
            return Err(RuleError::key(
                "trainers",
                "a scenario needs at least one trainer",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.trainers.iter().enumerate() {
            kernal_core::protocol::validate_name(&t.name)
                .map_err(|e| RuleError::key(format!("trainers[{i}].name"), e.to_string()))?;
            if !names.insert(&t.name) {
                return Err(RuleError::key(
                    format!("trainers[{i}].name"),
                    format!("`{}` appears twice", t.name),
                ));
            }
            if t.specialty.is_none() && t.data.is_none() && self.dataset.is_none() {
                return Err(RuleError::key(
                    format!("trainers[{i}]"),
                    "needs `specialty` or `data`",
                ));
            }
            if t.updates_per_version.is_some() {
                return Err(RuleError::key(
                    format!("trainers[{i}].updates_per_version"),
                    "only an attack case's members flood",
                ));
            }
            if self.dataset.is_some() && t.data.is_some() {
                return Err(RuleError::key(
                    format!("trainers[{i}].data"),
                    "with a [dataset], trainers take their rows by `classes`",
                ));
            }
            if self.dataset.is_none() && (t.classes.is_some() || t.part.is_some()) {
                return Err(RuleError::key(
                    format!("trainers[{i}]"),
                    "`classes` and `part` only with a [dataset]",
                ));
            }
            if let Some([k, n]) = t.part {
                if n == 0 || k == 0 || k > n {
                    return Err(RuleError::key(
                        format!("trainers[{i}].part"),
                        format!("[{k}, {n}] is not [k, n] with 1 <= k <= n"),
                    ));
                }
            }
            if let (Some(j), Some(l)) = (t.join_at_version, t.leave_at_version) {
                if l <= j {
                    return Err(RuleError::key(
                        format!("trainers[{i}].leave_at_version"),
                        format!("{l} is not after join_at_version {j}"),
                    ));
                }
            }
            if t.local_epochs == Some(0) {
                return Err(RuleError::key(
                    format!("trainers[{i}].local_epochs"),
                    "must be at least 1",
                ));
            }
        }
        if self.stop.versions == 0 {
            return Err(RuleError::key("stop.versions", "must be at least 1"));
        }
        kernel::validate(self)?;
        let unit = |k: &str, v: Option<f64>| -> Result<(), RuleError> {
            match v {
                Some(x) if !(0.0..=1.0).contains(&x) => {
                    Err(RuleError::key(k, format!("{x} is not between 0 and 1")))
                }
                _ => Ok(()),
            }
        };
        unit("stop.accuracy", self.stop.accuracy)?;
        unit("pass.min_accuracy", self.pass.min_accuracy)?;
        unit(
            "pass.min_specialty_accuracy",
            self.pass.min_specialty_accuracy,
        )?;
        unit("pass.max_solo_accuracy", self.pass.max_solo_accuracy)?;
        unit("pass.min_gain_over_solo", self.pass.min_gain_over_solo)?;
        if self.training.lr <= 0.0 || !self.training.lr.is_finite() {
            return Err(RuleError::key("training.lr", "must be a positive number"));
        }
        if self.training.local_epochs == 0 {
            return Err(RuleError::key(
                "training.local_epochs",
                "must be at least 1",
            ));
        }
        if let Some(r) = &self.restart {
            if r.at_version == 0 || r.at_version >= self.stop.versions {
                return Err(RuleError::key(
                    "restart.at_version",
                    format!(
                        "{} must be between 1 and stop.versions ({})",
                        r.at_version, self.stop.versions
                    ),
                ));
            }
        }
        if let Some(d) = &self.dataset {
            if !(d.test_fraction > 0.0 && d.test_fraction < 1.0) {
                return Err(RuleError::key(
                    "dataset.test_fraction",
                    format!("{} is not between 0 and 1", d.test_fraction),
                ));
            }
            if !(1..=4096).contains(&d.hidden) {
                return Err(RuleError::key(
                    "dataset.hidden",
                    format!("{} is not 1 to 4096", d.hidden),
                ));
            }
            if !["federated", "off"].contains(&d.normalisation.as_str()) {
                return Err(RuleError::key(
                    "dataset.normalisation",
                    format!("`{}` is not federated or off", d.normalisation),
                ));
            }
            if self.restart.is_some() || self.hub.model == "digits" {
                return Err(RuleError::key(
                    "dataset",
                    "give [hub] model a name of its own (the harness creates it); restart is not supported with a dataset",
                ));
            }
        }
        if let Some(g) = self.pass.max_gap_to_centralised {
            if self.dataset.is_none() || !(0.0..=1.0).contains(&g) {
                return Err(RuleError::key(
                    "pass.max_gap_to_centralised",
                    "a number in [0, 1], with a [dataset]",
                ));
            }
        }
        self.hub
            .aggregation
            .validate()
            .map_err(|problem| RuleError::Aggregation {
                section: "hub",
                problem,
            })?;
        if let Some(c) = &self.compare {
            c.aggregation
                .validate()
                .map_err(|problem| RuleError::Aggregation {
                    section: "compare",
                    problem,
                })?;
        }
        Ok(())
    }
}
