//! EventsSession: one per `/v1/events` WebSocket (the dashboard's live feed).
//! It only forwards what the MetricsAggregator pushes; incoming frames other
//! than control frames are ignored.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;

use crate::hub::metrics::{self, EventFrame, MetricsAggregator};

pub struct EventsSession {
    metrics: Addr<MetricsAggregator>,
    last_heard: Instant,
}

impl EventsSession {
    pub fn new(metrics: Addr<MetricsAggregator>) -> Self {
        EventsSession {
            metrics,
            last_heard: Instant::now(),
        }
    }
}

impl Actor for EventsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Room for a few flushes of the feed (at most 50 events each); a
        // subscriber whose mailbox is full is dropped by the aggregator.
        ctx.set_mailbox_capacity(256);
        self.metrics
            .do_send(metrics::Subscribe(ctx.address().recipient()));
        self.metrics.do_send(metrics::WsSession {
            kind: "events",
            opened: true,
        });
        ctx.text(
            serde_json::json!({"type": "hello", "ts": crate::db::now(), "kernal_version": env!("CARGO_PKG_VERSION")})
                .to_string(),
        );
        ctx.run_interval(Duration::from_secs(10), |act, ctx| {
            if act.last_heard.elapsed() > Duration::from_secs(60) {
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.metrics.do_send(metrics::WsSession {
            kind: "events",
            opened: false,
        });
        Running::Stop
    }
}

impl Handler<EventFrame> for EventsSession {
    type Result = ();
    fn handle(&mut self, m: EventFrame, ctx: &mut Self::Context) {
        ctx.text(m.0.to_string());
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for EventsSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(_)) | Err(_) => {
                ctx.close(None);
                ctx.stop();
            }
            _ => {}
        }
    }
}
