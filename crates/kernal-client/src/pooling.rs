//! Contributing to a model's pooled input normalisation: after a welcome
//! that asks for statistics, and again whenever the hub says the model is
//! pooling (an administrator reset a bad freeze), so a trainer never trains
//! on raw inputs a model expects normalised.

use std::sync::{Arc, Mutex};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::connection::{ClientError, Flow, Ws};
use crate::events::ClientEvent;
use crate::protocol::{ClientMessage, Normalisation};
use crate::Learner;

/// Sends the learner's statistics for a pooling model. `Ok(true)`: sent,
/// wait for the `normalisation` message before training; `Ok(false)`: the
/// learner has none, it trains on its inputs as they are meanwhile.
pub(crate) async fn join_pool<L: Learner>(
    ws: &mut Ws,
    learner: &Arc<Mutex<L>>,
    pooling: &Normalisation,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Result<bool, Flow> {
    let stats = learner
        .lock()
        .map_err(|_| Flow::Fatal(ClientError::Poisoned("learner")))?
        .feature_stats();
    let Some(st) = stats else {
        apply_normalisation(learner, None, on_event).map_err(Flow::Fatal)?;
        return Ok(false);
    };
    let m = ClientMessage::Stats {
        count: st.count,
        sum: st.sum,
        sumsq: st.sumsq,
    };
    ws.send(Message::Text(serde_json::to_string(&m).unwrap_or_default()))
        .await
        .map_err(|e| Flow::Reconnect(format!("send stats: {e}")))?;
    on_event(&ClientEvent::Normalisation {
        state: "pooling".into(),
        features: pooling.features,
        trainers: pooling.trainers,
    });
    Ok(true)
}

/// Tells the learner the model's normalisation and the user what it is.
pub(crate) fn apply_normalisation<L: Learner>(
    learner: &Arc<Mutex<L>>,
    norm: Option<&Normalisation>,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Result<(), ClientError> {
    learner
        .lock()
        .map_err(|_| ClientError::Poisoned("learner"))?
        .use_normalisation(norm)
        .map_err(ClientError::Learner)?;
    on_event(&ClientEvent::Normalisation {
        state: if norm.is_some() { "frozen" } else { "none" }.into(),
        features: norm.map(|n| n.features).unwrap_or(0),
        trainers: norm.map(|n| n.trainers).unwrap_or(0),
    });
    Ok(())
}
