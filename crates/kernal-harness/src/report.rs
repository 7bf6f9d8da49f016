//! What a harness run reports: the criteria, each run's figures, and the
//! table and verdict printed for a person (the JSON report is these types).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::criterion::Criterion;
use super::kernel_report::{render_table, KernelOutcome};
use crate::attack::Behaviour;

#[derive(Debug, Clone, Serialize)]
pub struct TrainerRow {
    pub name: String,
    pub specialty: String,
    pub behaviour: Behaviour,
    pub solo_accuracy: Option<f64>,
    pub collective_specialty_accuracy: Option<f64>,
    pub collective_accuracy: f64,
    pub versions_trained: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub refusal_codes: HashMap<String, u64>,
}

/// The outcome of one run of the scenario against one hub.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub strategy: Option<String>,
    pub final_version: u64,
    pub collective_accuracy: f64,
    pub specialty_accuracy: BTreeMap<String, f64>,
    pub trainers: Vec<TrainerRow>,
    pub seconds: f64,
    pub restarted_at: Option<u64>,
    pub ledger_problems: Vec<String>,
    pub timed_out: bool,
    /// A `[dataset]` run: the same network trained centrally on the union
    /// of the trainers' rows, on the same held-out rows.
    pub centralised_accuracy: Option<f64>,
    /// The collective model's checkpoint as downloaded (for
    /// `--keep-weights`; not in the JSON report).
    #[serde(skip)]
    pub checkpoint: Vec<u8>,
}

/// One attack, measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttackOutcome {
    pub name: String,
    pub description: String,
    /// The strategy the case ran with.
    pub strategy: String,
    /// The collective's accuracy without the attackers, same settings.
    pub honest_accuracy: f64,
    /// ...and with them.
    pub attacked_accuracy: f64,
    /// Honest minus attacked.
    pub cost: f64,
    pub final_version: u64,
    /// What the attackers' updates met (codes of refusals), and how many
    /// updates a flooding member sent.
    pub attacker_refusals: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub passed: bool,
    pub hub: String,
    pub started_at: String,
    pub finished_at: String,
    pub summary: Value,
    pub criteria: Vec<Criterion>,
    pub run: RunOutcome,
    pub solo: BTreeMap<String, f64>,
    pub compare: Option<RunOutcome>,
    /// Attack cases (`[[attacks]]`), each against its honest run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attacks: Vec<AttackOutcome>,
    /// A kernel scenario's figures in bits per byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelOutcome>,
    pub recorded_run_id: Option<i64>,
    pub notes: Vec<String>,
}

/// The readable table and verdict.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let pct = |v: Option<f64>| {
        v.map(|x| format!("{:.1}%", x * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        o,
        "scenario {} (seed {}): {}",
        report.scenario, report.seed, report.description
    );
    if let Some(k) = &report.kernel {
        let _ = writeln!(
            o,
            "{:<12} {:<14} {:>8} {:>6} {:>6} {:>8}",
            "trainer", "specialty", "versions", "sent", "acked", "refused"
        );
        for t in &report.run.trainers {
            let _ = writeln!(
                o,
                "{:<12} {:<14} {:>8} {:>6} {:>6} {:>8}",
                t.name, t.specialty, t.versions_trained, t.sent, t.acknowledged, t.refused
            );
        }
        o.push_str(&render_table(k));
    } else {
        let _ = writeln!(
            o,
            "{:<12} {:<14} {:<10} {:>8} {:>12} {:>10} {:>6} {:>6} {:>8}",
            "trainer",
            "specialty",
            "behaviour",
            "solo",
            "collective",
            "overall",
            "sent",
            "acked",
            "refused"
        );
        let _ = writeln!(o, "{}", "-".repeat(94));
        for t in &report.run.trainers {
            let _ = writeln!(
                o,
                "{:<12} {:<14} {:<10} {:>8} {:>12} {:>10} {:>6} {:>6} {:>8}",
                t.name,
                t.specialty,
                serde_json::to_value(t.behaviour)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                pct(t.solo_accuracy),
                pct(t.collective_specialty_accuracy),
                pct(Some(t.collective_accuracy)),
                t.sent,
                t.acknowledged,
                t.refused
            );
        }
        let _ = writeln!(
            o,
            "collective model: version {}, accuracy {} on the whole test set ({:.1} s{})",
            report.run.final_version,
            pct(Some(report.run.collective_accuracy)),
            report.run.seconds,
            report
                .run
                .restarted_at
                .map(|v| format!(", hub SIGKILLed and restarted at version {v}"))
                .unwrap_or_default()
        );
        if let Some(c) = &report.compare {
            let _ = writeln!(
                o,
                "comparison with {}: version {}, accuracy {}",
                c.strategy.as_deref().unwrap_or("?"),
                c.final_version,
                pct(Some(c.collective_accuracy))
            );
        }
        if !report.attacks.is_empty() {
            let _ = writeln!(
                o,
                "{:<22} {:<14} {:>8} {:>9} {:>7}  attackers' refusals (and sends)",
                "attack", "strategy", "honest", "attacked", "cost"
            );
            for a in &report.attacks {
                let _ = writeln!(
                    o,
                    "{:<22} {:<14} {:>8} {:>9} {:>7.3}  {}",
                    a.name,
                    a.strategy,
                    pct(Some(a.honest_accuracy)),
                    pct(Some(a.attacked_accuracy)),
                    a.cost,
                    if a.attacker_refusals.is_empty() {
                        "none".to_string()
                    } else {
                        a.attacker_refusals.join(", ")
                    }
                );
            }
        }
    }
    for c in &report.criteria {
        let _ = writeln!(
            o,
            "  [{}] {}: {}",
            if c.passed { " ok " } else { "FAIL" },
            c.name,
            c.message
        );
    }
    for n in &report.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    let failed: Vec<&Criterion> = report.criteria.iter().filter(|c| !c.passed).collect();
    if failed.is_empty() {
        let _ = writeln!(o, "PASS {}: every criterion holds", report.scenario);
    } else {
        let _ = writeln!(
            o,
            "FAIL {}: {}",
            report.scenario,
            failed
                .iter()
                .map(|c| match (c.value, c.bound) {
                    (Some(v), Some(b)) => format!("{} ({:.3}, bound {:.3})", c.name, v, b),
                    _ => c.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    o
}
