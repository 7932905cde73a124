//! A recipe that misuses a primitive gets an error that says what is wrong, at its own
//! file:line, and nothing is built. These run the primitives on a real (idle) pipeline,
//! without the HTTP layer or a supervisor.

use std::sync::Arc;

use super::ctx::{EgressCtx, EgressHandle};
use crate::media::graph::Graph;
use crate::request::filepath::Template;

fn egress() -> (mlua::Lua, Arc<EgressCtx>) {
    crate::media::init_for_tests();
    let storage = std::env::temp_dir().join(format!("egret-misuse-{}", std::process::id()));
    std::fs::create_dir_all(&storage).unwrap();
    let toml = "[server]\nlisten = \"127.0.0.1:0\"\napi_key = \"k\"\napi_secret = \"0123456789abcdef0123456789abcdef\"\n\
                [storage]\ndir = \".\"\n[recipes]\ndir = \".\"\n";
    let config = crate::config::Config::parse(toml, &storage).unwrap();
    let request = crate::request::validate(serde_json::json!({}), &[], Some(&["file_outputs"])).unwrap();
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let graph = Graph::new("misuse", &storage, true, Template::new("EG_misuse", "misuse"), events, None, &storage);
    let (commands, _) = tokio::sync::mpsc::unbounded_channel();
    let ctx = EgressCtx::new("EG_misuse".into(), "misuse".into(), request, graph, commands, &config);
    let lua = super::sandbox(&storage).unwrap();
    lua.globals().set("egress", EgressHandle(ctx.clone())).unwrap();
    (lua, ctx)
}

/// Runs `code` as the recipe file `scripts/misuse.lua`; returns its error text.
fn error_of(code: &str) -> String {
    let (lua, _ctx) = egress();
    let err = lua.load(code).set_name("@scripts/misuse.lua").exec().expect_err(code);
    super::error_text(&err)
}

#[test]
fn misused_primitives_say_what_is_wrong_and_where() {
    let cases = [
        (r#"egress:on("nope", function() end)"#, "on: unknown event `nope` (known: active, stop"),
        (r#"egress:on("active")"#, "bad argument"),
        ("egress:encode {}", "encode: give `video`, `audio` or both"),
        ("egress:encode { video = 1 }", "encode: `video` must be a source's video"),
        (
            "local s = egress:testsrc { video = false }\negress:encode { video = s.audio }",
            "encode: `video` was given audio media",
        ),
        (r#"egress:slot("smell")"#, "slot: kind must be \"video\" or \"audio\", not `smell`"),
        (
            "local s = egress:testsrc {}\negress:encode { video = s.video, speed = 'ludicrous' }",
            "encode: speed must be one of ultrafast, superfast, veryfast, faster, fast, medium, not `ludicrous`",
        ),
        ("egress:slot('audio'):arrange {}", "arrange: only a video slot has a layout"),
        ("egress:slot('video'):arrange { { x = 0, y = 0, w = 10 } }", "arrange: tiles[1].h is missing"),
        (
            "egress:slot('video'):arrange { { x = 0, y = 0, w = 10, h = 0, name = 'a' } }",
            "arrange: tiles[1] has no area",
        ),
        ("egress:slot('video'):arrange { { x = 0, y = 0, w = 8, h = 8 } }", "arrange: tiles[1] needs either `track`"),
        (
            "egress:slot('video'):arrange({ { x = 0, y = 0, w = 8, h = 8, name = 'a', color = 'red' } })",
            "arrange: tiles[1].color must be a colour like",
        ),
        ("egress:slot('video'):arrange({}, { background = '#12' })", "arrange: background must be a colour like"),
        ("egress:slot('video'):arrange { 5 }", "arrange: tiles[1] must be a table, not integer"),
        ("egress:after(-1, function() end)", "after: seconds must be a non-negative number"),
        ("egress:after(0/0, function() end)", "after: seconds must be a non-negative number"),
        ("egress:testsrc { video = false, audio = false }", "testsrc: video and audio are both off"),
        (r#"egress:join("")"#, "join: egress.toml has no [livekit] section"),
        (
            "local s = egress:testsrc { video = false }\n\
             egress:encode { audio = s.audio }:output { file_outputs = { { filepath = '../x.ogg' } } }",
            "file_outputs[0].filepath",
        ),
        (
            "local s = egress:testsrc {}\n\
             egress:encode { video = s.video, audio = s.audio }:output { file_outputs = { { filepath = 'x.mp4', colour = 1 } } }",
            "file_outputs[0].colour",
        ),
    ];
    for (code, expected) in cases {
        let text = error_of(code);
        assert!(text.contains(expected), "`{code}` said: {text}");
        assert!(text.contains("scripts/misuse.lua:"), "`{code}` does not point at the recipe: {text}");
    }
}

#[test]
fn a_refused_output_builds_nothing() {
    let (lua, ctx) = egress();
    let code = "local s = egress:testsrc { video = false }\n\
                egress:encode { audio = s.audio }:output { file_outputs = { { filepath = 'a.mp4' }, { filepath = '/abs.ogg' } } }";
    assert!(lua.load(code).exec().is_err());
    // Every output of the call is checked before any is built: the valid first one is not
    // left half-attached.
    assert_eq!(ctx.graph.lock().unwrap().outputs.len(), 0);
}
