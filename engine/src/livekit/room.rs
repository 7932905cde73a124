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
use super::timeline::Timeline;
use super::{participant_json, recorder_token, track_json};
use crate::config::LiveKitConfig;

mod rejoin;
mod updates;

use updates::apply_update;

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
}
