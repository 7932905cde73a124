//! One joined room: the signalling task (offers, candidates, participant updates) and the
//! room's state, turned into events for the recipe (`participant_joined`, `track_published`...).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use gstreamer as gst;
use livekit_protocol as proto;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::signal::{self, SignalEvent, SignalSender};
use super::subscriber::Subscriber;
use super::{participant_json, recorder_token, track_json};
use crate::config::LiveKitConfig;

type Participants = HashMap<String, proto::ParticipantInfo>;

/// What the room tells whoever joined it (the egress): events for its recipe, and the ends.
#[derive(Debug)]
pub enum RoomEvent {
    /// `participant_joined`, `track_published`, `disconnected`... with its data.
    Event { name: &'static str, data: Value },
    /// The room was deleted or closed: a clean end.
    Ended { reason: String },
    /// The connection is lost or unusable: the recording cannot go on.
    Lost { reason: String },
}

/// Called from the room's signalling task with each event.
pub type RoomEvents = Arc<dyn Fn(RoomEvent) + Send + Sync>;

pub struct Room {
    pub name: String,
    pub sid: String,
    signal: SignalSender,
    subscriber: Arc<Subscriber>,
    participants: Arc<Mutex<Participants>>,
    /// Woken on every participant update.
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    left: std::sync::atomic::AtomicBool,
}

impl Room {
    /// Joins `name` as the hidden recorder `identity`; the webrtcbin goes into `pipeline`.
    pub async fn join(
        config: &LiveKitConfig,
        name: &str,
        identity: &str,
        pipeline: &gst::Pipeline,
        events_to: RoomEvents,
    ) -> Result<Room> {
        let token = recorder_token(&config.api_key, &config.api_secret, name, identity);
        let (join, signal, events) = signal::connect(&config.url, &token).await?;
        let candidate_signal = signal.clone();
        let subscriber = Arc::new(Subscriber::new(pipeline, move |mline, mid, candidate| {
            let init = json!({ "candidate": candidate, "sdpMLineIndex": mline, "sdpMid": mid });
            candidate_signal.send(proto::signal_request::Message::Trickle(proto::TrickleRequest {
                candidate_init: init.to_string(),
                target: proto::SignalTarget::Subscriber as i32,
                r#final: false,
            }));
        })?);
        let participants: Participants = join
            .other_participants
            .into_iter()
            .filter(|p| p.state != proto::participant_info::State::Disconnected as i32)
            .map(|p| (p.sid.clone(), p))
            .collect();
        let participants = Arc::new(Mutex::new(participants));
        let changed = Arc::new(tokio::sync::Notify::new());
        let room = join.room.unwrap_or_default();
        let state = RoomState { participants: participants.clone(), changed: changed.clone() };
        let task = tokio::spawn(run(events, signal.clone(), subscriber.clone(), state, events_to, room.name.clone()));
        Ok(Room {
            name: room.name,
            sid: room.sid,
            signal,
            subscriber,
            participants,
            changed,
            task,
            left: Default::default(),
        })
    }

    /// The track and its participant, if the track is published now.
    pub fn find_track(&self, sid: &str) -> Option<(proto::TrackInfo, proto::ParticipantInfo)> {
        let participants = self.participants.lock().unwrap();
        participants.values().find_map(|p| p.tracks.iter().find(|t| t.sid == sid).map(|t| (t.clone(), p.clone())))
    }

    /// The track once it is published, waiting up to `timeout` for it: a publisher's track
    /// reaches the others only when its first packets do.
    pub async fn wait_track(
        &self,
        sid: &str,
        timeout: std::time::Duration,
    ) -> Option<(proto::TrackInfo, proto::ParticipantInfo)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if let Some(found) = self.find_track(sid) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Waits until a participant with `identity` is in the room.
    pub async fn wait_participant(
        &self,
        identity: &str,
        timeout: std::time::Duration,
    ) -> Option<proto::ParticipantInfo> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let found = self.participants.lock().unwrap().values().find(|p| p.identity == identity).cloned();
            if found.is_some() {
                return found;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    pub fn tracks_json(&self) -> Vec<Value> {
        let participants = self.participants.lock().unwrap();
        let mut tracks: Vec<Value> =
            participants.values().flat_map(|p| p.tracks.iter().map(move |t| track_json(t, p))).collect();
        tracks.sort_by(|a, b| a["sid"].as_str().cmp(&b["sid"].as_str()));
        tracks
    }

    pub fn participants_json(&self) -> Vec<Value> {
        let participants = self.participants.lock().unwrap();
        let mut list: Vec<Value> = participants.values().map(participant_json).collect();
        list.sort_by(|a, b| a["identity"].as_str().cmp(&b["identity"].as_str()));
        list
    }

    /// Asks the server for the track (best quality for video) and routes its RTP to `sink`.
    pub fn subscribe(&self, track: &proto::TrackInfo, participant_sid: &str, sink: gst::Pad) {
        self.subscriber.route(&track.sid, &super::codec_of(&track.mime_type), sink);
        self.signal.send(proto::signal_request::Message::Subscription(proto::UpdateSubscription {
            track_sids: vec![track.sid.clone()],
            subscribe: true,
            participant_tracks: vec![proto::ParticipantTracks {
                participant_sid: participant_sid.to_string(),
                track_sids: vec![track.sid.clone()],
            }],
        }));
        if track.r#type == proto::TrackType::Video as i32 {
            self.signal.send(proto::signal_request::Message::TrackSetting(proto::UpdateTrackSettings {
                track_sids: vec![track.sid.clone()],
                disabled: false,
                quality: proto::VideoQuality::High as i32,
                width: track.width,
                height: track.height,
                ..Default::default()
            }));
        }
    }

    /// Ends every track this room feeds (see `Subscriber::end`).
    pub fn end_tracks(&self) {
        self.subscriber.end();
    }

    pub fn unsubscribe(&self, sid: &str) {
        self.subscriber.unroute(sid);
        self.signal.send(proto::signal_request::Message::Subscription(proto::UpdateSubscription {
            track_sids: vec![sid.to_string()],
            subscribe: false,
            participant_tracks: vec![],
        }));
    }
}

impl Room {
    /// Leaves cleanly (once): the server sees a client-initiated leave, not a lost connection.
    pub fn leave(&self) {
        if self.left.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.task.abort();
        self.signal.send(proto::signal_request::Message::Leave(proto::LeaveRequest {
            can_reconnect: false,
            reason: proto::DisconnectReason::ClientInitiated as i32,
            action: proto::leave_request::Action::Disconnect as i32,
            regions: None,
        }));
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.leave();
    }
}

fn room_event(events: &RoomEvents, name: &'static str, data: Value) {
    events(RoomEvent::Event { name, data });
}

struct RoomState {
    participants: Arc<Mutex<Participants>>,
    changed: Arc<tokio::sync::Notify>,
}

async fn run(
    mut events: UnboundedReceiver<SignalEvent>,
    signal: SignalSender,
    subscriber: Arc<Subscriber>,
    state: RoomState,
    commands: RoomEvents,
    room: String,
) {
    use proto::signal_response::Message as M;
    // Candidates that come before the first offer wait for it.
    let mut early_candidates: Option<Vec<(u32, String)>> = Some(Vec::new());
    while let Some(event) = events.recv().await {
        let message = match event {
            SignalEvent::Message(m) => *m,
            SignalEvent::Closed(reason) => {
                room_event(&commands, "disconnected", json!({ "reason": reason }));
                commands(RoomEvent::Lost { reason: format!("lost the LiveKit room `{room}`: {reason}") });
                return;
            }
        };
        match message {
            M::Offer(offer) => match subscriber.answer(&offer.sdp, &offer.mid_to_track_id).await {
                Ok(sdp) => {
                    signal.send(proto::signal_request::Message::Answer(proto::SessionDescription {
                        r#type: "answer".into(),
                        sdp,
                        id: offer.id,
                        mid_to_track_id: HashMap::new(),
                    }));
                    for (mline, candidate) in early_candidates.take().unwrap_or_default() {
                        subscriber.add_candidate(mline, &candidate);
                    }
                }
                Err(e) => {
                    commands(RoomEvent::Lost { reason: format!("cannot answer LiveKit's offer: {e:#}") });
                    return;
                }
            },
            M::Trickle(trickle) if trickle.target == proto::SignalTarget::Subscriber as i32 => {
                let Ok(init) = serde_json::from_str::<Value>(&trickle.candidate_init) else { continue };
                let mline = init["sdpMLineIndex"].as_u64().unwrap_or(0) as u32;
                let candidate = init["candidate"].as_str().unwrap_or_default().to_string();
                match early_candidates.as_mut() {
                    Some(waiting) => waiting.push((mline, candidate)),
                    None => subscriber.add_candidate(mline, &candidate),
                }
            }
            M::Update(update) => {
                let mut known = state.participants.lock().unwrap();
                for info in update.participants {
                    for (event, data) in apply_update(&mut known, info) {
                        room_event(&commands, event, data);
                    }
                }
                state.changed.notify_waiters();
            }
            M::Leave(leave) => {
                let reason = proto::DisconnectReason::try_from(leave.reason)
                    .unwrap_or(proto::DisconnectReason::UnknownReason)
                    .as_str_name()
                    .to_ascii_lowercase();
                let ended = [proto::DisconnectReason::RoomDeleted as i32, proto::DisconnectReason::RoomClosed as i32]
                    .contains(&leave.reason);
                if ended {
                    room_event(&commands, "room_ended", json!({ "reason": reason }));
                    commands(RoomEvent::Ended { reason: format!("room ended ({reason})") });
                } else {
                    room_event(&commands, "disconnected", json!({ "reason": reason }));
                    commands(RoomEvent::Lost { reason: format!("LiveKit removed egret from `{room}`: {reason}") });
                }
                return;
            }
            _ => {}
        }
    }
}

/// Folds one participant update into the room state; returns the events it means, in order:
/// joins before their tracks, unpublished tracks before the leave.
fn apply_update(known: &mut Participants, info: proto::ParticipantInfo) -> Vec<(&'static str, Value)> {
    let mut events = Vec::new();
    let old = known.get(&info.sid).cloned();
    if let Some(old) = &old
        && info.version != 0
        && info.version < old.version
    {
        return events; // an older update overtaken by a newer one
    }
    if info.state == proto::participant_info::State::Disconnected as i32 {
        if let Some(old) = known.remove(&info.sid) {
            events.extend(old.tracks.iter().map(|t| ("track_unpublished", track_json(t, &old))));
            events.push(("participant_left", participant_json(&old)));
        }
        return events;
    }
    if info.permission.as_ref().is_some_and(|p| p.hidden) {
        return events; // other recorders
    }
    match &old {
        None => {
            events.push(("participant_joined", participant_json(&info)));
            events.extend(info.tracks.iter().map(|t| ("track_published", track_json(t, &info))));
        }
        Some(old) => {
            for track in &info.tracks {
                match old.tracks.iter().find(|t| t.sid == track.sid) {
                    None => events.push(("track_published", track_json(track, &info))),
                    Some(before) if before.muted != track.muted => {
                        let event = if track.muted { "track_muted" } else { "track_unmuted" };
                        events.push((event, track_json(track, &info)));
                    }
                    Some(_) => {}
                }
            }
            for gone in old.tracks.iter().filter(|t| !info.tracks.iter().any(|n| n.sid == t.sid)) {
                events.push(("track_unpublished", track_json(gone, old)));
            }
        }
    }
    known.insert(info.sid.clone(), info);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(sid: &str, version: u32, tracks: &[(&str, bool)]) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            identity: format!("id-{sid}"),
            state: proto::participant_info::State::Active as i32,
            version,
            tracks: tracks
                .iter()
                .map(|(t, muted)| proto::TrackInfo { sid: t.to_string(), muted: *muted, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn names(events: &[(&'static str, Value)]) -> Vec<String> {
        events.iter().map(|(e, d)| format!("{e}:{}", d["sid"].as_str().unwrap_or(""))).collect()
    }

    #[test]
    fn updates_become_ordered_events() {
        let mut known = Participants::new();
        let e = apply_update(&mut known, participant("PA", 1, &[("TR_v", false)]));
        assert_eq!(names(&e), ["participant_joined:PA", "track_published:TR_v"]);
        let e = apply_update(&mut known, participant("PA", 2, &[("TR_v", true), ("TR_a", false)]));
        assert_eq!(names(&e), ["track_muted:TR_v", "track_published:TR_a"]);
        // An overtaken update changes nothing.
        assert!(apply_update(&mut known, participant("PA", 1, &[])).is_empty());
        let e = apply_update(&mut known, participant("PA", 3, &[("TR_a", false)]));
        assert_eq!(names(&e), ["track_unpublished:TR_v"]);
        let mut gone = participant("PA", 4, &[]);
        gone.state = proto::participant_info::State::Disconnected as i32;
        let e = apply_update(&mut known, gone);
        assert_eq!(names(&e), ["track_unpublished:TR_a", "participant_left:PA"]);
        assert!(known.is_empty());
    }
}
