//! Participant updates folded into the room's state, as the events a recipe hears.

use livekit_protocol as proto;
use serde_json::Value;

use super::Participants;
use crate::livekit::{participant_json, track_json};

/// Folds one participant update into the room state; returns the events it means, in order:
/// joins before their tracks, unpublished tracks before the leave.
pub(super) fn apply_update(known: &mut Participants, info: proto::ParticipantInfo) -> Vec<(&'static str, Value)> {
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
