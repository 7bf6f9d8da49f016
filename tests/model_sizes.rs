//! Sizes checked before anyone waits: a trainer whose update is larger than
//! the hub takes (`welcome.max_message_bytes`) stops at once with
//! `message_too_large` instead of sending it again and again; a model whose
//! full update could never fit is refused at creation.

mod common;

use std::time::Duration;

use common::*;
use kernal::data;
use kernal::model::{MlpSpec, TrainSettings};
use kernal_client::connection::{self, ClientError, ClientEvent, ClientOptions};
use kernal_client::MlpLearner;

const SPEC: MlpSpec = MlpSpec {
    inputs: 64,
    hidden: 64,
    classes: 10,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_whose_update_cannot_fit_stops_without_sending() {
    // The built-in digits MLP is 4874 float32 weights (19.5 KB) per update.
    let hub = start_hub(|c| c.hub.max_message_bytes = 8192);
    let cfg = kernal::Config::builtin();
    let settings = TrainSettings {
        epochs: 1,
        lr: 0.1,
        batch_size: 32,
        seed: data::fnv1a("big"),
    };
    let learner = MlpLearner::for_digits(SPEC, "networking", &cfg.specialties, settings).unwrap();
    let opts = ClientOptions::new(&hub.hub.ws_url(), "big", "networking", "tok");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let run = connection::run(
        opts,
        learner,
        move |e: &ClientEvent| seen.lock().unwrap().push(e.clone()),
        std::future::pending(),
    );
    let r = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the trainer stops by itself instead of resending");
    let err = r.expect_err("the update cannot be sent");
    match &err {
        ClientError::Refused { code, message } => {
            assert_eq!(code, "message_too_large");
            assert!(message.contains("at most 8192 bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let events = events.lock().unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::Reconnect { .. })),
        "no reconnection: {events:?}"
    );
    // It trained, then stopped before sending: the hub never had to refuse.
    assert!(events
        .iter()
        .any(|e| matches!(e, ClientEvent::Trained { .. })));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::Error { .. })),
        "{events:?}"
    );
}
