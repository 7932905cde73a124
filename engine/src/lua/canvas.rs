//! `slot:arrange(tiles [, opts])`: a video slot as a canvas whose layout Lua computes (see
//! `scripts/layouts/`). Rust only turns the rectangles into compositor pad properties.

use mlua::{Table, UserDataMethods, Value};

use super::room::SlotHandle;
use crate::media::MediaKind;
use crate::media::canvas::{Fit, Rect, Tile, TileSource, parse_color};

fn runtime(e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(e.to_string())
}

/// The colours of a name card when a tile does not say (egret's dark layout page).
const CARD_BACKGROUND: u32 = 0xff1b_1b1b;
const CARD_TEXT: u32 = 0xffbb_bbbb;

fn color(t: &Table, key: &str, default: u32, at: &str) -> mlua::Result<u32> {
    match t.get::<Option<String>>(key)? {
        None => Ok(default),
        Some(text) => parse_color(&text)
            .ok_or_else(|| runtime(format!("arrange: {at}.{key} must be a colour like \"#1b1b1b\", not `{text}`"))),
    }
}

/// One tile table: `{ x, y, w, h, track = sid }` or `{ x, y, w, h, name = "..." }`.
fn tile(t: &Table, at: &str) -> mlua::Result<Tile> {
    let number = |key: &str| -> mlua::Result<i32> {
        let v: Option<f64> = t.get(key)?;
        let v = v.ok_or_else(|| runtime(format!("arrange: {at}.{key} is missing (a number of pixels)")))?;
        if !v.is_finite() || v.abs() > 100_000.0 {
            return Err(runtime(format!("arrange: {at}.{key} is out of range ({v})")));
        }
        Ok(v.round() as i32)
    };
    let rect = Rect { x: number("x")?, y: number("y")?, w: number("w")?, h: number("h")? };
    if rect.w <= 0 || rect.h <= 0 {
        return Err(runtime(format!("arrange: {at} has no area ({}x{})", rect.w, rect.h)));
    }
    let fit = match t.get::<Option<String>>("fit")?.as_deref() {
        None | Some("cover") => Fit::Cover,
        Some("contain") => Fit::Contain,
        Some(other) => {
            return Err(runtime(format!("arrange: {at}.fit must be \"cover\" or \"contain\", not `{other}`")));
        }
    };
    let source = match (t.get::<Option<String>>("track")?, t.get::<Option<String>>("name")?) {
        (Some(sid), None) => TileSource::Track(sid),
        (None, Some(text)) => TileSource::Card {
            text: text.chars().take(200).collect(),
            background: color(t, "background", CARD_BACKGROUND, at)?,
            color: color(t, "color", CARD_TEXT, at)?,
        },
        _ => return Err(runtime(format!("arrange: {at} needs either `track` (a sid) or `name` (a card)"))),
    };
    Ok(Tile { source, rect, fit })
}

pub fn add_methods<M: UserDataMethods<SlotHandle>>(methods: &mut M) {
    // slot:arrange(tiles [, { background = "#000000" }]): a video slot shows each attached
    // track where its tile says, and a name card for each `name` tile; attached tracks no
    // tile names are hidden. Called again, it moves everything at once.
    methods.add_method("arrange", |_, this, (tiles, opts): (Table, Option<Table>)| {
        if this.media.0.kind != MediaKind::Video {
            return Err(runtime("arrange: only a video slot has a layout"));
        }
        let mut list = Vec::new();
        for (i, value) in tiles.sequence_values::<Value>().enumerate() {
            let at = format!("tiles[{}]", i + 1);
            match value? {
                Value::Table(t) => list.push(tile(&t, &at)?),
                other => return Err(runtime(format!("arrange: {at} must be a table, not {}", other.type_name()))),
            }
        }
        if list.len() > 64 {
            return Err(runtime(format!("arrange: {} tiles; at most 64", list.len())));
        }
        let background = match &opts {
            Some(o) => match o.get::<Option<String>>("background")? {
                Some(text) => Some(parse_color(&text).ok_or_else(|| {
                    runtime(format!("arrange: background must be a colour like \"#000000\", not `{text}`"))
                })?),
                None => None,
            },
            None => None,
        };
        let mut graph = this.ctx.graph.lock().unwrap();
        let pipeline = graph.pipeline.clone();
        graph.slots[this.index].arrange(&pipeline, &list, background).map_err(runtime)
    });
}
