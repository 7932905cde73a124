//! LiveKit's signalling connection: protobuf `SignalRequest`/`SignalResponse` over a websocket
//! (the two-peer-connection `/rtc` path), with the pings the server expects.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;

/// The signalling protocol version we speak: late enough for `LeaveRequest.action` and
/// `mid_to_track_id` in offers.
const PROTOCOL_VERSION: u32 = 16;
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What comes out of the connection: server messages, then one `Closed` when it ends.
#[derive(Debug)]
pub enum SignalEvent {
    Message(Box<proto::signal_response::Message>),
    Closed(String),
}

/// Sends requests to the server; dropping every clone closes the websocket.
#[derive(Clone)]
pub struct SignalSender(UnboundedSender<proto::signal_request::Message>);

impl SignalSender {
    pub fn send(&self, message: proto::signal_request::Message) {
        let _ = self.0.send(message);
    }
}

/// `ws(s)://host[/prefix]/rtc?...` from the configured server URL (http(s) accepted too).
pub fn rtc_url(server: &str, token: &str) -> Result<String> {
    let (scheme, rest) = server.split_once("://").ok_or_else(|| anyhow!("`{server}` has no scheme"))?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => bail!("`{server}`: scheme `{other}` is not ws, wss, http or https"),
    };
    Ok(format!(
        "{scheme}://{}/rtc?access_token={token}&protocol={PROTOCOL_VERSION}&sdk=rust&version=egret-{}&auto_subscribe=0&adaptive_stream=0",
        rest.trim_end_matches('/'),
        env!("CARGO_PKG_VERSION"),
    ))
}

/// Connects and waits for the server's `JoinResponse`.
pub async fn connect(
    server: &str,
    token: &str,
) -> Result<(proto::JoinResponse, SignalSender, UnboundedReceiver<SignalEvent>)> {
    let url = rtc_url(server, token)?;
    let (ws, _) = tokio::time::timeout(JOIN_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .map_err(|_| anyhow!("LiveKit server at {server} did not answer within {}s", JOIN_TIMEOUT.as_secs()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
                anyhow!("LiveKit server refused to join: HTTP {} {}", response.status(), body.trim())
            }
            other => anyhow!("cannot reach LiveKit server at {server}: {other}"),
        })?;
    let (mut write, mut read) = ws.split();

    let join = tokio::time::timeout(JOIN_TIMEOUT, async {
        while let Some(message) = read.next().await {
            if let Some(proto::signal_response::Message::Join(join)) = decode(message?)? {
                return Ok(join);
            }
        }
        Err(anyhow!("LiveKit server closed the connection before the join response"))
    })
    .await
    .map_err(|_| anyhow!("no join response from LiveKit within {}s", JOIN_TIMEOUT.as_secs()))??;

    let (request_tx, mut request_rx) = unbounded_channel::<proto::signal_request::Message>();
    let (event_tx, event_rx) = unbounded_channel();
    let ping_every = Duration::from_secs(join.ping_interval.max(1) as u64);
    let ping_timeout = Duration::from_secs(join.ping_timeout.max(2) as u64);
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        let mut last_heard = tokio::time::Instant::now();
        let reason = loop {
            tokio::select! {
                request = request_rx.recv() => {
                    let Some(request) = request else {
                        let _ = write.close().await;
                        break "closed by egret".to_string();
                    };
                    let bytes = proto::SignalRequest { message: Some(request) }.encode_to_vec();
                    if let Err(e) = write.send(Message::Binary(bytes.into())).await {
                        break format!("signalling write failed: {e}");
                    }
                }
                incoming = read.next() => match incoming {
                    Some(Ok(Message::Close(_))) | None => break "LiveKit server closed the signalling connection".to_string(),
                    Some(Ok(message)) => {
                        last_heard = tokio::time::Instant::now();
                        match decode(message) {
                            Ok(Some(m)) => {
                                if !matches!(m, proto::signal_response::Message::PongResp(_)) {
                                    let _ = event_tx.send(SignalEvent::Message(Box::new(m)));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!("undecodable LiveKit signal: {e:#}"),
                        }
                    }
                    Some(Err(e)) => break format!("signalling connection lost: {e}"),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_timeout {
                        break format!("no answer from LiveKit for {}s", ping_timeout.as_secs());
                    }
                    let now = chrono::Utc::now().timestamp_millis();
                    let ping = proto::signal_request::Message::PingReq(proto::Ping { timestamp: now, rtt: 0 });
                    let bytes = proto::SignalRequest { message: Some(ping) }.encode_to_vec();
                    if let Err(e) = write.send(Message::Binary(bytes.into())).await {
                        break format!("signalling write failed: {e}");
                    }
                }
            }
        };
        let _ = event_tx.send(SignalEvent::Closed(reason));
    });
    Ok((join, SignalSender(request_tx), event_rx))
}

fn decode(message: Message) -> Result<Option<proto::signal_response::Message>> {
    match message {
        Message::Binary(bytes) => {
            let response = proto::SignalResponse::decode(bytes.as_ref()).context("decoding SignalResponse")?;
            Ok(response.message)
        }
        Message::Close(frame) => {
            Err(anyhow!("server closed: {}", frame.map(|f| f.reason.to_string()).unwrap_or_default()))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::rtc_url;

    #[test]
    fn rtc_url_maps_schemes_and_keeps_prefixes() {
        let url = rtc_url("https://lk.example.org/base/", "T").unwrap();
        assert!(url.starts_with("wss://lk.example.org/base/rtc?access_token=T&protocol="), "{url}");
        assert!(url.contains("auto_subscribe=0"));
        assert!(rtc_url("ws://127.0.0.1:7880", "T").unwrap().starts_with("ws://127.0.0.1:7880/rtc?"));
        assert!(rtc_url("ftp://x", "T").is_err());
        assert!(rtc_url("127.0.0.1:7880", "T").is_err());
    }
}
