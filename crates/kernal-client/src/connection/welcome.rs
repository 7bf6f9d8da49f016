//! Opening one connection: hello, then the welcome, the model's layout
//! checked against the learner, and the model's normalisation (joining its
//! pool of statistics when it asks for them).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::error::ClientError;
use super::flow::{refused, Flow};
use super::frames::Conn;
use super::options::ClientOptions;
use super::transport::{connect, Ws};
use crate::events::ClientEvent;
use crate::policy::{self, Next};
use crate::pooling::{apply_normalisation, join_pool};
use crate::protocol::{ClientMessage, ModelLayout, NormalisationState, ServerMessage};
use crate::Learner;

/// Connects, says hello and waits for the welcome. `attempt` is reset once
/// welcomed. `Err`: what the reconnecting loop should do instead.
pub(super) async fn open<L: Learner>(
    opts: &ClientOptions,
    url: &str,
    learner: &Arc<Mutex<L>>,
    attempt: &mut u32,
    on_event: &mut (impl FnMut(&ClientEvent) + Send),
) -> Result<(Ws, Conn, Arc<ModelLayout>), Flow> {
    let mut ws = connect(url, opts.tls.as_ref())
        .await
        .map_err(|e| Flow::Reconnect(format!("connect: {e}")))?;
    let hello = ClientMessage::Hello {
        protocol: crate::protocol::PROTOCOL_VERSION,
        name: opts.name.clone(),
        specialty: opts.specialty.clone(),
        token: opts.token.clone(),
        model: opts.model.clone(),
        role: crate::protocol::Role::Trainer,
    };
    if let Err(e) = ws
        .send(Message::Text(
            serde_json::to_string(&hello).unwrap_or_default(),
        ))
        .await
    {
        return Err(Flow::Reconnect(format!("send hello: {e}")));
    }
    // Welcome, then the weights.
    let mut conn = Conn {
        layout: None,
        latest: None,
        expect_binary_for: None,
        waiting_norm: false,
        norm_arrived: None,
        max_message_bytes: usize::MAX,
    };
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(Flow::Reconnect(format!("during hello: {e}"))),
            Ok(None) => return Err(Flow::Reconnect("connection closed during hello".into())),
            Err(_) => return Err(Flow::Reconnect("no welcome within 30 s".into())),
        };
        let Message::Text(t) = msg else { continue };
        match serde_json::from_str::<ServerMessage>(&t) {
            Ok(ServerMessage::Welcome {
                version,
                tensors,
                registered,
                session_id,
                trainer,
                model,
                normalisation,
                max_message_bytes,
                ..
            }) => {
                conn.max_message_bytes = max_message_bytes;
                let l = ModelLayout { tensors };
                let check = learner
                    .lock()
                    .map_err(|_| ClientError::Poisoned("learner"))
                    .and_then(|g| g.check_layout(&l).map_err(ClientError::Learner));
                if let Err(e) = check {
                    let _ = ws.close(None).await;
                    return Err(Flow::Fatal(e));
                }
                let layout = Arc::new(l);
                conn.layout = Some(layout.clone());
                *attempt = 0;
                conn.expect_binary_for = Some((version, 0, None));
                on_event(&ClientEvent::Welcome {
                    trainer,
                    model,
                    version,
                    registered,
                    session_id,
                });
                let pooling = normalisation
                    .as_ref()
                    .filter(|n| n.state == NormalisationState::Pooling);
                match pooling {
                    // Contribute to the shared statistics and train only
                    // once they are frozen.
                    Some(n) => conn.waiting_norm = join_pool(&mut ws, learner, n, on_event).await?,
                    None => apply_normalisation(learner, normalisation.as_ref(), on_event)
                        .map_err(Flow::Fatal)?,
                }
                return Ok((ws, conn, layout));
            }
            Ok(ServerMessage::Error {
                code,
                message,
                fatal,
                ..
            }) => {
                on_event(&ClientEvent::Error {
                    code: code.as_str().into(),
                    message: message.clone(),
                    update_id: None,
                    fatal,
                });
                return Err(match policy::on_error(code, true, false).next {
                    Next::GiveUp => Flow::Fatal(refused(code, message)),
                    _ => Flow::Reconnect(format!("{code}: {message}")),
                });
            }
            Ok(ServerMessage::Goodbye { reason }) => return Err(Flow::Reconnect(reason)),
            _ => {}
        }
    }
}
