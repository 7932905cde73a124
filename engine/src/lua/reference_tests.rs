//! `scripts/README.md` is the recipe API reference: these tests hold it against what the
//! engine registers, both ways, so the reference cannot drift. Globals are read from a live
//! sandbox; methods and fields of each handle from the registrations in `lua/*.rs` (mlua
//! offers no way to list a userdata's methods at run time).

use std::collections::BTreeSet;

use mlua::{Lua, LuaOptions, StdLib, Table, Value};

const REFERENCE: &str = include_str!("../../../scripts/README.md");

/// Handle types and the name recipes know each by.
const OWNERS: &[(&str, &str)] = &[
    ("EgressHandle", "egress"),
    ("MediaHandle", "media"),
    ("EncoderHandle", "encoder"),
    ("PageHandle", "page"),
    ("RoomHandle", "room"),
    ("TrackHandle", "track"),
    ("SlotHandle", "slot"),
];

const SOURCES: &[&str] = &[
    include_str!("api.rs"),
    include_str!("ctx.rs"),
    include_str!("room.rs"),
    include_str!("page.rs"),
    include_str!("canvas.rs"),
];

/// The first backticked token of each `###` heading, with the heading's lead word(s).
fn headings() -> Vec<(String, String)> {
    REFERENCE
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .filter_map(|h| {
            let (lead, rest) = h.split_once('`')?;
            let (token, _) = rest.split_once('`')?;
            Some((lead.trim().to_string(), token.to_string()))
        })
        .collect()
}

/// `owner:method` / `owner.field` names documented (call shapes stripped).
fn documented_members() -> BTreeSet<String> {
    headings()
        .into_iter()
        .filter(|(lead, _)| lead.is_empty())
        .map(|(_, token)| {
            token.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '.').collect()
        })
        .filter(|n: &String| n.contains(':') || n.contains('.'))
        .collect()
}

/// Every `owner:method` and `owner.field` registered on a handle type: each registration call
/// (however rustfmt wrapped it) belongs to the last `impl UserData for …` above it.
fn registered_members() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for source in SOURCES {
        let mut owners: Vec<(usize, &str)> = OWNERS
            .iter()
            .flat_map(|(rust, lua)| {
                // `impl UserData for X`, or a helper registering on X's methods from another file.
                let markers = [format!("UserData for {rust}"), format!("UserDataMethods<{rust}>")];
                markers
                    .iter()
                    .flat_map(|m| source.match_indices(m.as_str()).map(|(at, _)| (at, *lua)).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            .chain(source.match_indices("fn add_egress_methods").map(|(at, _)| (at, "egress")))
            .collect();
        owners.sort();
        for (call, sep) in [("add_method(", ':'), ("add_async_method(", ':'), ("add_field_method_get(", '.')] {
            for (at, _) in source.match_indices(&format!(".{call}")) {
                let rest = source[at + call.len() + 1..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else { continue };
                let name = rest.split('"').next().unwrap_or_default();
                let owner = owners.iter().rev().find(|(o, _)| *o < at).map_or("?", |(_, lua)| *lua);
                names.insert(format!("{owner}{sep}{name}"));
            }
        }
    }
    // `media.video` / `media.audio` on pages are registered in a loop over the kinds.
    names.insert("page.video".into());
    names.insert("page.audio".into());
    // A track's fields are its `track_json` view, served by one `__index`.
    for key in track_fields() {
        names.insert(format!("track.{key}"));
    }
    names
}

fn track_fields() -> Vec<String> {
    let source = include_str!("../livekit/mod.rs");
    let body = source.split("pub fn track_json").nth(1).expect("track_json in livekit/mod.rs");
    let body = &body[..body.find("\n}").expect("end of track_json")];
    body.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

#[test]
fn every_registered_method_and_field_is_documented_and_nothing_else() {
    let documented = documented_members();
    let registered = registered_members();
    let missing: Vec<_> = registered.iter().filter(|n| !documented.contains(*n)).collect();
    assert!(missing.is_empty(), "registered but not in scripts/README.md: {missing:?}");
    let globals = egret_globals();
    let unknown: Vec<_> = documented
        .iter()
        .filter(|n| !registered.contains(*n) && !globals.contains(*n) && !n.starts_with("recipe"))
        .collect();
    assert!(unknown.is_empty(), "documented but not registered: {unknown:?}");
}

/// What egret's sandbox adds to a plain Lua state with the same libraries: `log`,
/// `json.encode`, `os.time`, `table.contains`...
fn egret_globals() -> BTreeSet<String> {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
    let plain = Lua::new_with(libs, LuaOptions::default()).unwrap();
    let sandbox = super::sandbox(std::path::Path::new(".")).unwrap();
    let keys =
        |t: &Table| -> BTreeSet<String> { t.pairs::<String, Value>().filter_map(|p| p.ok().map(|(k, _)| k)).collect() };
    let mut names = BTreeSet::new();
    let (plain_globals, globals) = (plain.globals(), sandbox.globals());
    for name in keys(&globals).into_iter().filter(|n| n != "_G") {
        match (globals.get::<Value>(name.as_str()).unwrap(), plain_globals.get::<Value>(name.as_str()).unwrap()) {
            (Value::Table(ours), Value::Table(theirs)) => {
                names.extend(keys(&ours).difference(&keys(&theirs)).map(|k| format!("{name}.{k}")));
            }
            (Value::Table(ours), Value::Nil) => names.extend(keys(&ours).into_iter().map(|k| format!("{name}.{k}"))),
            (Value::Function(_), Value::Nil) => {
                names.insert(name);
            }
            _ => {}
        }
    }
    names
}

#[test]
fn every_global_is_documented() {
    let tokens: BTreeSet<String> = headings()
        .into_iter()
        .filter(|(lead, _)| lead.is_empty())
        .map(|(_, t)| t.split(['(', ' ']).next().unwrap_or_default().to_string())
        .collect();
    for name in egret_globals() {
        assert!(tokens.contains(&name), "global `{name}` is not in scripts/README.md");
    }
}

#[test]
fn every_event_and_param_type_is_documented() {
    let documented = |lead: &str| -> BTreeSet<String> {
        headings().into_iter().filter(|(l, _)| l == lead).map(|(_, t)| t).collect()
    };
    let events: BTreeSet<String> = super::ctx::EVENTS.iter().map(|e| e.to_string()).collect();
    assert_eq!(documented("event"), events, "egress:on events");
    let room_events: BTreeSet<String> = super::room::ROOM_EVENTS.iter().map(|e| e.to_string()).collect();
    assert_eq!(documented("room event"), room_events, "room:on events");
    let types: BTreeSet<String> = documented("type");
    for name in &types {
        assert!(crate::request::ParamSpec::parse("x", name).is_ok(), "documented type `{name}` is not a param type");
    }
    for name in ["string", "number", "integer", "boolean", "url", "table", "any"] {
        assert!(types.contains(name), "param type `{name}` is not documented");
    }
}
