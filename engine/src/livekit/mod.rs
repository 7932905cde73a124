//! LiveKit rooms: egret joins as a hidden recorder over LiveKit's signalling protocol
//! (`livekit-protocol` messages on a websocket) and receives encoded RTP in a GStreamer
//! `webrtcbin`, so tracks can be copied without transcoding.

mod handover;
pub mod room;
pub mod room_service;
mod rtcp;
pub mod signal;
mod speakers;
mod subscriber;
mod timeline;

pub use handover::DISCARD;
pub use subscriber::is_data_channel_error;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use livekit_protocol as proto;
use serde_json::{Value, json};

/// Makes the process's DTLS certificate now, in the background. webrtcbin's DTLS elements
/// share one certificate per process, made with the first connection (an RSA key): the
/// first room egress after a start waited ~100 ms more for its first answer than the next.
pub fn prepare_dtls_certificate() {
    std::thread::spawn(|| {
        let started = std::time::Instant::now();
        if crate::media::make("dtlsdec", None).is_ok() {
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "DTLS certificate ready");
        }
    });
}

/// A join token for the recorder: hidden from other participants, subscribe-only.
pub fn recorder_token(api_key: &str, api_secret: &str, room: &str, identity: &str) -> String {
    let grant = json!({
        "room": room,
        "roomJoin": true,
        "hidden": true,
        "recorder": true,
        "canPublish": false,
        "canPublishData": false,
        "canSubscribe": true,
    });
    token(api_key, api_secret, identity, grant)
}

/// A LiveKit access token (HS256, 6 hours) with `video` grants.
pub fn token(api_key: &str, api_secret: &str, identity: &str, video: Value) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = json!({
        "iss": api_key,
        "sub": identity,
        "nbf": now.saturating_sub(10),
        "exp": now + 6 * 3600,
        "video": video,
    });
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(api_secret.as_bytes()))
        .expect("HS256 signing cannot fail")
}

/// The codec of a track, from its MIME type: `h264`, `vp8`, `opus`... RED audio is Opus
/// with redundancy, and the server sends plain Opus to a subscriber that asks for it.
pub fn codec_of(mime_type: &str) -> String {
    let codec = mime_type.rsplit('/').next().unwrap_or(mime_type).to_ascii_lowercase();
    if codec == "red" { "opus".into() } else { codec }
}

pub fn kind_of(track: &proto::TrackInfo) -> &'static str {
    if track.r#type == proto::TrackType::Video as i32 { "video" } else { "audio" }
}

pub fn source_of(track: &proto::TrackInfo) -> &'static str {
    match proto::TrackSource::try_from(track.source).unwrap_or(proto::TrackSource::Unknown) {
        proto::TrackSource::Camera => "camera",
        proto::TrackSource::Microphone => "microphone",
        proto::TrackSource::ScreenShare => "screen_share",
        proto::TrackSource::ScreenShareAudio => "screen_share_audio",
        proto::TrackSource::Unknown => "unknown",
    }
}

/// What Lua sees of a track (`t.sid`, `t.kind`, `t.source`, `t.participant`...).
pub fn track_json(track: &proto::TrackInfo, participant: &proto::ParticipantInfo) -> Value {
    json!({
        "sid": track.sid,
        "name": track.name,
        "kind": kind_of(track),
        "source": source_of(track),
        "codec": codec_of(&track.mime_type),
        "mime_type": track.mime_type,
        "muted": track.muted,
        "width": track.width,
        "height": track.height,
        "participant": participant.identity,
        "participant_sid": participant.sid,
        "participant_kind": participant_kind(participant),
        "participant_attributes": participant.attributes,
    })
}

/// What Lua sees of a participant.
pub fn participant_json(p: &proto::ParticipantInfo) -> Value {
    json!({
        "sid": p.sid,
        "identity": p.identity,
        "name": p.name,
        "metadata": p.metadata,
        "kind": participant_kind(p),
        "attributes": p.attributes,
        "joined_at_ms": if p.joined_at_ms > 0 { p.joined_at_ms } else { p.joined_at * 1000 },
    })
}

/// LiveKit's participant kind in lower case: "standard", "agent", "sip", "ingress", "egress"...
pub fn participant_kind(p: &proto::ParticipantInfo) -> String {
    proto::participant_info::Kind::try_from(p.kind)
        .map(|k| k.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| "standard".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_token_carries_a_hidden_subscribe_only_grant() {
        let token = recorder_token("key", "secret-secret-secret-secret-0123", "lobby", "EG_1");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret-secret-secret-secret-0123"),
            &validation,
        )
        .unwrap();
        let video = &data.claims["video"];
        assert_eq!(data.claims["sub"], "EG_1");
        assert_eq!(video["room"], "lobby");
        assert_eq!(video["hidden"], true);
        assert_eq!(video["canPublish"], false);
        assert_eq!(codec_of("video/H264"), "h264");
        assert_eq!(codec_of("audio/red"), "opus");
    }
}
