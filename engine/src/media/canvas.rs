//! A video slot as a canvas: its attached tracks and name cards placed where a layout puts
//! them. The geometry comes from Lua (`slot:arrange`); here it only becomes compositor pad
//! properties, so a layout change costs no renegotiation and never stops the picture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::slot::Slot;
use super::{add_chain, capsfilter, make, sync_states};

/// A tile's place on the canvas, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

/// How a picture fills its tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Filled, the overflow cropped (CSS `object-fit: cover`: cameras).
    Cover,
    /// Whole, letterboxed (CSS `contain`: screen shares).
    Contain,
}

/// What a tile shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TileSource {
    /// An attached track, by sid.
    Track(String),
    /// A name on a plain card (a participant without video).
    Card { text: String, background: u32, color: u32 },
}

#[derive(Clone, Debug)]
pub struct Tile {
    pub source: TileSource,
    pub rect: Rect,
    pub fit: Fit,
}

/// A name card: one frame drawn once (text on a colour), repeated live by `imagefreeze`, so a
/// card costs only its blend into the canvas.
pub(super) struct Card {
    elements: Vec<gst::Element>,
    pad: gst::Pad,
}

/// The output pads of a canvas's cards. `imagefreeze` drops the EOS of its (one-frame) source
/// and would repeat its frame for ever, holding the compositor, and so the egress's end, open:
/// each card is ended when the canvas's base source ends (the egress's stop reaches it).
pub(super) type CardEnds = Arc<Mutex<Vec<gst::Pad>>>;

pub(super) fn end_cards_with(base_out: &gst::Pad, cards: &CardEnds) {
    let cards = cards.clone();
    base_out.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(event)) = &info.data
            && event.type_() == gst::EventType::Eos
        {
            let pads = cards.lock().unwrap().clone();
            // Off this streaming thread: a card's push may wait on the compositor.
            std::thread::spawn(move || {
                for pad in pads {
                    pad.push_event(gst::event::Eos::new());
                }
            });
        }
        gst::PadProbeReturn::Ok
    });
}

/// What identifies a card: a change of any of these draws a new one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CardKey {
    text: String,
    size: (i32, i32),
    background: u32,
    color: u32,
}

/// The name's size on a card, as on egret's layout page (28 px DejaVu Sans).
const CARD_FONT: &str = "DejaVu Sans 28"; // textoverlay draws at 72 dpi: points are pixels

impl Card {
    fn build(pipeline: &gst::Pipeline, key: &CardKey, fps: i32, mixer: &gst::Element) -> Result<Card> {
        let (w, h) = key.size;
        let source = make("videotestsrc", None)?;
        source.set_property("num-buffers", 1i32);
        source.set_property_from_str("pattern", "solid-color");
        source.set_property("foreground-color", key.background);
        let caps = capsfilter(&format!("video/x-raw,format=I420,width={w},height={h},framerate={fps}/1"))?;
        let text = make("textoverlay", None)?;
        text.set_property("text", &key.text);
        text.set_property("font-desc", CARD_FONT);
        text.set_property("auto-resize", false); // a fixed size, as on the page, whatever the tile's
        text.set_property_from_str("valignment", "center");
        text.set_property_from_str("halignment", "center");
        text.set_property("shaded-background", false);
        text.set_property("draw-shadow", false);
        text.set_property("draw-outline", false);
        text.set_property("color", key.color);
        // The one frame, repeated at the canvas rate with live timestamps.
        let freeze = make("imagefreeze", None)?;
        freeze.set_property("is-live", true);
        let elements = vec![source, caps, text, freeze];
        let refs: Vec<&gst::Element> = elements.iter().collect();
        add_chain(pipeline, &refs)?;
        let pad = mixer.request_pad_simple("sink_%u").ok_or_else(|| anyhow!("the mixer refused a pad"))?;
        super::track::answer_latency(&pad, |_| true);
        elements[3].static_pad("src").expect("imagefreeze src").link(&pad)?;
        Ok(Card { elements, pad })
    }

    /// The pad the card's frames leave by.
    fn out(&self) -> gst::Pad {
        self.elements[3].static_pad("src").expect("imagefreeze src")
    }

    fn remove(self, pipeline: &gst::Pipeline, mixer: &gst::Element) {
        for e in &self.elements {
            let _ = e.set_state(gst::State::Null);
        }
        let _ = pipeline.remove_many(&self.elements);
        mixer.release_request_pad(&self.pad);
    }
}

/// Sets a compositor pad to show its input in `rect`, above `zorder - 1` others.
fn place(pad: &gst::Pad, rect: Rect, zorder: u32) {
    pad.set_property("xpos", rect.x);
    pad.set_property("ypos", rect.y);
    pad.set_property("width", rect.w.max(1));
    pad.set_property("height", rect.h.max(1));
    pad.set_property("zorder", zorder);
    pad.set_property("alpha", 1.0f64);
}

/// Hides a compositor pad: at alpha 0 the compositor neither scales nor blends its frames.
pub(super) fn hide(pad: &gst::Pad) {
    pad.set_property("alpha", 0.0f64);
}

/// (the tile's w, h), (the input's w, h): see `Crop`.
type Shapes = (Option<(i32, i32)>, Option<(i32, i32)>);

/// A camera's crop to cover its tile: `videocrop` (whose edges may change while it plays),
/// set from the tile's shape and the picture's size, whichever is known last.
#[derive(Clone)]
pub(super) struct Crop {
    element: gst::Element,
    /// (the tile's w, h) to cover, or None (no crop); (the input's w, h) once its caps came.
    shape: Arc<Mutex<Shapes>>,
}

impl Crop {
    pub(super) fn new() -> Result<Crop> {
        let element = make("videocrop", None)?;
        let crop = Crop { element, shape: Arc::default() };
        // Weak: the probes live on the element's own pad.
        let (element, shape) = (crop.element.downgrade(), crop.shape.clone());
        let follow = Arc::new(move |caps: &gst::CapsRef| {
            // The size only: what is asked about need not be fixed in its format.
            let size =
                caps.structure(0).and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)));
            if let (Some(size), Some(element)) = (size, element.upgrade()) {
                shape.lock().unwrap().1 = Some(size);
                Crop { element, shape: shape.clone() }.apply();
            }
        });
        let sink = crop.element.static_pad("sink").expect("videocrop sink");
        // New caps are asked about before they come (a publisher's camera stopping sends a few
        // 8x8 frames): edges cut for the old size could leave nothing, and the refusal would
        // stop the whole connection's stream. The edges follow the size asked about, then the
        // size that came.
        let asked = follow.clone();
        sink.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Query(query)) = &info.data {
                match query.view() {
                    gst::QueryView::AcceptCaps(q) => asked(q.caps()),
                    gst::QueryView::Caps(q) => q.filter().into_iter().for_each(|c| asked(c)),
                    _ => {}
                }
            }
            gst::PadProbeReturn::Ok
        });
        sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data
                && let gst::EventView::Caps(caps) = event.view()
            {
                follow(caps.caps());
            }
            gst::PadProbeReturn::Ok
        });
        Ok(crop)
    }

    pub(super) fn element(&self) -> &gst::Element {
        &self.element
    }

    fn cover(&self, tile: Option<(i32, i32)>) {
        let changed = {
            let mut shape = self.shape.lock().unwrap();
            let changed = shape.0 != tile;
            shape.0 = tile;
            changed
        };
        if changed {
            self.apply();
        }
    }

    fn apply(&self) {
        let shape = *self.shape.lock().unwrap();
        let [left, right, top, bottom] = match shape {
            (Some(tile), Some(input)) => crop_edges(tile, input),
            _ => [0; 4],
        };
        for (name, value) in [("left", left), ("right", right), ("top", top), ("bottom", bottom)] {
            if self.element.property::<i32>(name) != value {
                self.element.set_property(name, value);
            }
        }
    }
}

/// Pixels to take off (left, right, top, bottom) of an `input`-sized picture so that it has the
/// shape of `tile`: the overflow of the longer side, split evenly.
fn crop_edges((tw, th): (i32, i32), (iw, ih): (i32, i32)) -> [i32; 4] {
    if tw <= 0 || th <= 0 || iw <= 0 || ih <= 0 {
        return [0; 4];
    }
    let (tw, th, iw64, ih64) = (i64::from(tw), i64::from(th), i64::from(iw), i64::from(ih));
    if iw64 * th > tw * ih64 {
        let keep = (ih64 * tw / th).max(2) as i32;
        let cut = iw - keep;
        [cut / 2, cut - cut / 2, 0, 0]
    } else {
        let keep = (iw64 * th / tw).max(2) as i32;
        let cut = ih - keep;
        [0, 0, cut / 2, cut - cut / 2]
    }
}

/// Parses `#rrggbb` (or `rrggbb`) into GStreamer's ARGB, opaque.
pub fn parse_color(text: &str) -> Option<u32> {
    let hex = text.strip_prefix('#').unwrap_or(text);
    if hex.len() != 6 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(|rgb| 0xff00_0000 | rgb)
}

impl Slot {
    /// Places every tile; attached tracks that no tile names are hidden, cards no longer
    /// named are removed. Tiles later in the list are drawn above earlier ones.
    pub fn arrange(&mut self, pipeline: &gst::Pipeline, tiles: &[Tile], background: Option<u32>) -> Result<()> {
        self.arranged = true;
        match background {
            None => {}
            // The compositor's own backgrounds cost nothing; another colour is the base
            // drawn full-frame below the tiles.
            Some(0xff00_0000) | Some(0xffff_ffff) => {
                let name = if background == Some(0xff00_0000) { "black" } else { "white" };
                self.mixer.set_property_from_str("background", name);
                hide(&self.base_pad);
            }
            Some(color) => {
                self.base.set_property_from_str("pattern", "solid-color");
                self.base.set_property("foreground-color", color);
                let (w, h) = self.size;
                place(&self.base_pad, Rect { x: 0, y: 0, w, h }, 0);
            }
        }
        let mut shown: HashMap<String, (Rect, Fit, u32)> = HashMap::new();
        let mut cards: Vec<(CardKey, Rect, u32)> = Vec::new();
        for (i, tile) in tiles.iter().enumerate() {
            let zorder = i as u32 + 1;
            match &tile.source {
                TileSource::Track(sid) => {
                    shown.insert(sid.clone(), (tile.rect, tile.fit, zorder));
                }
                TileSource::Card { text, background, color } => {
                    let key = CardKey {
                        text: text.clone(),
                        size: (tile.rect.w.max(2) & !1, tile.rect.h.max(2) & !1),
                        background: *background,
                        color: *color,
                    };
                    cards.push((key, tile.rect, zorder));
                }
            }
        }
        for (sid, attached) in &self.attached {
            match shown.get(sid) {
                Some((rect, fit, zorder)) => {
                    if let Some(crop) = &attached.crop {
                        crop.cover((*fit == Fit::Cover).then_some((rect.w, rect.h)));
                    }
                    place(&attached.pad, *rect, *zorder);
                }
                None => hide(&attached.pad),
            }
        }
        let stale: Vec<CardKey> = self.cards.keys().filter(|k| !cards.iter().any(|(c, ..)| c == *k)).cloned().collect();
        for key in stale {
            if let Some(card) = self.cards.remove(&key) {
                let out = card.out();
                self.card_ends.lock().unwrap().retain(|p| p != &out);
                card.remove(pipeline, &self.mixer);
            }
        }
        for (key, rect, zorder) in cards {
            if !self.cards.contains_key(&key) {
                let card = Card::build(pipeline, &key, self.fps, &self.mixer)?;
                place(&card.pad, rect, zorder);
                self.card_ends.lock().unwrap().push(card.out());
                self.start_or_defer(&card.elements);
                self.cards.insert(key.clone(), card);
            }
            let card = &self.cards[&key];
            place(&card.pad, rect, zorder);
        }
        Ok(())
    }

    /// Starts elements added to a slot now if it runs, else with it.
    fn start_or_defer(&self, elements: &[gst::Element]) {
        match self.running.lock().unwrap().as_mut() {
            Some(pending) => pending.extend(elements.iter().cloned()),
            None => sync_states(&elements.iter().collect::<Vec<_>>()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_crops_the_overflow_evenly() {
        // A 16:9 camera in a tall 8:9 tile loses its sides; in a wide tile, top and bottom.
        assert_eq!(crop_edges((320, 360), (640, 360)), [160, 160, 0, 0]);
        assert_eq!(crop_edges((128, 45), (320, 180)), [0, 0, 34, 34]);
        assert_eq!(crop_edges((320, 180), (640, 360)), [0, 0, 0, 0]);
        assert_eq!(parse_color("#1b1b1b"), Some(0xff1b1b1b));
        assert_eq!(parse_color("fff"), None);
    }
}
