//! The trainer's outer loop: one connection after another, with exponential
//! backoff and jitter between them, until the work is done, the caller stops
//! it, or the hub refuses it for good.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::error::ClientError;
use super::flow::Flow;
use super::options::{ws_url, ClientOptions};
use super::progress::{Progress, Summary};
use super::session::run_connection;
use crate::events::ClientEvent;
use crate::Learner;

/// Runs a trainer until `max_versions` are trained, `stop` resolves, or a
/// fatal refusal. `on_event` sees every event as it happens.
pub async fn run<L: Learner>(
    opts: ClientOptions,
    learner: L,
    on_event: impl FnMut(&ClientEvent) + Send,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<Summary, ClientError> {
    let mut reach = crate::reach::Reach::default();
    let mut on_event = reach.watch(on_event);
    let learner = Arc::new(std::sync::Mutex::new(learner));
    let url = ws_url(&opts.hub);
    let mut progress = Progress::default();
    tokio::pin!(stop);
    loop {
        if let Some(max) = opts.max_versions {
            if progress.summary.versions_trained >= max && progress.pending.is_none() {
                break;
            }
        }
        let session = run_connection(&opts, &url, &learner, &mut progress, &mut on_event);
        let flow = tokio::select! {
            f = session => f,
            _ = &mut stop => return Ok(finish(&progress.summary, &mut on_event)),
        };
        match flow {
            Flow::Continue => break,
            Flow::Fatal(e) => return Err(e),
            Flow::Reconnect(reason) => {
                if !opts.reconnect {
                    return Err(ClientError::Unreachable {
                        url,
                        message: reason,
                    });
                }
                if let Some(e) = reach.failed(&url, &reason) {
                    on_event(&e);
                }
                progress.attempt += 1;
                let attempt = progress.attempt;
                if let Some(max) = opts.max_attempts {
                    if attempt > max {
                        return Err(ClientError::Unreachable {
                            url,
                            message: format!("{reason} (gave up after {max} attempts)"),
                        });
                    }
                }
                let base = 0.25f64 * 2f64.powi(attempt.min(10) as i32 - 1);
                let capped = base.min(opts.max_backoff.as_secs_f64());
                let jitter = rand::thread_rng().gen_range(0.5..1.5);
                let wait = capped * jitter;
                on_event(&ClientEvent::Reconnect {
                    attempt,
                    in_secs: wait,
                    reason,
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                    _ = &mut stop => return Ok(finish(&progress.summary, &mut on_event)),
                }
            }
        }
    }
    Ok(finish(&progress.summary, &mut on_event))
}

fn finish(summary: &Summary, on_event: &mut impl FnMut(&ClientEvent)) -> Summary {
    on_event(&ClientEvent::Done {
        versions_trained: summary.versions_trained,
        acked: summary.acked,
        refused: summary.refused,
    });
    summary.clone()
}
