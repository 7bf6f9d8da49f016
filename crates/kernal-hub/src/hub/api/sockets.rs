//! The two WebSocket upgrades: the trainer protocol and the event feed.
//! Both refuse browser pages of other origins; the trainer endpoint bounds
//! the connections still waiting for their hello, in all and per address.

use actix::{Actor, AsyncContext};
use actix_web::{get, web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use super::AppState;
use super::UpgradeHeaders;
use crate::error::{ApiError, ErrorBody};
use crate::hub::events::EventsSession;
use crate::hub::outbox::{ConnFd, Outbox, OutboxBody, PeerSocket};
use crate::hub::session::{Connection, TrainerSession};
use crate::hub::ws::spool::SpoolDir;
use crate::hub::ws::{Activity, Claim, FrameReader, ReaderLimits};
use crate::protocol::ErrorCode;

/// `scheme://host[:port]` in lower case, without the scheme's default port.
fn normalise_origin(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let host = rest.trim_end_matches('/').to_ascii_lowercase();
    if host.is_empty() || host.contains('/') {
        return None;
    }
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => host,
    };
    Some(format!("{scheme}://{host}"))
}

/// Whether a host name is one no other site can claim: an IP literal or
/// `localhost`. A page served under any other name could have been pointed
/// at the hub by its own DNS (DNS rebinding), so its origin counts as the
/// hub's own only when it is listed in `hub.allowed_origins`.
fn is_local_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

/// Refuses a browser page of another origin. Clients that send no Origin
/// (trainers, scripts) are not browsers and pass.
pub fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get("origin") else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let refuse = || {
        ApiError::new(
            ErrorCode::ForbiddenOrigin,
            format!(
                "a page of origin `{}` may not connect to this hub; add it to hub.allowed_origins if it should",
                origin.escape_default()
            ),
        )
    };
    let Some(given) = normalise_origin(origin) else {
        return Err(refuse());
    };
    if allowed
        .iter()
        .filter_map(|a| normalise_origin(a))
        .any(|a| a == given)
    {
        return Ok(());
    }
    let info = req.connection_info();
    let host = info.host();
    let own = normalise_origin(&format!("{}://{}", info.scheme(), host));
    if is_local_name(host) && own.as_deref() == Some(given.as_str()) {
        return Ok(());
    }
    Err(refuse())
}

fn not_an_upgrade(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("not a WebSocket upgrade: {e}"))
}

/// Trainer protocol v1 (see docs/PROTOCOL.md): upgrade to a WebSocket.
#[utoipa::path(
    tag = "trainers",
    params(UpgradeHeaders),
    responses(
        (status = 101, description = "Switching to the trainer protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 403, description = "A browser page of another origin (`forbidden_origin`)", body = ErrorBody),
        (status = 503, description = "Too many connections waiting for their hello (`too_many_handshakes`)", body = ErrorBody),
    )
)]
#[get("/v1/trainers/ws")]
pub async fn trainer_ws(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let cfg = st.hub_config()?;
    check_origin(&req, &cfg.allowed_origins)?;
    let mut res = ws::handshake(&req).map_err(not_an_upgrade)?;
    // Bound the connections that have not said hello yet: a flood of idle
    // sockets is refused up front instead of holding memory until timeout.
    let ip = req.peer_addr().map(|a| a.ip());
    let slot = st
        .handshakes
        .enter(ip, cfg.max_pending_handshakes, cfg.max_prehello_per_ip)
        .map_err(|e| ApiError::new(ErrorCode::TooManyHandshakes, e.to_string()))?;
    let limits = crate::hub::session_limits_of(&cfg);
    let socket = req.conn_data::<ConnFd>().and_then(|fd| PeerSocket::of(*fd));
    let outbox = Outbox::paced(
        st.hot.clone(),
        limits.model_hold,
        limits.max_outbound_bytes,
        socket,
        Some(st.pacer.clone()),
    );
    let activity = Activity::new();
    let reader = FrameReader::new(
        stream,
        activity.clone(),
        ReaderLimits {
            max_message: limits.max_message_bytes,
            max_prehello: limits.max_prehello_bytes,
            max_fragments: limits.max_fragments,
            budget_wait: limits.client_timeout,
            spool: (cfg.spool_min_bytes > 0 && st.blobs.wants(cfg.spool_min_bytes)).then(|| {
                SpoolDir {
                    dir: st.blobs.dir.clone(),
                    min_bytes: cfg.spool_min_bytes,
                }
            }),
        },
        Claim::new(st.budget.clone(), limits.inflight_share),
    );
    let mut limits = limits;
    // What welcome tells the trainer: the smaller of the message limit and
    // this connection's share of the in-flight budget.
    limits.max_message_bytes = reader.max_message();
    let incoming =
        futures_util::stream::unfold(
            reader,
            |mut r| async move { r.next().await.map(|m| (m, r)) },
        );
    let session = TrainerSession::new(
        Connection {
            remote: req.peer_addr().map(|a| a.to_string()),
            outbox: outbox.clone(),
            activity,
            hot: st.hot.clone(),
            handshake: slot,
            blobs: st.blobs.clone(),
            tokens: st.tokens.clone(),
        },
        st.hub.clone(),
        st.metrics.clone(),
        limits,
    );
    TrainerSession::create(|ctx| {
        ctx.add_stream(incoming);
        session
    });
    Ok(res.streaming(OutboxBody::new(outbox)))
}

/// WebSocket feed of hub events, one JSON object per message.
#[utoipa::path(
    tag = "events",
    params(UpgradeHeaders),
    responses(
        (status = 101, description = "Switching to the event feed"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 403, description = "A browser page of another origin (`forbidden_origin`)", body = ErrorBody),
    )
)]
#[get("/v1/events")]
pub async fn events_ws(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let cfg = st.hub_config()?;
    check_origin(&req, &cfg.allowed_origins)?;
    ws::handshake(&req).map_err(not_an_upgrade)?;
    ws::WsResponseBuilder::new(EventsSession::new(st.metrics.clone()), &req, stream)
        // The feed reads nothing but control frames from the browser.
        .frame_size(4096)
        .start()
        .map_err(not_an_upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: Option<&str>, host: &str) -> HttpRequest {
        let mut r = actix_web::test::TestRequest::default().insert_header(("host", host));
        if let Some(o) = origin {
            r = r.insert_header(("origin", o));
        }
        r.to_http_request()
    }

    #[test]
    fn browser_pages_of_other_origins_are_refused() {
        let none: Vec<String> = Vec::new();
        // No Origin: not a browser.
        assert!(check_origin(&req(None, "127.0.0.1:5001"), &none).is_ok());
        // The dashboard served by the hub itself.
        assert!(check_origin(&req(Some("http://127.0.0.1:5001"), "127.0.0.1:5001"), &none).is_ok());
        assert!(check_origin(&req(Some("http://localhost:5001"), "localhost:5001"), &none).is_ok());
        assert!(check_origin(&req(Some("http://[::1]:5001"), "[::1]:5001"), &none).is_ok());
        // Another site, and another port of the same host.
        for (o, h) in [
            ("https://evil.example", "127.0.0.1:5001"),
            ("http://127.0.0.1:8080", "127.0.0.1:5001"),
            ("null", "127.0.0.1:5001"),
            // DNS rebinding: the page's own name pointed at the hub.
            ("http://evil.example:5001", "evil.example:5001"),
        ] {
            let e = check_origin(&req(Some(o), h), &none).unwrap_err();
            assert_eq!(e.code, ErrorCode::ForbiddenOrigin, "{o}");
        }
        // A name the team uses, listed.
        let allowed = vec!["https://hub.corp.example".to_string()];
        assert!(check_origin(
            &req(Some("https://HUB.corp.example:443"), "hub.corp.example"),
            &allowed
        )
        .is_ok());
    }
}
