//! LiveKit rooms in Lua: `egress:join(name)` → room; `room:track(sid)` → track;
//! `egress:copy { video = track }` (no transcoding) and `egress:slot(kind)` (an input that
//! tracks are attached to and detached from while the egress runs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use livekit_protocol as proto;
use mlua::{Function, LuaSerdeExt, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::ctx::Command;
use super::ctx::{EgressCtx, EgressHandle, EncoderHandle, MediaHandle};
use crate::errors::{Error, ErrorKind};
use crate::livekit::room::{Room, RoomEvent, RoomEvents};
use crate::livekit::{codec_of, track_json};
use crate::media::MediaKind;
use crate::media::encoder::kind_of;
use crate::media::slot::{Channel, Slot};

/// Events `room:on` takes. Handlers of `participant_joined` and `track_published` are also
/// called at once for the participants and tracks already in the room.
pub const ROOM_EVENTS: &[&str] = &[
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "track_muted",
    "track_unmuted",
    "active_speakers",
    "own_metadata",
    "room_ended",
    "reconnecting",
    "reconnected",
    "disconnected",
];

fn runtime(e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(e.to_string())
}

/// LiveKit's NotFound (404) for a room, participant or track that is not there.
/// (No field: the message is LiveKit's own, word for word.)
fn not_found(message: String) -> mlua::Error {
    mlua::Error::external(Error::new(ErrorKind::NotFound, "", message))
}

/// How long joining a room may take (signalling, then the server's answer).
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long `room:wait_participant` waits by default (LiveKit's subscription timeout).
const PARTICIPANT_TIMEOUT_S: f64 = 30.0;

/// How long `room:track` waits for a track to be published by default.
const TRACK_TIMEOUT_S: f64 = 5.0;

/// Leaves the room when the egress ends, whoever still holds a handle.
struct Membership(Arc<Room>);

impl Drop for Membership {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[derive(Clone)]
pub struct RoomHandle {
    ctx: Arc<EgressCtx>,
    room: Arc<Room>,
}

/// A published track, as `room:track(sid)` found it.
#[derive(Clone)]
pub struct TrackHandle {
    room: Arc<Room>,
    info: proto::TrackInfo,
    participant_sid: String,
    view: serde_json::Value,
}

impl TrackHandle {
    fn codec(&self) -> mlua::Result<crate::media::encoder::Codec> {
        crate::media::track::codec(&codec_of(&self.info.mime_type)).map_err(runtime)
    }
}

/// `egress:join(room_name [, { identity = ... }])`: joins as a hidden recorder whose identity
/// is the egress id unless given.
pub async fn join(ctx: Arc<EgressCtx>, name: String, identity: Option<String>) -> mlua::Result<RoomHandle> {
    let config = ctx
        .livekit
        .clone()
        .ok_or_else(|| runtime("join: egress.toml has no [livekit] section (url, api_key, api_secret)"))?;
    if name.is_empty() {
        return Err(runtime("join: the room name is empty"));
    }
    ctx.expect(format!("room `{name}` to be joined"), JOIN_TIMEOUT);
    // Joining creates a room that does not exist; LiveKit refuses such an egress instead.
    match crate::livekit::room_service::room_sid(&config, &name).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(not_found("requested room does not exist".into()));
        }
        // The join itself reports an unreachable server, with its cause.
        Err(e) => tracing::warn!(egress = %ctx.id, room = %name, "could not look the room up: {e:#}"),
    }
    let pipeline = ctx.graph.lock().unwrap().pipeline.clone();
    let identity = identity.filter(|i| !i.is_empty()).unwrap_or_else(|| ctx.id.clone());
    let commands = ctx.commands.clone();
    let events: RoomEvents = Arc::new(move |event| {
        let command = match event {
            RoomEvent::Event { name, data } => Command::Room { event: name.to_string(), data },
            RoomEvent::Ended { reason } => Command::Stop { reason },
            RoomEvent::Lost { reason } => Command::Fail { reason },
        };
        let _ = commands.send(command);
    });
    let room = Room::join(&config, &name, &identity, &pipeline, events)
        .await
        .map_err(|e| runtime(format!("join `{name}`: {e:#}")))?;
    {
        let mut graph = ctx.graph.lock().unwrap();
        graph.template.set("room_name", &room.name);
        graph.template.set("room_id", &room.sid);
    }
    // webrtcbin negotiates while `start` still runs: the pipeline plays from now on, and
    // what the recipe adds later joins it running.
    pipeline.set_state(gst::State::Playing).map_err(|_| runtime("join: the pipeline refused to play"))?;
    let room = Arc::new(room);
    ctx.keep(Box::new(Membership(room.clone())));
    let ending = room.clone();
    ctx.on_ending(Box::new(move || ending.end_tracks()));
    tracing::info!(egress = %ctx.id, room = %room.name, sid = %room.sid, "joined LiveKit room");
    Ok(RoomHandle { ctx, room })
}

impl UserData for RoomHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.room.name.clone()));
        fields.add_field_method_get("sid", |_, this| Ok(this.room.sid.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // room:track(sid) → the track if it is published now, else nil.
        methods.add_method("track", |_, this, sid: String| {
            Ok(this.room.find_track(&sid).map(|(info, participant)| {
                // Its recipe now knows it: its `track_unpublished` will be told.
                this.ctx.announce(format!("track:{}", info.sid));
                let view = track_json(&info, &participant);
                TrackHandle { room: this.room.clone(), info, participant_sid: participant.sid, view }
            }))
        });

        // room:wait_track(sid [, { timeout = 5 }]) → the track, waiting for it to be published
        // (its first packets must reach the server); an error naming the room if it is not.
        methods.add_async_method("wait_track", |lua, this, (sid, opts): (String, Option<Table>)| {
            crate::lua::budget::paused(lua.clone(), async move {
                let timeout = timeout_option(&opts, TRACK_TIMEOUT_S)?;
                let wait = crate::clock::seconds(timeout.min(3600.0));
                this.ctx.waiting_for(format!("track {sid} in room `{}`", this.room.name), wait);
                let (info, participant) = this.room.wait_track(&sid, wait).await.ok_or_else(|| {
                    let text = format!(
                        "track {sid} not found (not published in room `{}` within {timeout} s)",
                        this.room.name
                    );
                    not_found(text)
                })?;
                this.ctx.announce(format!("track:{}", info.sid));
                let view = track_json(&info, &participant);
                Ok(TrackHandle { room: this.room.clone(), info, participant_sid: participant.sid, view })
            })
        });

        // room:wait_participant(identity [, { timeout = 30 }]) → the participant, once it is in
        // the room; else the error LiveKit gives ("participant X not found"). The caller is
        // answered meanwhile (the egress shows starting).
        methods.add_async_method("wait_participant", |lua, this, (identity, opts): (String, Option<Table>)| {
            crate::lua::budget::paused(lua.clone(), async move {
                let timeout = timeout_option(&opts, PARTICIPANT_TIMEOUT_S)?;
                let wait = crate::clock::seconds(timeout.min(3600.0));
                this.ctx.waiting_for(format!("participant {identity} in room `{}`", this.room.name), wait);
                let participant = this
                    .room
                    .wait_participant(&identity, wait)
                    .await
                    .ok_or_else(|| not_found(format!("participant {identity} not found")))?;
                lua.to_value(&crate::livekit::participant_json(&participant))
            })
        });

        // room:tracks() / room:participants(): what the room holds now, as tables.
        methods.add_method("tracks", |lua, this, ()| lua.to_value(&this.room.tracks_json()));
        methods.add_method("participants", |lua, this, ()| lua.to_value(&this.room.participants_json()));

        // room:layout_page { layout = "grid" [, base = custom_base_url] } → { url = ..., identity = ... }:
        // the page (egret's /layouts/ or a custom template) with LiveKit's template query
        // (`url`, `token`, `layout`); the token joins as a hidden recorder of this room.
        methods.add_method("layout_page", |lua, this, opts: Option<Table>| {
            let config = this.ctx.livekit.as_ref().ok_or_else(|| runtime("layout_page: no [livekit] section"))?;
            let (layout, base) = match &opts {
                Some(o) => (o.get::<Option<String>>("layout")?, o.get::<Option<String>>("base")?),
                None => (None, None),
            };
            let base = match base.filter(|b| !b.is_empty()) {
                Some(custom) => custom,
                None if !this.ctx.layouts_dir.join("build/layout.js").is_file() => {
                    return Err(runtime(format!(
                        "layout_page: the layouts bundle {}/build/layout.js is not built (tests/setup.sh builds it: npm ci && npm run build in layouts/)",
                        this.ctx.layouts_dir.display()
                    )));
                }
                None => this.ctx.layouts_url.clone(),
            };
            // The egress's recorder participant, as LiveKit names it: its UpdateLayout sets
            // this identity's metadata.
            let identity = this.ctx.id.clone();
            let token = crate::livekit::recorder_token(&config.api_key, &config.api_secret, &this.room.name, &identity);
            let encode = crate::http_client::uri_encode;
            let separator = if base.contains('?') { '&' } else { '?' };
            let url = format!(
                "{base}{separator}url={}&token={token}&layout={}",
                encode(&config.url),
                encode(layout.as_deref().unwrap_or("grid"))
            );
            let page = lua.create_table()?;
            page.set("url", url)?;
            page.set("identity", identity)?;
            Ok(page)
        });

        // room:set_metadata(identity, text): another participant's metadata (LiveKit's
        // RoomService), e.g. `{"layout":"speaker"}` for a layout page.
        methods.add_async_method("set_metadata", |lua, this, (identity, metadata): (String, String)| {
            crate::lua::budget::paused(lua.clone(), async move {
                let config = this.ctx.livekit.clone().ok_or_else(|| runtime("set_metadata: no [livekit] section"))?;
                crate::livekit::room_service::update_metadata(&config, &this.room.name, &identity, &metadata)
                    .await
                    .map_err(|e| runtime(format!("set_metadata `{identity}`: {e:#}")))
            })
        });

        // room:on(event, fn)
        methods.add_method("on", |lua, this, (event, f): (String, Function)| {
            if !ROOM_EVENTS.contains(&event.as_str()) {
                return Err(runtime(format!("on: unknown room event `{event}` (known: {})", ROOM_EVENTS.join(", "))));
            }
            this.ctx.add_handler(lua, &event, None, f.clone())?;
            let (current, prefix) = match event.as_str() {
                "track_published" => (this.room.tracks_json(), "track"),
                "participant_joined" => (this.room.participants_json(), "participant"),
                _ => return Ok(()),
            };
            for item in current {
                this.ctx.announce(format!("{prefix}:{}", item["sid"].as_str().unwrap_or_default()));
                f.call::<()>(lua.to_value(&item)?)?;
            }
            Ok(())
        });
    }
}

impl UserData for TrackHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // track.sid, track.kind, track.codec, track.source, track.participant, track.width...
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: String| lua.to_value(&this.view[key.as_str()]));
    }
}

/// `egress:copy { video = track, audio = track }`: the tracks' own streams to the outputs.
pub fn copy(ctx: &Arc<EgressCtx>, opts: Table) -> mlua::Result<EncoderHandle> {
    let mut tracks = Vec::new();
    for kind in [MediaKind::Video, MediaKind::Audio] {
        if let Some(track) = opts.get::<Option<mlua::UserDataRef<TrackHandle>>>(kind.name())? {
            let codec = track.codec()?;
            if kind_of(codec) != kind {
                return Err(runtime(format!("copy: `{}` was given a {} track", kind.name(), kind_of(codec).name())));
            }
            tracks.push((track.clone(), codec));
        }
    }
    if tracks.is_empty() {
        return Err(runtime("copy: give `video`, `audio` or both (tracks from room:track)"));
    }
    let mut graph = ctx.graph.lock().unwrap();
    let pipeline = graph.pipeline.clone();
    let mut settings = ctx.request.settings.clone();
    let mut streams = Vec::new();
    let mut chains = Vec::new();
    for (_, codec) in &tracks {
        match codec {
            crate::media::encoder::Codec::Video(v) => settings.video_codec = Some(*v),
            crate::media::encoder::Codec::Audio(a) => settings.audio_codec = Some(*a),
        }
        let chain = crate::media::track::copy(&pipeline, *codec).map_err(runtime)?;
        chain.start(); // its tee takes data with or without outputs
        streams.push((*codec, chain.src.clone()));
        chains.push(chain);
    }
    let index = graph.add_copy(settings, &streams).map_err(runtime)?;
    drop(graph);
    for ((track, _), chain) in tracks.iter().zip(chains) {
        track.room.subscribe(&track.info, &track.participant_sid, chain.sink);
    }
    Ok(EncoderHandle { ctx: ctx.clone(), index })
}

/// `egress:slot("video" | "audio")`: black or silence until a track is attached.
#[derive(Clone)]
pub struct SlotHandle {
    pub(super) ctx: Arc<EgressCtx>,
    pub(super) index: usize,
    pub media: MediaHandle,
    /// The room each attached track came from, to unsubscribe on detach.
    rooms: Arc<Mutex<HashMap<String, Arc<Room>>>>,
}

pub fn slot(ctx: &Arc<EgressCtx>, kind: &str) -> mlua::Result<SlotHandle> {
    let mut graph = ctx.graph.lock().unwrap();
    let pipeline = graph.pipeline.clone();
    let s = &ctx.request.settings;
    let slot = match kind {
        "video" => Slot::video(&pipeline, s.width, s.height, s.framerate),
        "audio" => Slot::audio(&pipeline),
        other => return Err(runtime(format!("slot: kind must be \"video\" or \"audio\", not `{other}`"))),
    }
    .map_err(runtime)?;
    let media = MediaHandle(slot.output.clone());
    graph.slots.push(slot);
    Ok(SlotHandle { ctx: ctx.clone(), index: graph.slots.len() - 1, media, rooms: Default::default() })
}

impl SlotHandle {
    fn detach_sid(&self, sid: &str) -> bool {
        let Some(room) = self.rooms.lock().unwrap().remove(sid) else { return false };
        room.unsubscribe(sid);
        let mut graph = self.ctx.graph.lock().unwrap();
        let pipeline = graph.pipeline.clone();
        graph.slots[self.index].detach(&pipeline, sid)
    }
}

impl SlotHandle {
    fn add(&self, track: &TrackHandle, channel: Channel) -> mlua::Result<()> {
        let codec = track.codec()?;
        if kind_of(codec) != self.media.0.kind {
            return Err(runtime(format!(
                "attach: a {} slot cannot take {} track `{}`",
                self.media.0.kind.name(),
                kind_of(codec).name(),
                track.info.sid
            )));
        }
        if self.rooms.lock().unwrap().contains_key(&track.info.sid) {
            return Ok(());
        }
        let mut graph = self.ctx.graph.lock().unwrap();
        let pipeline = graph.pipeline.clone();
        let slot = &mut graph.slots[self.index];
        let sink = slot.attach(&pipeline, &track.info.sid, codec, channel).map_err(runtime)?;
        self.rooms.lock().unwrap().insert(track.info.sid.clone(), track.room.clone());
        // The track's RTP is asked for once the slot runs (its output linked to an encoder),
        // unless it was detached meanwhile.
        let (room, info, participant_sid) = (track.room.clone(), track.info.clone(), track.participant_sid.clone());
        let still_here = self.rooms.clone();
        let subscribe = Box::new(move || {
            if still_here.lock().unwrap().contains_key(&info.sid) {
                room.subscribe(&info, &participant_sid, sink);
            }
        });
        let now = slot.when_running(subscribe);
        drop(graph);
        if let Some(subscribe) = now {
            subscribe();
        }
        Ok(())
    }
}

/// `{ timeout = seconds }` of a waiting call, else `default`.
fn timeout_option(opts: &Option<Table>, default: f64) -> mlua::Result<f64> {
    Ok(match opts {
        Some(t) => t.get::<Option<f64>>("timeout")?.unwrap_or(default),
        None => default,
    })
}

impl UserData for SlotHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("kind", |_, this| Ok(this.media.0.kind.name()));
        // slot.width / slot.height: a video slot's frame (the egress's encoding), 0 for audio.
        fields.add_field_method_get("width", |_, this| {
            Ok(if this.media.0.kind == MediaKind::Video { this.ctx.request.settings.width } else { 0 })
        });
        fields.add_field_method_get("height", |_, this| {
            Ok(if this.media.0.kind == MediaKind::Video { this.ctx.request.settings.height } else { 0 })
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // slot:attach(track): the track replaces whatever the slot showed.
        methods.add_method("attach", |_, this, track: mlua::UserDataRef<TrackHandle>| {
            let previous: Vec<String> = this.rooms.lock().unwrap().keys().cloned().collect();
            for sid in previous.iter().filter(|s| **s != track.info.sid) {
                this.detach_sid(sid);
            }
            this.add(&track, Channel::Both)
        });

        // slot:add(track [, { channel = "left" | "right" | "both" }]): the track joins those
        // already attached (an audio slot mixes them); `channel` puts its sound, downmixed to
        // mono, on one side of the stereo mix (default both: as it is).
        methods.add_method("add", |_, this, (track, opts): (mlua::UserDataRef<TrackHandle>, Option<Table>)| {
            let channel = match opts.map(|o| o.get::<Option<String>>("channel")).transpose()?.flatten() {
                None => Channel::Both,
                Some(name) => Channel::parse(&name).ok_or_else(|| {
                    runtime(format!("add: channel must be \"left\", \"right\" or \"both\", not `{name}`"))
                })?,
            };
            if channel != Channel::Both && this.media.0.kind != MediaKind::Audio {
                return Err(runtime("add: a channel applies to audio slots only"));
            }
            this.add(&track, channel)
        });

        // slot:detach([track or sid]): back to black/silence; without argument, any track.
        methods.add_method("detach", |_, this, which: Value| {
            let sids: Vec<String> = match which {
                Value::Nil => this.rooms.lock().unwrap().keys().cloned().collect(),
                Value::String(s) => vec![s.to_str()?.to_string()],
                Value::UserData(ud) => vec![ud.borrow::<TrackHandle>()?.info.sid.clone()],
                Value::Table(t) => vec![t.get::<String>("sid")?],
                _ => return Err(runtime("detach: give a track, its sid, or nothing")),
            };
            Ok(sids.iter().filter(|sid| this.detach_sid(sid)).count() > 0)
        });

        // slot:track(): the sid of the attached track, or nil.
        methods.add_method("track", |_, this, ()| Ok(this.rooms.lock().unwrap().keys().next().cloned()));

        super::canvas::add_methods(methods);
    }
}

/// Registers `egress:join`, `egress:copy` and `egress:slot` (called from the egress userdata).
pub fn add_egress_methods<M: UserDataMethods<EgressHandle>>(methods: &mut M) {
    methods.add_async_method("join", |lua, this, (name, opts): (String, Option<Table>)| {
        crate::lua::budget::paused(lua.clone(), async move {
            let identity = match &opts {
                Some(o) => o.get::<Option<String>>("identity")?,
                None => None,
            };
            join(this.0.clone(), name, identity).await
        })
    });
    methods.add_method("copy", |_, this, opts: Table| copy(&this.0, opts));
    methods.add_method("slot", |_, this, kind: String| slot(&this.0, &kind));
}
