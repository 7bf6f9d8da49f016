//! The rules a scenario file must follow beyond its shape: names, who
//! holds which data, what only an attack case may ask for. Checked at load,
//! so a bad file is refused (exit 2) with the key that is wrong, before any
//! hub starts.

use super::scenario::Scenario;

impl Scenario {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (c, case) in self.attacks.iter().enumerate() {
            for (i, a) in case.attackers.iter().enumerate() {
                if let Some(n) = a.updates_per_version {
                    if !(1..=super::flood::MAX_UPDATES_PER_VERSION).contains(&n) {
                        return Err(format!(
                            "attacks[{c}].attackers[{i}].updates_per_version: {n} is not in 1..={}",
                            super::flood::MAX_UPDATES_PER_VERSION
                        ));
                    }
                }
            }
        }
        if self.trainers.is_empty() {
            return Err("trainers: a scenario needs at least one trainer".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.trainers.iter().enumerate() {
            kernal_core::protocol::validate_name(&t.name)
                .map_err(|e| format!("trainers[{i}].name: {e}"))?;
            if !names.insert(&t.name) {
                return Err(format!("trainers[{i}].name: `{}` appears twice", t.name));
            }
            if t.specialty.is_none() && t.data.is_none() && self.dataset.is_none() {
                return Err(format!("trainers[{i}]: needs `specialty` or `data`"));
            }
            if t.updates_per_version.is_some() {
                return Err(format!(
                    "trainers[{i}].updates_per_version: only an attack case's members flood"
                ));
            }
            if self.dataset.is_some() && t.data.is_some() {
                return Err(format!(
                    "trainers[{i}].data: with a [dataset], trainers take their rows by `classes`"
                ));
            }
            if self.dataset.is_none() && (t.classes.is_some() || t.part.is_some()) {
                return Err(format!(
                    "trainers[{i}]: `classes` and `part` only with a [dataset]"
                ));
            }
            if let Some([k, n]) = t.part {
                if n == 0 || k == 0 || k > n {
                    return Err(format!(
                        "trainers[{i}].part: [{k}, {n}] is not [k, n] with 1 <= k <= n"
                    ));
                }
            }
            if let (Some(j), Some(l)) = (t.join_at_version, t.leave_at_version) {
                if l <= j {
                    return Err(format!(
                        "trainers[{i}].leave_at_version: {l} is not after join_at_version {j}"
                    ));
                }
            }
            if t.local_epochs == Some(0) {
                return Err(format!("trainers[{i}].local_epochs: must be at least 1"));
            }
        }
        if self.stop.versions == 0 {
            return Err("stop.versions: must be at least 1".into());
        }
        super::kernel::validate(self)?;
        let unit = |k: &str, v: Option<f64>| -> Result<(), String> {
            match v {
                Some(x) if !(0.0..=1.0).contains(&x) => {
                    Err(format!("{k}: {x} is not between 0 and 1"))
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
            return Err("training.lr: must be a positive number".into());
        }
        if self.training.local_epochs == 0 {
            return Err("training.local_epochs: must be at least 1".into());
        }
        if let Some(r) = &self.restart {
            if r.at_version == 0 || r.at_version >= self.stop.versions {
                return Err(format!(
                    "restart.at_version: {} must be between 1 and stop.versions ({})",
                    r.at_version, self.stop.versions
                ));
            }
        }
        if let Some(d) = &self.dataset {
            if !(d.test_fraction > 0.0 && d.test_fraction < 1.0) {
                return Err(format!(
                    "dataset.test_fraction: {} is not between 0 and 1",
                    d.test_fraction
                ));
            }
            if !(1..=4096).contains(&d.hidden) {
                return Err(format!("dataset.hidden: {} is not 1 to 4096", d.hidden));
            }
            if !["federated", "off"].contains(&d.normalisation.as_str()) {
                return Err(format!(
                    "dataset.normalisation: `{}` is not federated or off",
                    d.normalisation
                ));
            }
            if self.restart.is_some() || self.hub.model == "digits" {
                return Err(
                    "dataset: give [hub] model a name of its own (the harness creates it); restart is not supported with a dataset".into(),
                );
            }
        }
        if let Some(g) = self.pass.max_gap_to_centralised {
            if self.dataset.is_none() || !(0.0..=1.0).contains(&g) {
                return Err(
                    "pass.max_gap_to_centralised: a number in [0, 1], with a [dataset]".into(),
                );
            }
        }
        self.hub
            .aggregation
            .validate()
            .map_err(|e| format!("hub.{e}"))?;
        if let Some(c) = &self.compare {
            c.aggregation
                .validate()
                .map_err(|e| format!("compare.{e}"))?;
        }
        Ok(())
    }
}
