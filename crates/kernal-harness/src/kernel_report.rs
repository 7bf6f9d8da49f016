//! What a kernel scenario reports: each model's bits per byte on each
//! held-out set, the run's cost, the criteria against the
//! scenario's bounds, and the table printed for a person.

use std::collections::BTreeMap;

use serde::Serialize;

use super::criterion::{crit, Criterion};
use super::scenario::Scenario;
use kernal_core::kernel::corpus;

/// One model's bits per byte on each held-out set.
#[derive(Debug, Clone, Serialize)]
pub struct KernelModelRow {
    /// `collective`, `solo-<trainer>` or `centralised` (the kept file's stem).
    pub model: String,
    /// The trainer a solo model is, and its specialty.
    pub trainer: Option<String>,
    pub specialty: Option<String>,
    /// Held-out set → bits per byte (lower is better; 8 knows nothing).
    pub bits_per_byte: BTreeMap<String, f64>,
}

/// What a kernel scenario measured, besides the criteria.
#[derive(Debug, Clone, Serialize)]
pub struct KernelOutcome {
    pub parameters: u64,
    pub versions: u64,
    pub steps_per_version: usize,
    pub batch: usize,
    pub lr: f64,
    /// The collective run: wall seconds, and per version.
    pub collective_seconds: f64,
    pub seconds_per_version: f64,
    /// The solo and centralised runs and the scoring, wall seconds.
    pub baseline_seconds: f64,
    /// The whole scenario: wall seconds, and CPU seconds of the harness
    /// (trainers, baselines, scoring) and of its own hub.
    pub total_seconds: f64,
    pub harness_cpu_seconds: f64,
    pub hub_cpu_seconds: Option<f64>,
    /// Held-out sets in table order, with the bytes each model predicted.
    pub sets: Vec<(String, u64)>,
    pub models: Vec<KernelModelRow>,
    /// Checkpoints written by `--keep-weights`.
    pub kept: Vec<String>,
}

/// The criteria, with the scenario's bounds.
pub(super) fn criteria(
    sc: &Scenario,
    rows: &[KernelModelRow],
    timed_out: bool,
    ledger_problems: &[String],
    version: u64,
) -> Vec<Criterion> {
    let mut out = Vec::new();
    let p = &sc.pass;
    if timed_out {
        out.push(crit(
            "stop",
            false,
            Some(version as f64),
            Some(sc.stop.versions as f64),
            format!(
                "timed out after {} s at version {version}",
                sc.stop.timeout_secs
            ),
        ));
    }
    let Some(coll) = rows.first() else {
        return out;
    };
    // Each specialty's specialists alone: solo rows of a built-in specialty.
    let solos: Vec<&KernelModelRow> = rows
        .iter()
        .filter(|r| {
            r.trainer.is_some()
                && r.specialty
                    .as_deref()
                    .map(corpus::is_builtin_specialty)
                    .unwrap_or(false)
        })
        .collect();
    let bpb = |r: &KernelModelRow, set: &str| r.bits_per_byte.get(set).copied();
    for (set, c) in &coll.bits_per_byte {
        if !corpus::is_builtin_specialty(set) {
            continue;
        }
        let own: Vec<&&KernelModelRow> = solos
            .iter()
            .filter(|r| r.specialty.as_deref() == Some(set))
            .collect();
        if let Some(max) = p.max_bits_over_specialist {
            for r in &own {
                if let Some(s) = bpb(r, set) {
                    let gap = c - s;
                    out.push(crit(
                        &format!("max_bits_over_specialist[{set}]"),
                        gap <= max,
                        Some(gap),
                        Some(max),
                        format!(
                            "on {set}'s held-out code the collective scores {c:.3} bits per byte, {} alone {s:.3}: {gap:+.3} {} {max:.2}",
                            r.trainer.as_deref().unwrap_or("?"),
                            if gap <= max { "<=" } else { ">" }
                        ),
                    ));
                }
            }
        }
        if let Some(min) = p.min_bits_under_other_specialists {
            for r in solos.iter().filter(|r| r.specialty.as_deref() != Some(set)) {
                if let Some(s) = bpb(r, set) {
                    let gain = s - c;
                    out.push(crit(
                        &format!(
                            "min_bits_under_other_specialists[{set}/{}]",
                            r.trainer.as_deref().unwrap_or("?")
                        ),
                        gain >= min,
                        Some(gain),
                        Some(min),
                        format!(
                            "on {set}'s held-out code the collective scores {c:.3}, {} ({}) alone {s:.3}: {gain:.3} better {} {min:.2}",
                            r.trainer.as_deref().unwrap_or("?"),
                            r.specialty.as_deref().unwrap_or("?"),
                            if gain >= min { ">=" } else { "<" }
                        ),
                    ));
                }
            }
        }
    }
    if let (Some(max), Some(c)) = (
        p.max_unseen_bits_over_specialists,
        bpb(coll, corpus::UNSEEN),
    ) {
        for r in &solos {
            if let Some(s) = bpb(r, corpus::UNSEEN) {
                let gap = c - s;
                out.push(crit(
                    &format!(
                        "max_unseen_bits_over_specialists[{}]",
                        r.trainer.as_deref().unwrap_or("?")
                    ),
                    gap <= max,
                    Some(gap),
                    Some(max),
                    format!(
                        "on unseen subsystems (fs/, mm/) the collective scores {c:.3}, {} alone {s:.3}: {gap:+.3} {} {max:.2}",
                        r.trainer.as_deref().unwrap_or("?"),
                        if gap <= max { "<=" } else { ">" }
                    ),
                ));
            }
        }
    }
    if p.no_lost_updates {
        let ok = ledger_problems.is_empty();
        out.push(crit(
            "no_lost_updates",
            ok,
            Some(ledger_problems.len() as f64),
            Some(0.0),
            if ok {
                "every acknowledged update is in the ledger, none applied twice".into()
            } else {
                ledger_problems.join("; ")
            },
        ));
    }
    out
}

/// The readable table: one column per model, one row per held-out set.
pub fn render_table(k: &KernelOutcome) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let width = k
        .sets
        .iter()
        .map(|(s, _)| s.len())
        .max()
        .unwrap_or(10)
        .max(16);
    let _ = write!(o, "{:<width$}", "bits per byte");
    for m in &k.models {
        let _ = write!(o, " {:>16}", m.model);
    }
    let _ = writeln!(o, " {:>9}", "bytes");
    let _ = writeln!(o, "{}", "-".repeat(width + 17 * k.models.len() + 10));
    for (set, bytes) in &k.sets {
        let _ = write!(o, "{set:<width$}");
        for m in &k.models {
            let v = m
                .bits_per_byte
                .get(set)
                .map(|b| format!("{b:.3}"))
                .unwrap_or_else(|| "-".into());
            let _ = write!(o, " {v:>16}");
        }
        let _ = writeln!(o, " {bytes:>9}");
    }
    let _ = writeln!(
        o,
        "kernel model: {} parameters; {} versions of {} AdamW steps x {} windows (lr {}); collective {:.1} s ({:.2} s per version), baselines and scoring {:.1} s; total {:.1} s wall, CPU {:.1} s harness + {} hub",
        k.parameters,
        k.versions,
        k.steps_per_version,
        k.batch,
        k.lr,
        k.collective_seconds,
        k.seconds_per_version,
        k.baseline_seconds,
        k.total_seconds,
        k.harness_cpu_seconds,
        k.hub_cpu_seconds
            .map(|c| format!("{c:.1} s"))
            .unwrap_or_else(|| "- s".into())
    );
    for f in &k.kept {
        let _ = writeln!(o, "kept {f}");
    }
    o
}
