//! The criteria a classifier run is held to (the scenario's `[pass]`), in
//! the order the report lists them, and the notes of figures measured with
//! no bound to hold them to.

use std::collections::BTreeMap;

use serde_json::Value;

use super::criterion::{crit, Criterion};
use super::error::HarnessError;
use super::poisoning;
use super::regression;
use super::report::{AttackOutcome, RunOutcome};
use super::scenario::Scenario;
use crate::attack::Behaviour;
use kernal_hub::config::Config;

/// What a run measured, with what it is measured against.
pub(crate) struct Measured<'a> {
    pub(crate) sc: &'a Scenario,
    pub(crate) cfg: &'a Config,
    pub(crate) run: &'a RunOutcome,
    /// Each specialty trained alone.
    pub(crate) solo: &'a BTreeMap<String, f64>,
    pub(crate) compare: Option<&'a RunOutcome>,
    pub(crate) attacks: &'a [AttackOutcome],
    /// The hub's listing of earlier runs of the scenario, or why there is none.
    pub(crate) earlier: Result<Value, HarnessError>,
}

/// Every criterion the scenario asks for; figures without a bound go to
/// `notes`.
pub(crate) fn criteria(m: &Measured<'_>, notes: &mut Vec<String>) -> Vec<Criterion> {
    let cfg_specialties = &m.cfg.specialties;
    let specialists: Vec<(&String, f64)> = m
        .solo
        .iter()
        .filter(|(s, _)| cfg_specialties.contains_key(*s))
        .map(|(s, a)| (s, *a))
        .collect();
    let (run, sc) = (m.run, m.sc);
    let acc = run.collective_accuracy;
    let p = &sc.pass;
    let mut criteria = Vec::new();
    if run.timed_out {
        criteria.push(crit(
            "stop",
            false,
            Some(run.final_version as f64),
            Some(sc.stop.versions as f64),
            format!(
                "timed out after {} s at version {}",
                sc.stop.timeout_secs, run.final_version
            ),
        ));
    }
    if let Some(min) = p.min_accuracy {
        criteria.push(crit(
            "min_accuracy",
            acc >= min,
            Some(acc),
            Some(min),
            format!(
                "collective accuracy on the whole test set {acc:.3} {} {min:.2}",
                if acc >= min { ">=" } else { "<" }
            ),
        ));
    }
    if let Some(min) = p.min_specialty_accuracy {
        for (s, a) in &run.specialty_accuracy {
            criteria.push(crit(
                &format!("min_specialty_accuracy[{s}]"),
                *a >= min,
                Some(*a),
                Some(min),
                format!(
                    "collective accuracy on {s}'s test slice {a:.3} {} {min:.2}",
                    if *a >= min { ">=" } else { "<" }
                ),
            ));
        }
    }
    if let Some(max) = p.max_solo_accuracy {
        for (s, a) in &specialists {
            criteria.push(crit(
                &format!("max_solo_accuracy[{s}]"),
                *a <= max,
                Some(*a),
                Some(max),
                format!(
                    "{s} trained alone scores {a:.3} {} {max:.2}",
                    if *a <= max { "<=" } else { ">" }
                ),
            ));
        }
    }
    if let Some(gain) = p.min_gain_over_solo {
        for (s, a) in &specialists {
            let g = acc - a;
            criteria.push(crit(
                &format!("min_gain_over_solo[{s}]"),
                g >= gain,
                Some(g),
                Some(gain),
                format!(
                    "collective beats {s} alone by {g:.3} {} {gain:.2}",
                    if g >= gain { ">=" } else { "<" }
                ),
            ));
        }
    }
    if let Some(central) = m.run.centralised_accuracy {
        let gap = central - acc;
        match p.max_gap_to_centralised {
            Some(max) => criteria.push(crit(
                "max_gap_to_centralised",
                gap <= max,
                Some(gap),
                Some(max),
                format!(
                    "a centralised model on the union of the trainers' rows scores {central:.3}; the collective {acc:.3} is {gap:.3} below it ({} {max:.2})",
                    if gap <= max { "<=" } else { ">" }
                ),
            )),
            None => notes.push(format!(
                "a centralised model on the union of the trainers' rows scores {central:.3}"
            )),
        }
    }
    if p.no_lost_updates {
        let ok = run.ledger_problems.is_empty();
        let acked: u64 = run.trainers.iter().map(|t| t.acknowledged).sum();
        criteria.push(crit(
            "no_lost_updates",
            ok,
            Some(run.ledger_problems.len() as f64),
            Some(0.0),
            if ok {
                format!("all {acked} acknowledged updates are in the ledger, none applied twice")
            } else {
                run.ledger_problems.join("; ")
            },
        ));
    }
    if p.faulty_refused_or_outvoted {
        for t in run
            .trainers
            .iter()
            .filter(|t| !matches!(t.behaviour, Behaviour::Honest | Behaviour::Silent))
        {
            let outvoted = p.min_accuracy.map(|m| acc >= m).unwrap_or(true);
            let (ok, how) = if t.refused > 0 && t.acknowledged == 0 {
                (
                    true,
                    format!(
                        "all {} of its updates were refused ({:?})",
                        t.refused, t.refusal_codes
                    ),
                )
            } else if outvoted {
                (true, format!("{} of its updates were accepted and outvoted: the collective still scores {acc:.3}", t.acknowledged))
            } else {
                (
                    false,
                    format!(
                        "{} of its updates were accepted and the collective scores only {acc:.3}",
                        t.acknowledged
                    ),
                )
            };
            criteria.push(crit(
                &format!("faulty_refused_or_outvoted[{}]", t.name),
                ok,
                None,
                None,
                format!("{} ({:?}): {how}", t.name, t.behaviour),
            ));
        }
    }
    if let (Some(c), Some(cs)) = (m.compare, &m.sc.compare) {
        let drop = acc - c.collective_accuracy;
        if let Some(min_drop) = cs.min_accuracy_drop {
            criteria.push(crit("compare", drop >= min_drop, Some(drop), Some(min_drop),
                format!("with {} the collective scores {:.3}, {drop:.3} below {acc:.3} {} {min_drop:.2}",
                    cs.strategy.as_str(), c.collective_accuracy, if drop >= min_drop { ">=" } else { "<" })));
        } else {
            notes.push(format!(
                "with {} the collective scores {:.3}",
                cs.strategy.as_str(),
                c.collective_accuracy
            ));
        }
    }
    // Regression against the last passing run recorded on the same hub.
    criteria.extend(regression::check(
        &m.earlier,
        acc,
        p.regression_tolerance,
        notes,
    ));
    if let Some(max) = p.max_attack_cost {
        criteria.extend(poisoning::criteria(m.attacks, max));
    }
    criteria
}
