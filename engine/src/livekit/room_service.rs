//! LiveKit's RoomService (Twirp, JSON) for what signalling cannot do: changing another
//! participant's metadata, which is how a layout page learns its new layout, and whether a
//! room exists before joining it (a join would create it).

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::config::LiveKitConfig;

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `http(s)://host/prefix` for a `[livekit] url` given as ws://, wss://, http:// or https://.
pub fn http_base(url: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| anyhow!("`{url}` has no scheme"))?;
    let scheme = match scheme {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => bail!("`{url}`: scheme `{other}` is not ws, wss, http or https"),
    };
    Ok(format!("{scheme}://{}", rest.trim_end_matches('/')))
}

/// RoomService.UpdateParticipant: sets `identity`'s metadata in `room`.
pub async fn update_metadata(config: &LiveKitConfig, room: &str, identity: &str, metadata: &str) -> Result<()> {
    let body = json!({ "room": room, "identity": identity, "metadata": metadata });
    call(config, room, "UpdateParticipant", body).await.map(|_| ())
}

/// RoomService.RemoveParticipant: takes `identity` out of `room` now.
pub async fn remove_participant(config: &LiveKitConfig, room: &str, identity: &str) -> Result<()> {
    call(config, room, "RemoveParticipant", json!({ "room": room, "identity": identity })).await.map(|_| ())
}

/// RoomService.ListRooms for one name: the room's sid, or None when it does not exist.
pub async fn room_sid(config: &LiveKitConfig, room: &str) -> Result<Option<String>> {
    let answer = call(config, room, "ListRooms", json!({ "names": [room] })).await?;
    let rooms = answer["rooms"].as_array().cloned().unwrap_or_default();
    Ok(rooms.iter().find(|r| r["name"] == room).map(|r| r["sid"].as_str().unwrap_or_default().to_string()))
}

async fn call(config: &LiveKitConfig, room: &str, method: &str, body: Value) -> Result<Value> {
    let url = format!("{}/twirp/livekit.RoomService/{method}", http_base(&config.url)?);
    let grant = json!({ "room": room, "roomAdmin": true, "roomList": true });
    let token = super::token(&config.api_key, &config.api_secret, "egret", grant);
    let request = hyper::Request::post(&url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = tokio::time::timeout(TIMEOUT, crate::http_client::client().request(request))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {}s", TIMEOUT.as_secs()))?
        .with_context(|| url.clone())?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = answer["msg"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into());
        bail!("{method}: HTTP {status}: {msg}");
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_base_maps_websocket_schemes() {
        assert_eq!(http_base("ws://127.0.0.1:7880").unwrap(), "http://127.0.0.1:7880");
        assert_eq!(http_base("wss://lk.example.org/").unwrap(), "https://lk.example.org");
        assert!(http_base("ftp://x").is_err());
    }
}
