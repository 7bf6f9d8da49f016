//! The regression check: a run is held to the last passing run of the same
//! scenario recorded on the same hub. When the hub's record cannot be read
//! the check is reported as not made, with the reason, rather than left
//! out: a regression test that quietly stops testing looks like a pass.

use serde_json::Value;

use super::criterion::{crit, Criterion};
use super::error::HarnessError;
use super::hub::get_json;

/// The hub's record of earlier runs of `scenario`, newest first.
pub(crate) async fn earlier_runs(
    http: &reqwest::Client,
    hub_url: &str,
    scenario: &str,
) -> Result<Value, HarnessError> {
    get_json(
        http,
        &format!("{hub_url}/v1/harness/runs?scenario={scenario}&limit=100"),
    )
    .await
}

/// The regression criterion for a collective accuracy of `acc`; `None`
/// (and a note) when no earlier run passed.
pub(crate) fn check(
    earlier: &Result<Value, HarnessError>,
    acc: f64,
    tolerance: f64,
    notes: &mut Vec<String>,
) -> Option<Criterion> {
    let v = match earlier {
        Ok(v) => v,
        Err(e) => {
            return Some(crit(
                "regression",
                false,
                None,
                None,
                format!("could not be checked: listing the earlier runs on the hub failed: {e}"),
            ))
        }
    };
    let prev = v["runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["passed"] == true))
        .and_then(|r| r["collective_accuracy"].as_f64());
    let Some(prev) = prev else {
        notes.push(
            "no earlier passing run of this scenario on this hub: regression check skipped".into(),
        );
        return None;
    };
    let floor = prev - tolerance;
    Some(crit(
        "regression",
        acc >= floor,
        Some(acc),
        Some(floor),
        format!("collective {acc:.3} vs last passing run {prev:.3} (tolerance {tolerance:.3})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_listing_is_a_criterion_that_says_why() {
        let mut notes = Vec::new();
        let earlier = Err(HarnessError::Run(
            "GET http://127.0.0.1:1/v1/harness/runs: 500 Internal Server Error".into(),
        ));
        let c = check(&earlier, 0.9, 0.03, &mut notes).expect("a criterion");
        assert_eq!(c.name, "regression");
        assert!(!c.passed);
        assert!(
            c.message.starts_with("could not be checked"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("500 Internal Server Error"),
            "{}",
            c.message
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn held_to_the_newest_passing_run() {
        let mut notes = Vec::new();
        let earlier = Ok(json!({"runs": [
            {"passed": false, "collective_accuracy": 0.99},
            {"passed": true, "collective_accuracy": 0.95},
            {"passed": true, "collective_accuracy": 0.50},
        ]}));
        let c = check(&earlier, 0.93, 0.03, &mut notes).expect("a criterion");
        assert!(c.passed);
        assert_eq!(c.bound, Some(0.95 - 0.03));
        let c = check(&earlier, 0.91, 0.03, &mut notes).expect("a criterion");
        assert!(!c.passed);
        assert!(notes.is_empty());
    }

    #[test]
    fn no_passing_run_is_a_note() {
        let mut notes = Vec::new();
        let earlier = Ok(json!({"runs": [{"passed": false, "collective_accuracy": 0.9}]}));
        assert!(check(&earlier, 0.9, 0.03, &mut notes).is_none());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("regression check skipped"));
    }
}
