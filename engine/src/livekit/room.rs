//! One joined room: the signalling task (offers, candidates, participant updates) and the
//! room's state, turned into events for the recipe (`participant_joined`, `track_published`...).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use gstreamer as gst;
use livekit_protocol as proto;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::signal::{self, SignalEvent, SignalSender};
use super::subscriber::Subscriber;
use super::timeline::Timeline;
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
    link: Arc<Mutex<Link>>,
    participants: Arc<Mutex<Participants>>,
    /// Woken on every participant update.
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    left: std::sync::atomic::AtomicBool,
}

/// One connection to the room: its signalling and the webrtcbin it negotiates. A rejoin
/// replaces both; the consumers of the tracks stay.
struct Link {
    signal: SignalSender,
    subscriber: Arc<Subscriber>,
    /// The identity this connection joined as.
    identity: String,
}

/// What it takes to (re)join: a fresh token each time, so a rejoin hours later still works.
struct Joiner {
    config: LiveKitConfig,
    name: String,
    identity: String,
    pipeline: gst::Pipeline,
    /// Kept across rejoins: tracks line up the same way on the new connection.
    timeline: Arc<Timeline>,
    /// Connections made so far.
    joins: std::sync::atomic::AtomicU32,
}

impl Joiner {
    async fn connect(&self) -> Result<(proto::JoinResponse, Link, UnboundedReceiver<SignalEvent>)> {
        // A rejoin comes as a new (hidden) participant: joining as the old one would make the
        // server drop it, and its media with it, before the new connection delivers any.
        let identity = match self.joins.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => self.identity.clone(),
            n => format!("{}-{n}", self.identity),
        };
        let token = recorder_token(&self.config.api_key, &self.config.api_secret, &self.name, &identity);
        let (join, signal, events) = signal::connect(&self.config.url, &token).await?;
        let candidate_signal = signal.clone();
        let subscriber =
            Arc::new(Subscriber::new(&self.pipeline, self.timeline.clone(), move |mline, mid, candidate| {
                let init = json!({ "candidate": candidate, "sdpMLineIndex": mline, "sdpMid": mid });
                candidate_signal.send(proto::signal_request::Message::Trickle(proto::TrickleRequest {
                    candidate_init: init.to_string(),
                    target: proto::SignalTarget::Subscriber as i32,
                    r#final: false,
                }));
            })?);
        Ok((join, Link { signal, subscriber, identity }, events))
    }
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
        let joiner = Joiner {
            config: config.clone(),
            name: name.into(),
            identity: identity.into(),
            pipeline: pipeline.clone(),
            timeline: Arc::default(),
            joins: Default::default(),
        };
        let (join, link, events) = joiner.connect().await?;
        let participants: Participants = present(join.other_participants).map(|p| (p.sid.clone(), p)).collect();
        let participants = Arc::new(Mutex::new(participants));
        let changed = Arc::new(tokio::sync::Notify::new());
        let room = join.room.unwrap_or_default();
        let state = RoomState {
            participants: participants.clone(),
            changed: changed.clone(),
            speakers: Default::default(),
            own_metadata: Default::default(),
        };
        let link = Arc::new(Mutex::new(link));
        let session = Session { link: link.clone(), joiner, state, events_to, room: room.name.clone() };
        let task = tokio::spawn(session.run(events));
        Ok(Room { name: room.name, sid: room.sid, link, participants, changed, task, left: Default::default() })
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
        let link = self.link.lock().unwrap();
        link.subscriber.route(&track.sid, &super::codec_of(&track.mime_type), sink);
        request_track(&link.signal, track, participant_sid);
    }

    /// Ends every track this room feeds (see `Subscriber::end`).
    pub fn end_tracks(&self) {
        self.link.lock().unwrap().subscriber.end();
    }

    pub fn unsubscribe(&self, sid: &str) {
        let link = self.link.lock().unwrap();
        link.subscriber.unroute(sid);
        link.signal.send(proto::signal_request::Message::Subscription(proto::UpdateSubscription {
            track_sids: vec![sid.to_string()],
            subscribe: false,
            participant_tracks: vec![],
        }));
    }
}

/// Asks the server for `track`, at its best quality for video.
fn request_track(signal: &SignalSender, track: &proto::TrackInfo, participant_sid: &str) {
    signal.send(proto::signal_request::Message::Subscription(proto::UpdateSubscription {
        track_sids: vec![track.sid.clone()],
        subscribe: true,
        participant_tracks: vec![proto::ParticipantTracks {
            participant_sid: participant_sid.to_string(),
            track_sids: vec![track.sid.clone()],
        }],
    }));
    if track.r#type == proto::TrackType::Video as i32 {
        signal.send(proto::signal_request::Message::TrackSetting(proto::UpdateTrackSettings {
            track_sids: vec![track.sid.clone()],
            disabled: false,
            quality: proto::VideoQuality::High as i32,
            width: track.width,
            height: track.height,
            ..Default::default()
        }));
    }
}

/// The participants of a join response still in the room.
fn present(participants: Vec<proto::ParticipantInfo>) -> impl Iterator<Item = proto::ParticipantInfo> {
    participants.into_iter().filter(|p| p.state != proto::participant_info::State::Disconnected as i32)
}

impl Room {
    /// Leaves cleanly (once): the server sees a client-initiated leave, not a lost connection.
    pub fn leave(&self) {
        if self.left.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.task.abort();
        self.link.lock().unwrap().signal.send(proto::signal_request::Message::Leave(proto::LeaveRequest {
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
    speakers: Mutex<super::speakers::Speakers>,
    /// egret's own participant's metadata, as last told.
    own_metadata: Mutex<String>,
}

/// The room's signalling task: answers offers, follows participants, and rejoins when the
/// connection is lost.
struct Session {
    link: Arc<Mutex<Link>>,
    joiner: Joiner,
    state: RoomState,
    events_to: RoomEvents,
    room: String,
}

/// The time a rejoin attempt is given at least: the backoff's last wait is cut short for it.
const LAST_ATTEMPT: Duration = Duration::from_secs(1);

/// How a connection ended.
enum Outcome {
    /// The room is over, or egret cannot go on in it: the egress ends.
    Final,
    /// The connection is gone but the room may still be there: rejoin.
    Lost(String),
    /// The connection is fine but cannot take a track as it now comes (another codec on a
    /// reused m-line): a new connection takes over, as after a loss, and says so.
    Renegotiate(String),
}

impl Session {
    async fn run(self, mut events: UnboundedReceiver<SignalEvent>) {
        loop {
            let (reason, cause) = match self.follow(&mut events).await {
                Outcome::Final => return,
                Outcome::Lost(reason) => (reason, "lost"),
                Outcome::Renegotiate(reason) => (reason, "codec"),
            };
            match self.rejoin(&reason, cause).await {
                Ok(next) => events = next,
                Err(gave_up) => {
                    room_event(&self.events_to, "disconnected", json!({ "reason": reason }));
                    let room = &self.room;
                    (self.events_to)(RoomEvent::Lost { reason: format!("lost the LiveKit room `{room}`: {gave_up}") });
                    return;
                }
            }
        }
    }

    /// Follows one connection until it ends.
    async fn follow(&self, events: &mut UnboundedReceiver<SignalEvent>) -> Outcome {
        use proto::signal_response::Message as M;
        let commands = &self.events_to;
        let (signal, subscriber) = {
            let link = self.link.lock().unwrap();
            (link.signal.clone(), link.subscriber.clone())
        };
        // Candidates that come before the first offer wait for it.
        let mut early_candidates: Option<Vec<(u32, String)>> = Some(Vec::new());
        while let Some(event) = events.recv().await {
            let message = match event {
                SignalEvent::Message(m) => *m,
                SignalEvent::Closed(reason) => return Outcome::Lost(reason),
            };
            match message {
                M::Offer(offer) => match subscriber.answer(&offer.sdp, &offer.mid_to_track_id).await {
                    Ok((sdp, stuck)) => {
                        signal.send(proto::signal_request::Message::Answer(proto::SessionDescription {
                            r#type: "answer".into(),
                            sdp,
                            id: offer.id,
                            mid_to_track_id: HashMap::new(),
                        }));
                        for (mline, candidate) in early_candidates.take().unwrap_or_default() {
                            subscriber.add_candidate(mline, &candidate);
                        }
                        if let Some(reason) = stuck {
                            // A new connection negotiates fresh m-lines; the old one keeps the
                            // other tracks going until it takes over.
                            return Outcome::Renegotiate(reason);
                        }
                    }
                    Err(e) => {
                        commands(RoomEvent::Lost { reason: format!("cannot answer LiveKit's offer: {e:#}") });
                        return Outcome::Final;
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
                    let mut known = self.state.participants.lock().unwrap();
                    for info in update.participants {
                        if self.is_own(&info.identity) {
                            // LiveKit's UpdateLayout sets the recorder's (egret's) metadata.
                            let mut last = self.state.own_metadata.lock().unwrap();
                            if *last != info.metadata {
                                last.clone_from(&info.metadata);
                                room_event(commands, "own_metadata", json!({ "metadata": info.metadata }));
                            }
                            continue;
                        }
                        for (event, data) in apply_update(&mut known, info) {
                            room_event(commands, event, data);
                        }
                    }
                    self.state.changed.notify_waiters();
                }
                M::SpeakersChanged(changed) => {
                    let mut speakers = self.state.speakers.lock().unwrap();
                    if let Some(now) = speakers.apply(&changed.speakers) {
                        let known = self.state.participants.lock().unwrap();
                        room_event(commands, "active_speakers", super::speakers::event(&now, &speakers, &known));
                    }
                }
                M::Leave(leave) => {
                    let reason = proto::DisconnectReason::try_from(leave.reason)
                        .unwrap_or(proto::DisconnectReason::UnknownReason)
                        .as_str_name()
                        .to_ascii_lowercase();
                    let ended =
                        [proto::DisconnectReason::RoomDeleted as i32, proto::DisconnectReason::RoomClosed as i32]
                            .contains(&leave.reason);
                    let rejoin =
                        [proto::leave_request::Action::Resume as i32, proto::leave_request::Action::Reconnect as i32]
                            .contains(&leave.action);
                    if ended {
                        room_event(commands, "room_ended", json!({ "reason": reason }));
                        commands(RoomEvent::Ended { reason: format!("room ended ({reason})") });
                    } else if rejoin {
                        // The server asks its client to come back (a node draining, a failed resume).
                        return Outcome::Lost(format!("LiveKit asked egret to reconnect ({reason})"));
                    } else {
                        room_event(commands, "disconnected", json!({ "reason": reason }));
                        let room = &self.room;
                        commands(RoomEvent::Lost { reason: format!("LiveKit removed egret from `{room}`: {reason}") });
                    }
                    return Outcome::Final;
                }
                _ => {}
            }
        }
        Outcome::Lost("the signalling task ended".into())
    }

    /// Whether `identity` is egret's own participant (a rejoin adds `-N`).
    fn is_own(&self, identity: &str) -> bool {
        let own = &self.joiner.identity;
        identity.strip_prefix(own.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    }

    /// Joins again after `reason`, retrying with LiveKit's SDK backoff (n² × 300 ms, here at most
    /// 5 s apart) for `[livekit] reconnect_timeout`; an attempt gets what is left of that time at
    /// most. The new connection takes over the routed tracks; the egress and its recipe hear
    /// `reconnecting`, then `reconnected` (both with `cause`: "lost", or "codec" for a track
    /// that came back in another codec), then whatever changed in the room meanwhile. When it
    /// gives up: what it tried, for the egress's error.
    async fn rejoin(&self, reason: &str, cause: &str) -> Result<UnboundedReceiver<SignalEvent>, String> {
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
            if let Err(e) = super::room_service::remove_participant(&config, &room, &old.identity).await {
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
