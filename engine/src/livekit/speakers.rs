//! Who is speaking: LiveKit sends changes only (`SpeakersChanged`, a participant's level, or
//! `active = false` when it stops), scoped to participants egret subscribes to. Folded here
//! into the room's current speakers, loudest first, for the `active_speakers` room event.

use std::collections::HashMap;

use livekit_protocol as proto;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Speakers {
    /// Participant sid → audio level (0..1) of those speaking now.
    levels: HashMap<String, f32>,
    /// What the recipe was last told, loudest first (sids).
    told: Vec<String>,
}

impl Speakers {
    /// Folds one update in; the speakers, loudest first, when who speaks (or their order) changed.
    pub fn apply(&mut self, changes: &[proto::SpeakerInfo]) -> Option<Vec<String>> {
        for change in changes {
            if change.active && change.level > 0.0 {
                self.levels.insert(change.sid.clone(), change.level);
            } else {
                self.levels.remove(&change.sid);
            }
        }
        let mut now: Vec<(&String, &f32)> = self.levels.iter().collect();
        now.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let now: Vec<String> = now.into_iter().map(|(sid, _)| sid.clone()).collect();
        if now == self.told {
            return None;
        }
        self.told = now.clone();
        Some(now)
    }
}

/// The event's data: `{ speakers = { { sid, identity, name, level }, ... } }`, loudest first;
/// participants egret does not know (hidden recorders) are left out.
pub fn event(sids: &[String], speakers: &Speakers, participants: &HashMap<String, proto::ParticipantInfo>) -> Value {
    let list: Vec<Value> = sids
        .iter()
        .filter_map(|sid| {
            let p = participants.get(sid)?;
            Some(json!({
                "sid": sid,
                "identity": p.identity,
                "name": p.name,
                "level": speakers.levels.get(sid).copied().unwrap_or(0.0),
            }))
        })
        .collect();
    json!({ "speakers": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speaker(sid: &str, level: f32, active: bool) -> proto::SpeakerInfo {
        proto::SpeakerInfo { sid: sid.into(), level, active }
    }

    #[test]
    fn changes_fold_into_the_current_speakers_loudest_first() {
        let mut s = Speakers::default();
        assert_eq!(s.apply(&[speaker("PA", 0.2, true)]), Some(vec!["PA".to_string()]));
        assert_eq!(s.apply(&[speaker("PB", 0.5, true)]), Some(vec!["PB".into(), "PA".into()]));
        // Same speakers, same order: nothing to tell.
        assert_eq!(s.apply(&[speaker("PB", 0.6, true)]), None);
        assert_eq!(s.apply(&[speaker("PB", 0.0, false)]), Some(vec!["PA".into()]));
        assert_eq!(s.apply(&[speaker("PA", 0.0, false)]), Some(vec![]), "nobody speaks now");
    }
}
