//! Rejoining a room whose connection was lost (or cannot take a track as it now comes): the
//! attempts with their backoff, and the new connection taking the old one's place.

use std::time::Duration;

use livekit_protocol as proto;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Link, Participants, Session, apply_update, present, request_track, room_event};
use crate::livekit::signal::SignalEvent;

/// The time a rejoin attempt is given at least: the backoff's last wait is cut short for it.
const LAST_ATTEMPT: Duration = Duration::from_secs(1);

impl Session {
    /// Joins again after `reason`, retrying with LiveKit's SDK backoff (n² × 300 ms, here at most
    /// 5 s apart) for `[livekit] reconnect_timeout`; an attempt gets what is left of that time at
    /// most. The new connection takes over the routed tracks; the egress and its recipe hear
    /// `reconnecting`, then `reconnected` (both with `cause`: "lost", or "codec" for a track
    /// that came back in another codec), then whatever changed in the room meanwhile. When it
    /// gives up: what it tried, for the egress's error.
    pub(super) async fn rejoin(&self, reason: &str, cause: &str) -> Result<UnboundedReceiver<SignalEvent>, String> {
        let window = self.joiner.config.reconnect_timeout;
        if window.is_zero() {
            return Err(reason.to_string());
        }
        tracing::warn!(room = %self.room, %reason, cause, "rejoining the LiveKit room");
        room_event(&self.events_to, "reconnecting", json!({ "reason": reason, "cause": cause }));
        let began = tokio::time::Instant::now();
        let deadline = began + window;
        let mut last_error = String::new();
        let mut attempts = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining < LAST_ATTEMPT {
                break;
            }
            let delay = Duration::from_millis(300 * u64::from(attempts * attempts)).min(Duration::from_secs(5));
            tokio::time::sleep(delay.min(remaining - LAST_ATTEMPT)).await;
            attempts += 1;
            // Cancelling it is safe: until it answers, a connection is only its websocket.
            let (join, link, events) = match tokio::time::timeout_at(deadline, self.joiner.connect()).await {
                Ok(Ok(joined)) => joined,
                Ok(Err(e)) => {
                    tracing::info!(room = %self.room, attempt = attempts, "rejoin failed: {e:#}");
                    last_error = format!("{e:#}");
                    continue;
                }
                Err(_) => {
                    last_error = "LiveKit did not answer before the reconnect timeout".into();
                    break;
                }
            };
            self.take_over(join, link);
            let seconds = began.elapsed().as_secs_f64();
            tracing::info!(room = %self.room, attempt = attempts, seconds, "rejoined the LiveKit room");
            room_event(
                &self.events_to,
                "reconnected",
                json!({ "attempts": attempts, "seconds": seconds, "cause": cause }),
            );
            return Ok(events);
        }
        let tried = match attempts {
            0 => "no time left to try".to_string(),
            1 => format!("1 attempt, {last_error}"),
            n => format!("{n} attempts, the last: {last_error}"),
        };
        Err(format!("{reason}; could not rejoin within {} s ({tried})", window.as_secs_f64()))
    }

    /// Puts a new connection in place of the old: the tracks move over as the new one
    /// delivers them, the room's state is brought up to date, routed tracks are asked for again.
    fn take_over(&self, join: proto::JoinResponse, link: Link) {
        let old = {
            let mut current = self.link.lock().unwrap();
            link.subscriber.adopt(&current.subscriber);
            std::mem::replace(&mut *current, link)
        };
        let (signal, subscriber) = {
            let link = self.link.lock().unwrap();
            (link.signal.clone(), link.subscriber.clone())
        };
        let pipeline = self.joiner.pipeline.clone();
        let successor = subscriber.clone();
        let (config, room) = (self.joiner.config.clone(), self.room.clone());
        tokio::spawn(async move {
            // The old connection goes once the new one carries every track (or gave up
            // trying): its webrtcbin, and its participant, which the server would otherwise
            // keep until its transport times out.
            successor.carrying_all(Duration::from_secs(10)).await;
            let retired = old.subscriber.clone();
            let _ = tokio::task::spawn_blocking(move || retired.retire(&pipeline)).await;
            if let Err(e) = crate::livekit::room_service::remove_participant(&config, &room, &old.identity).await {
                tracing::debug!(%room, identity = %old.identity, "old connection not removed: {e:#}");
            }
        });
        let mut known = self.state.participants.lock().unwrap();
        let current: Participants = present(join.other_participants).map(|p| (p.sid.clone(), p)).collect();
        let mut changes = Vec::new();
        let gone: Vec<proto::ParticipantInfo> =
            known.values().filter(|p| !current.contains_key(&p.sid)).cloned().collect();
        for mut left in gone {
            left.state = proto::participant_info::State::Disconnected as i32;
            changes.extend(apply_update(&mut known, left));
        }
        for info in current.into_values() {
            changes.extend(apply_update(&mut known, info));
        }
        for routed in subscriber.routed() {
            let found = known.values().find_map(|p| p.tracks.iter().find(|t| t.sid == routed).map(|t| (t, &p.sid)));
            if let Some((track, participant_sid)) = found {
                request_track(&signal, track, participant_sid);
            }
        }
        drop(known);
        for (event, data) in changes {
            room_event(&self.events_to, event, data);
        }
        self.state.changed.notify_waiters();
    }
}
