//! Robust pooling of trainers' feature statistics. Summing every report's
//! (count, sum, sum of squares) let one report (a hostile one, or a careless
//! member whose column is in other units) fix statistics that squash every
//! honest input to a constant, for the life of the model. Here each report
//! is first judged against the others (leave-one-out, per feature, robust
//! centre and spread) and the survivors are pooled with capped counts, so
//! neither an absurd report nor a huge claimed row count can dominate.
//!
//! Honest members are heterogeneous (class-disjoint specialists have
//! different means), so the test is deliberately lenient: a report is only
//! rejected when its spread around the others' centre is
//! [`OUTLIER_FACTOR`] times what the others show — orders of magnitude, not
//! a few standard deviations.

use super::normalisation::{FeatureStats, Normalisation, StatsPool, MIN_STD};

/// A report whose root-mean-square distance from the other reports' median
/// mean is this many times the others' typical spread is rejected. The
/// honest class-disjoint splits of the shipped scenarios stay far below it
/// (see the tests); a column in other units (×1000) or the absurd reports of
/// an attacker are far above it.
pub const OUTLIER_FACTOR: f64 = 50.0;

/// No report's rows count for more than this many times the median count of
/// the pooled reports: a claimed count of 1e8 cannot buy dominance.
pub const COUNT_CAP_OVER_MEDIAN: f64 = 2.0;

/// One report the robust pool left out, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedReport {
    pub trainer: String,
    pub reason: String,
}

/// What a robust freeze decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RobustFreeze {
    /// The pooled statistics of the accepted reports (`None`: no report).
    pub normalisation: Option<Normalisation>,
    /// Reports left out as outliers against the others.
    pub rejected: Vec<RejectedReport>,
    /// Every report disagreed with the others (two reports far apart, for
    /// example): nobody can tell which is right. `normalisation` then pools
    /// them all (capped counts); a hub should rather wait for more reports.
    pub undecided: bool,
    /// The largest distance-to-spread ratio among the pooled reports: how
    /// close the least typical accepted report came to [`OUTLIER_FACTOR`].
    pub worst_kept_ratio: f64,
}

struct Summary<'a> {
    trainer: &'a str,
    stats: &'a FeatureStats,
    mean: Vec<f64>,
    var: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per feature, the others' centre (median of their means) and their typical
/// spread around it (median of their RMS distance to it).
fn centre_and_spread(others: &[&Summary], j: usize) -> (f64, f64) {
    let mut means: Vec<f64> = others.iter().map(|o| o.mean[j]).collect();
    let c = median(&mut means);
    let mut spread: Vec<f64> = others
        .iter()
        .map(|o| (o.var[j] + (o.mean[j] - c).powi(2)).sqrt())
        .collect();
    (c, median(&mut spread))
}

impl StatsPool {
    /// The pooled statistics robust to outlier reports: see the module doc.
    /// With no outlier and no count over the cap this equals [`freeze`].
    ///
    /// [`freeze`]: StatsPool::freeze
    pub fn freeze_robust(&self) -> RobustFreeze {
        let all: Vec<Summary> = self
            .reports
            .iter()
            .filter(|(_, r)| r.count > 0 && r.sum.len() == self.features)
            .map(|(name, r)| {
                let n = r.count as f64;
                let mean: Vec<f64> = r.sum.iter().map(|s| s / n).collect();
                let var = r
                    .sumsq
                    .iter()
                    .zip(&mean)
                    .map(|(q, m)| (q / n - m * m).max(0.0))
                    .collect();
                Summary {
                    trainer: name,
                    stats: r,
                    mean,
                    var,
                }
            })
            .collect();
        let mut rejected = Vec::new();
        let mut flagged = vec![false; all.len()];
        let mut ratios = vec![0.0f64; all.len()];
        if all.len() >= 2 {
            for (i, me) in all.iter().enumerate() {
                let others: Vec<&Summary> = all
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i)
                    .map(|(_, o)| o)
                    .collect();
                let per_feature: Vec<(f64, f64)> = (0..self.features)
                    .map(|j| centre_and_spread(&others, j))
                    .collect();
                // A feature the others all hold constant has no spread to
                // compare with: the typical spread of the others' features
                // stands in for it.
                let mut spreads: Vec<f64> = per_feature.iter().map(|(_, t)| *t).collect();
                let floor = median(&mut spreads).max(MIN_STD);
                let worst = per_feature
                    .iter()
                    .enumerate()
                    .map(|(j, (c, t))| {
                        let d = (me.var[j] + (me.mean[j] - c).powi(2)).sqrt();
                        (j, d / t.max(floor), *c, t.max(floor))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                ratios[i] = worst.map(|w| w.1).unwrap_or(0.0);
                if let Some((j, ratio, c, t)) = worst.filter(|w| w.1 > OUTLIER_FACTOR) {
                    flagged[i] = true;
                    rejected.push(RejectedReport {
                        trainer: me.trainer.to_string(),
                        reason: format!(
                            "feature {j}: mean {:.4e} and standard deviation {:.4e} put these statistics {ratio:.3e} times further from the other reports' median mean {c:.4e} than the others' typical spread {t:.4e} (at most {OUTLIER_FACTOR} is pooled)",
                            me.mean[j],
                            me.var[j].sqrt()
                        ),
                    });
                }
            }
        }
        let kept = flagged.iter().filter(|f| !**f).count();
        // Reject only where some reports agree and they are not outnumbered
        // by the ones they disagree with.
        let undecided = !all.is_empty() && (kept == 0 || kept < all.len() - kept);
        let pooled: Vec<&Summary> = if undecided {
            rejected.clear();
            all.iter().collect()
        } else {
            all.iter()
                .zip(&flagged)
                .filter(|(_, f)| !**f)
                .map(|(s, _)| s)
                .collect()
        };
        let worst_kept_ratio = ratios
            .iter()
            .zip(&flagged)
            .filter(|(_, f)| undecided || !**f)
            .map(|(r, _)| *r)
            .fold(0.0, f64::max);
        RobustFreeze {
            normalisation: pool_capped(&pooled, self.features),
            rejected,
            undecided,
            worst_kept_ratio,
        }
    }
}

/// Pools reports with each count capped at [`COUNT_CAP_OVER_MEDIAN`] times
/// the median count: a capped report's sums are scaled down as if it had
/// that many rows with the same mean and variance.
fn pool_capped(reports: &[&Summary], features: usize) -> Option<Normalisation> {
    if reports.is_empty() {
        return None;
    }
    let mut counts: Vec<f64> = reports.iter().map(|r| r.stats.count as f64).collect();
    let cap = COUNT_CAP_OVER_MEDIAN * median(&mut counts);
    let factors: Vec<f64> = reports
        .iter()
        .map(|r| {
            let n = r.stats.count as f64;
            if n > cap {
                cap / n
            } else {
                1.0
            }
        })
        .collect();
    let weight: f64 = reports
        .iter()
        .zip(&factors)
        .map(|(r, f)| r.stats.count as f64 * f)
        .sum();
    if weight <= 0.0 {
        return None;
    }
    let mut mean = Vec::with_capacity(features);
    let mut std = Vec::with_capacity(features);
    for j in 0..features {
        let s: f64 = reports
            .iter()
            .zip(&factors)
            .map(|(r, f)| r.stats.sum[j] * f)
            .sum();
        let q: f64 = reports
            .iter()
            .zip(&factors)
            .map(|(r, f)| r.stats.sumsq[j] * f)
            .sum();
        let m = s / weight;
        let sd = (q / weight - m * m).max(0.0).sqrt();
        mean.push(m as f32);
        std.push(if sd > MIN_STD { sd as f32 } else { 1.0 });
    }
    let count = reports.iter().map(|r| r.stats.count).sum();
    Some(Normalisation::frozen(mean, std, reports.len(), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rows: &[f32], dim: usize) -> FeatureStats {
        FeatureStats::of(rows, dim)
    }

    fn honest(seed: u32, offset: f32) -> FeatureStats {
        // 50 rows of two features: a spread around `offset`, and a column
        // that is constant 0 for this member.
        let rows: Vec<f32> = (0..50)
            .flat_map(|i| [offset + ((i * 7 + seed) % 11) as f32 * 0.5, 0.0])
            .collect();
        stats(&rows, 2)
    }

    /// The report of the issue: mean 9e8, mean square 0.99e18, count 1e8.
    fn attacker() -> FeatureStats {
        let n = 1e8;
        FeatureStats {
            count: 100_000_000,
            sum: vec![9e8 * n, 9e8 * n],
            sumsq: vec![0.99e18 * n, 0.99e18 * n],
        }
    }

    #[test]
    fn without_outliers_it_equals_the_union() {
        let mut pool = StatsPool::new(2);
        pool.add("a", honest(1, 0.0));
        pool.add("b", honest(2, 3.0));
        pool.add("c", honest(3, 6.0));
        let r = pool.freeze_robust();
        assert!(r.rejected.is_empty() && !r.undecided);
        assert_eq!(r.normalisation, pool.freeze());
    }

    #[test]
    fn one_absurd_report_is_rejected_among_two_three_and_many() {
        for honest_members in [1usize, 2, 3, 8] {
            let mut pool = StatsPool::new(2);
            let mut clean = StatsPool::new(2);
            for i in 0..honest_members {
                let h = honest(i as u32, i as f32 * 2.0);
                pool.add(&format!("h{i}"), h.clone());
                clean.add(&format!("h{i}"), h);
            }
            pool.add("mallory", attacker());
            let r = pool.freeze_robust();
            assert!(!r.undecided, "{honest_members} honest");
            assert_eq!(r.rejected.len(), 1, "{honest_members} honest: {r:?}");
            assert_eq!(r.rejected[0].trainer, "mallory");
            assert!(r.rejected[0].reason.contains("feature"));
            assert_eq!(r.normalisation, clean.freeze(), "{honest_members} honest");
        }
    }

    #[test]
    fn a_column_in_other_units_is_rejected() {
        let mut pool = StatsPool::new(2);
        pool.add("a", honest(1, 1.0));
        pool.add("b", honest(2, 2.0));
        let rows: Vec<f32> = (0..50)
            .flat_map(|i| [(1.0 + (i % 11) as f32 * 0.5) * 1000.0, 0.0])
            .collect();
        pool.add("grams", stats(&rows, 2));
        let r = pool.freeze_robust();
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].trainer, "grams");
    }

    #[test]
    fn two_far_apart_narrow_reports_are_undecided() {
        let mut pool = StatsPool::new(1);
        pool.add("a", stats(&[1.0, 1.0, 1.0], 1));
        pool.add("b", stats(&[1e6, 1e6, 1e6], 1));
        let r = pool.freeze_robust();
        assert!(r.undecided);
        assert!(r.rejected.is_empty());
        assert_eq!(r.normalisation.map(|n| n.trainers), Some(2));
    }

    #[test]
    fn a_huge_count_is_capped_at_twice_the_median() {
        let mut pool = StatsPool::new(1);
        pool.add("a", stats(&[0.0, 2.0], 1));
        pool.add("b", stats(&[0.0, 2.0], 1));
        // Mean 3 over "1000 rows": within the outlier bound, but its count
        // is capped at 2 × the median (2 rows) = 4 rows.
        pool.add(
            "c",
            FeatureStats {
                count: 1000,
                sum: vec![3000.0],
                sumsq: vec![9000.0 + 1000.0],
            },
        );
        let r = pool.freeze_robust();
        assert!(r.rejected.is_empty());
        let n = r.normalisation.unwrap();
        // (0 + 2 + 0 + 2 + 4 × 3) / 8 = 2, not ≈ 3.
        assert!((n.mean.unwrap()[0] - 2.0).abs() < 1e-6);
        assert_eq!(n.count, 1004);
    }

    fn worst_ratio(ds: &crate::data::Dataset, members: &[&[u32]]) -> f64 {
        let mut pool = StatsPool::new(ds.dim);
        for (i, classes) in members.iter().enumerate() {
            let part = ds.with_classes(classes);
            pool.add(&format!("m{i}"), FeatureStats::of(&part.features, ds.dim));
        }
        let r = pool.freeze_robust();
        assert!(r.rejected.is_empty() && !r.undecided, "{r:?}");
        r.worst_kept_ratio
    }

    /// The honest, class-disjoint members of the shipped scenarios (and
    /// harsher splits: one class per member) stay well inside the bound.
    #[test]
    fn honest_class_disjoint_members_are_never_rejected() {
        let digits = crate::data::digits().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        let wine = crate::data::load_csv(&root.join("wine.csv")).unwrap();
        let cancer = crate::data::load_csv(&root.join("breast_cancer.csv")).unwrap();
        let one_each: Vec<Vec<u32>> = (0..10).map(|c| vec![c]).collect();
        let one_each: Vec<&[u32]> = one_each.iter().map(|v| v.as_slice()).collect();
        let cases: [(&str, f64); 6] = [
            (
                "digits multi_spec",
                worst_ratio(&digits, &[&[0, 1, 2, 3], &[4, 5, 6], &[7, 8, 9]]),
            ),
            ("digits one class each", worst_ratio(&digits, &one_each)),
            (
                "digits two specialists",
                worst_ratio(&digits, &[&[0, 1, 2, 3], &[4, 5, 6]]),
            ),
            ("wine", worst_ratio(&wine, &[&[0], &[1], &[2]])),
            ("breast_cancer", worst_ratio(&cancer, &[&[0], &[0], &[1]])),
            ("breast_cancer two", worst_ratio(&cancer, &[&[0], &[1]])),
        ];
        for (name, ratio) in cases {
            eprintln!("{name}: worst ratio {ratio:.2}");
            assert!(ratio < OUTLIER_FACTOR / 2.0, "{name}: {ratio}");
        }
    }

    #[test]
    fn nobody_and_one_reporter() {
        assert!(StatsPool::new(2).freeze_robust().normalisation.is_none());
        let mut pool = StatsPool::new(2);
        pool.add("only", attacker());
        let r = pool.freeze_robust();
        assert!(r.rejected.is_empty() && !r.undecided);
        assert_eq!(r.normalisation, pool.freeze());
    }
}
