//! One session timeline for every track of a room, from RTCP sender reports.
//!
//! webrtcbin's jitter buffers time each track by arrival: a video frame the publisher's encoder
//! or pacer held back 100 ms lands 100 ms late against its audio. A sender report pairs a
//! track's RTP clock with the sender's NTP clock, which every track of a publisher shares, so
//! RTP → NTP gives each packet its capture time. Per track:
//! - RTP → NTP runs at the track's nominal clock rate through the earliest of the last 20
//!   reports (their lower envelope). A sender computes a report from the moment its last
//!   frame reached the encoder, and a frame handed over late (a busy capture thread, a
//!   scheduler's wake-up) only ever makes that moment later: audio reports from one sender
//!   scatter over 15 ms, all on the late side. A least-squares line through them (LiveKit's
//!   way) took that scatter for a clock rate 600 ppm off, and the sound drifted from its
//!   picture by 0.6 ms every second until the fit forgot it. A sender's real clock error is
//!   tens of ppm: over the window's 60 s the envelope lags it by a few ms at most. An RTP jump
//!   of 30 s (a restarted sender) starts the window afresh;
//! - the one-way delay is the smallest (arrival − NTP) of those reports, per track as LiveKit
//!   keeps it (a sender's tracks reach their reports' NTP times differently: audio and video
//!   of one instant carry different capture stamps), without the encoder and pacer delays a
//!   packet's own arrival carries;
//! - `running = NTP + delay + shift`, where `shift` is one constant for the whole session, set
//!   when the first track locks so that track goes on without a jump (the others step by what
//!   their arrival timing was off, once, at their first lock).
//!
//! An audio track is placed one packet earlier than its reports say: libwebrtc pairs an audio
//! packet's RTP time (its first sample) with the moment the packet is complete, when the
//! microphone has handed over its last 10 ms chunk (video is paired with each frame's capture
//! time). For LiveKit's 20 ms Opus packets that is 20 ms of lateness in every real sender.
//!
//! Until its first report a track keeps its arrival time. Later corrections (a new line, a
//! new delay) are slewed at 5 ms per second of media with a 1 ms dead band, so nothing jumps;
//! so is the move from arrival timing at the first report, when it is 40 ms or less.
//! The window and the slew follow LiveKit's sync engine (server-sdk-go `pkg/synchronizer`);
//! the envelope and the narrower band are ours: LiveKit's 5 ms band kept, for good, up to
//! 5 ms of the first reports' lateness, which is always on the same side.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

const REPORTS: usize = 20;
const JUMP_NS: f64 = 30e9;
const SLEW_PER_S: f64 = 0.005;
const DEAD_BAND_NS: f64 = 1e6;
/// LiveKit's Opus packets (ptime 20), and the longest an audio packet may be (Opus's 120 ms).
const DEFAULT_AUDIO_PACKET_NS: f64 = 20e6;
const MAX_AUDIO_PACKET_NS: f64 = 120e6;
/// A correction this large is a new situation (a reset, a rejoin), not drift: stepped.
const STEP_NS: f64 = 1e9;
/// Before its first report, a track arriving this much slower than its fastest packet so far
/// is taken to be on a new path (see `TrackClock::before_reports`).
const FLOOR_RESET_NS: f64 = 250e6;
/// A track's first lock moves it from its arrival timing to its reports' by slewing up to
/// this far, by one step beyond.
const SLEWED_FIRST_STEP_NS: f64 = 40e6;

/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

#[derive(Clone, Copy, Debug)]
struct Report {
    rtp: u64,
    ntp_ns: i64,
    arrival_ns: i64,
}

/// RTP ticks → NTP nanoseconds: `ntp = base_ntp + (rtp - base_rtp) * slope`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Line {
    base_rtp: u64,
    base_ntp: i64,
    slope: f64,
}

impl Line {
    fn at(&self, rtp: u64) -> f64 {
        self.base_ntp as f64 + (rtp as f64 - self.base_rtp as f64) * self.slope
    }
}

#[derive(Default)]
struct TrackClock {
    clock_rate: Option<u32>,
    /// The last extended RTP time seen (packets and reports), to unwrap the next one.
    last_rtp: Option<u64>,
    reports: VecDeque<Report>,
    line: Option<Line>,
    delay_ns: i64,
    locked: bool,
    /// Added to the target to stay continuous after a correction; slewed toward 0.
    error_ns: f64,
    /// The extended RTP time of the last packet retimed.
    last_packet: Option<u64>,
    /// The shortest step between consecutive packets seen: an audio packet's duration.
    packet_ticks: Option<u64>,
    /// When its last packet was retimed.
    last_seen: Option<std::time::Instant>,
    /// Its packets of the last second.
    recent: VecDeque<Recent>,
    /// The stream whose timing it took over (see `Timeline::inherit`).
    inherited: bool,
    /// Until its first report: the least (arrival − RTP time) seen, in ns (`before_reports`).
    arrival_floor_ns: Option<f64>,
    /// Until its first report: where its last packet was placed.
    last_placed: Option<i64>,
}

impl TrackClock {
    /// 32-bit RTP time → extended, nearest to the last one seen.
    fn unwrap(&mut self, rtp: u32) -> u64 {
        let ext = match self.last_rtp {
            None => u64::from(rtp) + (1 << 32), // room to go backwards
            Some(last) => {
                let delta = rtp.wrapping_sub(last as u32) as i32;
                (last as i64 + i64::from(delta)).max(0) as u64
            }
        };
        if self.last_rtp.is_none_or(|last| ext > last) {
            self.last_rtp = Some(ext);
        }
        ext
    }

    fn nominal_slope(&self) -> Option<f64> {
        self.clock_rate.filter(|r| *r > 0).map(|r| 1e9 / f64::from(r))
    }

    /// The line at the nominal rate through the earliest report: for each report, how much
    /// later than the newest's line it says its RTP time was captured; the least of those
    /// is the sender's own timing, the rest is lateness in handing frames over.
    fn fit(&self) -> Option<Line> {
        let newest = *self.reports.back()?;
        let slope = self.nominal_slope()?;
        let earliest = self
            .reports
            .iter()
            .map(|r| (r.ntp_ns - newest.ntp_ns) as f64 - (r.rtp as f64 - newest.rtp as f64) * slope)
            .fold(f64::INFINITY, f64::min);
        Some(Line { base_rtp: newest.rtp, base_ntp: newest.ntp_ns + earliest.round() as i64, slope })
    }

    fn add_report(&mut self, report: Report) {
        if let Some(line) = self.line
            && (report.ntp_ns as f64 - line.at(report.rtp)).abs() > JUMP_NS
        {
            self.reports.clear(); // the sender restarted its RTP clock
        }
        self.reports.push_back(report);
        while self.reports.len() > REPORTS {
            self.reports.pop_front();
        }
        self.line = self.fit();
        self.delay_ns = self.reports.iter().map(|r| r.arrival_ns - r.ntp_ns).min().unwrap_or(0);
    }

    /// How much earlier than its stamp an audio packet's first sample was captured: the
    /// packet's duration (20 ms until two packets in a row tell).
    fn audio_lead_ns(&self, clock_rate: u32) -> f64 {
        match self.packet_ticks {
            Some(ticks) if clock_rate > 0 => (ticks as f64 * 1e9 / f64::from(clock_rate)).min(MAX_AUDIO_PACKET_NS),
            _ => DEFAULT_AUDIO_PACKET_NS,
        }
    }

    /// The least (arrival − RTP time) of its last second's packets, in ns, once they span half
    /// a second: the instant its RTP time 0 would have arrived, had it come as fast as its
    /// fastest packet.
    fn arrival_floor(&self) -> Option<f64> {
        let rate = f64::from(self.clock_rate.filter(|r| *r > 0)?);
        if !self.spans_half_a_second() {
            return None;
        }
        self.recent.iter().map(|p| p.arrival as f64 - p.rtp as f64 * 1e9 / rate).reduce(f64::min)
    }

    fn spans_half_a_second(&self) -> bool {
        self.recent
            .front()
            .zip(self.recent.back())
            .is_some_and(|(first, last)| last.arrival - first.arrival >= RECENT_NS / 2)
    }

    /// Where a packet goes until the track's first report: at its RTP time from the fastest
    /// arrival seen so far, never before the packet placed last. The jitter buffer's own
    /// smoothing starts from the first packet's arrival and takes 2 s to reach the fastest
    /// one: with 30 ms of network jitter a beep and its flash were 40-60 ms apart in the first
    /// second, as their first packets happened to come. A path that gets slower for good
    /// (250 ms) starts the floor afresh: packets would otherwise be placed that much before
    /// they can come.
    fn before_reports(&mut self, ext: u64, received: i64, clock_rate: u32) -> Option<i64> {
        if clock_rate == 0 {
            return None;
        }
        let delay = received as f64 - ext as f64 * 1e9 / f64::from(clock_rate);
        let floor = match self.arrival_floor_ns {
            Some(floor) if delay - floor < FLOOR_RESET_NS => floor.min(delay),
            _ => delay,
        };
        self.arrival_floor_ns = Some(floor);
        let placed = (floor + ext as f64 * 1e9 / f64::from(clock_rate)).round() as i64;
        let placed = self.last_placed.map_or(placed, |last| placed.max(last));
        self.last_placed = Some(placed);
        Some(placed)
    }

    /// The smallest (arrival − NTP) of its reports, if it has any.
    fn own_delay(&self) -> Option<i64> {
        (!self.reports.is_empty()).then_some(self.delay_ns)
    }
}

/// The timeline of one room session (shared by the subscribers a rejoin replaces, so tracks
/// line up the same way before and after).
#[derive(Default)]
pub struct Timeline {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tracks: HashMap<u32, TrackClock>,
    /// running time − (NTP + delay), set by the first track to lock.
    shift_ns: Option<f64>,
}

impl State {
    /// Where extended RTP time `rtp` of `ssrc` belongs on the session timeline, before the shift.
    fn target(&self, ssrc: u32, rtp: Option<u64>) -> Option<f64> {
        let track = self.tracks.get(&ssrc)?;
        Some(track.line?.at(rtp?) + track.own_delay()? as f64)
    }

    /// Applies `change` (a report) without moving the track's output: the difference goes
    /// into its error, which is then slewed away.
    fn continuous(&mut self, ssrc: u32, change: impl FnOnce(&mut State)) {
        let last = self.tracks.get(&ssrc).and_then(|t| t.last_packet);
        let before = self.target(ssrc, last);
        change(self);
        let after = self.target(ssrc, last);
        if let (Some(before), Some(after), Some(track)) = (before, after, self.tracks.get_mut(&ssrc)) {
            track.error_ns += before - after;
        }
    }
}

/// When a packet reached egret, in running time: `received` as it came, `smoothed` as the
/// jitter buffer evens arrival out (its PTS). Two connections compare by `received`: each
/// jitter buffer smooths its own way, ±10 ms apart while a new one settles. `payload` tells
/// the same packet on two connections apart from others (`handover::payload_fingerprint`;
/// 0 for unknown).
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub smoothed: i64,
    pub received: i64,
    pub payload: u64,
}

#[cfg(test)]
impl Arrival {
    /// A packet whose arrival the jitter buffer left as it was.
    fn at(ns: i64) -> Arrival {
        Arrival { smoothed: ns, received: ns, payload: 0 }
    }
}

/// A packet of the last second, to compare two connections' streams (`Timeline::inherit`).
#[derive(Clone, Copy, Debug)]
struct Recent {
    arrival: i64,
    rtp: u64,
    payload: u64,
}

/// The same packet reaches two connections within a few ms; a packet with the same payload
/// farther apart is another (DTX silence packets, 400 ms apart, are often alike).
const SAME_PACKET_NS: i64 = 100_000_000;

/// The RTP offset from `old`'s stream to `new`'s, from the packets both received (the same
/// payload within `SAME_PACKET_NS`): exact, where arrival floors are as far off as the two
/// streams' fastest packets of the last second differ (20 ms seen, a whole audio packet, when
/// one had only DTX silence). `None` until two pairs agree and outvote the others twice over,
/// `Some(None)` if no packet pairs at all (payloads that differ per connection).
fn paired_offset(old: &TrackClock, new: &TrackClock) -> Option<Option<i64>> {
    let mut by_payload: HashMap<u64, Vec<&Recent>> = HashMap::new();
    for packet in old.recent.iter().filter(|p| p.payload != 0) {
        by_payload.entry(packet.payload).or_default().push(packet);
    }
    let mut votes: HashMap<i64, usize> = HashMap::new();
    for packet in new.recent.iter().filter(|p| p.payload != 0) {
        for twin in by_payload.get(&packet.payload).into_iter().flatten() {
            if (twin.arrival - packet.arrival).abs() < SAME_PACKET_NS {
                *votes.entry(packet.rtp as i64 - twin.rtp as i64).or_default() += 1;
            }
        }
    }
    let pairs: usize = votes.values().sum();
    if pairs == 0 {
        return (old.spans_half_a_second() && new.spans_half_a_second()).then_some(None);
    }
    let (offset, agreeing) = votes.into_iter().max_by_key(|(_, n)| *n)?;
    (agreeing >= 2 && agreeing > 2 * (pairs - agreeing)).then_some(Some(offset))
}

/// How much of a stream's recent packets is kept to compare it with another (`inherit`).
const RECENT_NS: i64 = 1_000_000_000;

/// How recently a stream's last packet must have come for it to count as still delivering.
const DELIVERING: std::time::Duration = std::time::Duration::from_millis(500);

impl Timeline {
    /// Whether `ssrc` is placed from its sender reports (it had one, and its clock rate is known).
    pub fn is_timed(&self, ssrc: u32) -> bool {
        self.state.lock().unwrap().target(ssrc, Some(0)).is_some()
    }

    /// Whether packets of `ssrc` still come (one within the last 500 ms).
    pub fn is_delivering(&self, ssrc: u32) -> bool {
        let state = self.state.lock().unwrap();
        state.tracks.get(&ssrc).and_then(|t| t.last_seen).is_some_and(|seen| seen.elapsed() < DELIVERING)
    }

    /// Gives `new` the timing of `old` when both carry the same track (a rejoin's connection
    /// and its predecessor): `old`'s sender reports, shifted into `new`'s RTP time, join `new`'s
    /// own, and a packet of `new` lands exactly where the same packet of `old` does. The RTP
    /// offset between them comes from the packets both received (`paired_offset`), or, if no
    /// packet pairs, from the difference of their arrival floors (the server sends the same
    /// packet to both at once). Placed by its own few reports instead, `new` was up to 15 ms
    /// off (audio reports scatter that much), and the sound stepped when it took over.
    /// False until the offset is known, or if `old` has no reports.
    pub fn inherit(&self, new: u32, old: u32) -> bool {
        let mut state = self.state.lock().unwrap();
        let (Some(from), Some(to)) = (state.tracks.get(&old), state.tracks.get(&new)) else { return false };
        if to.inherited {
            return true;
        }
        let rate = match (from.clock_rate, to.clock_rate) {
            (Some(a), Some(b)) if a == b && a > 0 => f64::from(a),
            _ => return false,
        };
        let Some(old_line) = from.line else { return false };
        let (offset, by) = match paired_offset(from, to) {
            None => return false,
            Some(Some(offset)) => (offset, "the packets both received"),
            Some(None) => {
                let (Some(floor_old), Some(floor_new)) = (from.arrival_floor(), to.arrival_floor()) else {
                    return false;
                };
                (((floor_old - floor_new) * rate / 1e9).round() as i64, "arrival")
            }
        };
        let mut reports: Vec<Report> = from
            .reports
            .iter()
            .filter_map(|r| Some(Report { rtp: u64::try_from(r.rtp as i64 + offset).ok()?, ..*r }))
            .chain(to.reports.iter().copied())
            .collect();
        reports.sort_by_key(|r| r.ntp_ns);
        let (old_delay, old_error) = (from.delay_ns as f64, from.error_ns);
        let old_place = |rtp: u64| old_line.at(rtp.saturating_sub_signed(offset)) + old_delay + old_error;
        let to = state.tracks.get_mut(&new).expect("looked up above");
        to.reports = reports.into_iter().rev().take(REPORTS).rev().collect();
        let Some(line) = to.fit() else { return false };
        to.line = Some(line);
        to.delay_ns = to.reports.iter().map(|r| r.arrival_ns - r.ntp_ns).min().unwrap_or(0);
        // Its own reports may say earlier than the old ones: that is slewed in from here.
        to.error_ns = old_place(line.base_rtp) - (line.at(line.base_rtp) + to.delay_ns as f64);
        to.locked = true;
        to.inherited = true;
        let error_ms = to.error_ns / 1e6;
        tracing::info!(
            new,
            old,
            offset,
            by,
            error_ms,
            "a new connection's stream takes over the timing of its predecessor"
        );
        true
    }

    /// A sender report for `ssrc`: RTP time `rtp` was NTP time `ntp` (64-bit, 1900 epoch),
    /// received at running time `arrival_ns`.
    pub fn on_sender_report(&self, ssrc: u32, rtp: u32, ntp: u64, arrival_ns: i64) {
        let unix_ns = ((ntp >> 32).saturating_sub(NTP_UNIX_OFFSET_S) as i64) * 1_000_000_000
            + (((ntp & 0xffff_ffff) * 1_000_000_000) >> 32) as i64;
        let mut state = self.state.lock().unwrap();
        state.tracks.entry(ssrc).or_default();
        state.continuous(ssrc, |state| {
            let track = state.tracks.get_mut(&ssrc).expect("added above");
            let rtp = track.unwrap(rtp);
            track.add_report(Report { rtp, ntp_ns: unix_ns, arrival_ns });
            tracing::debug!(
                ssrc,
                rtp,
                ntp_ms = unix_ns / 1_000_000,
                arrival_ms = arrival_ns / 1_000_000,
                delay_ms = track.delay_ns as f64 / 1e6,
                slope_ppm = track.line.zip(track.nominal_slope()).map(|(l, n)| ((l.slope / n - 1.0) * 1e6).round()),
                error_ms = track.error_ns / 1e6,
                "sender report"
            );
        });
    }

    /// The running time a packet of `ssrc` with RTP time `rtp` belongs at; `arrival` is its
    /// running time from the jitter buffer (kept, smoothed, until the track's first report).
    /// `audio` packets are placed at their first sample's capture (see the module's notes).
    pub fn retime(&self, ssrc: u32, clock_rate: u32, rtp: u32, arrival: Arrival, audio: bool) -> i64 {
        let payload = arrival.payload;
        let Arrival { smoothed: arrival, received, .. } = arrival;
        let mut state = self.state.lock().unwrap();
        let track = state.tracks.entry(ssrc).or_default();
        if track.clock_rate.is_none() && clock_rate > 0 {
            track.clock_rate = Some(clock_rate);
            track.line = track.fit();
        }
        let ext = track.unwrap(rtp);
        track.last_seen = Some(std::time::Instant::now());
        track.recent.push_back(Recent { arrival: received, rtp: ext, payload });
        while track.recent.front().is_some_and(|p| p.arrival < received - RECENT_NS) {
            track.recent.pop_front();
        }
        if let Some(step) = track.last_packet.and_then(|last| ext.checked_sub(last)).filter(|s| *s > 0) {
            track.packet_ticks = Some(track.packet_ticks.map_or(step, |t| t.min(step)));
        }
        let lead = if audio { track.audio_lead_ns(clock_rate) } else { 0.0 };
        // Arrival timing carries the same lateness (a packet leaves once complete).
        let arrival =
            if track.locked { arrival } else { track.before_reports(ext, received, clock_rate).unwrap_or(arrival) };
        let arrival = arrival - lead as i64;
        let Some(target) = state.target(ssrc, Some(ext)).map(|t| t - lead) else {
            let track = state.tracks.get_mut(&ssrc).expect("added above");
            if track.last_packet.is_none_or(|last| ext > last) {
                track.last_packet = Some(ext);
            }
            return arrival;
        };
        let shift = *state.shift_ns.get_or_insert(arrival as f64 - target);
        let track = state.tracks.get_mut(&ssrc).expect("added above");
        if !track.locked {
            track.locked = true;
            // Its arrival timing was this far off. Up to 40 ms (within what the eye takes
            // for in sync) it is slewed away like any later correction: stepped, the sound
            // clicked or skipped. More (an encoder that held its video back 100 ms) is stepped
            // at once: slewed at 5 ms a second it would stay visibly out of sync for seconds.
            let step = target + shift - arrival as f64;
            track.error_ns = if step.abs() <= SLEWED_FIRST_STEP_NS { -step } else { 0.0 };
            let step_ms = step / 1e6;
            tracing::info!(ssrc, step_ms, reports = track.reports.len(), "track timed from sender reports from now on");
        } else if let Some(last) = track.last_packet {
            let media_s = ext.saturating_sub(last) as f64 / f64::from(clock_rate.max(1));
            if track.error_ns.abs() > STEP_NS {
                track.error_ns = 0.0;
            } else if track.error_ns.abs() > DEAD_BAND_NS {
                let step = (SLEW_PER_S * 1e9 * media_s).min(track.error_ns.abs() - DEAD_BAND_NS);
                track.error_ns -= step.copysign(track.error_ns);
            }
        }
        if track.last_packet.is_none_or(|last| ext > last) {
            track.last_packet = Some(ext);
        }
        (target + shift + track.error_ns).round() as i64
    }
}

/// The sender reports in a compound RTCP packet: (ssrc, NTP time, RTP time).
pub fn sender_reports(rtcp: &[u8]) -> Vec<(u32, u64, u32)> {
    let mut reports = Vec::new();
    let mut at = 0;
    while at + 4 <= rtcp.len() {
        let length = (usize::from(u16::from_be_bytes([rtcp[at + 2], rtcp[at + 3]])) + 1) * 4;
        let packet = &rtcp[at..rtcp.len().min(at + length)];
        if packet[0] >> 6 != 2 {
            break; // not RTCP version 2
        }
        if packet[1] == 200 && packet.len() >= 20 {
            let word = |i: usize| u32::from_be_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
            reports.push((word(4), (u64::from(word(8)) << 32) | u64::from(word(12)), word(16)));
        }
        at += length;
    }
    reports
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
