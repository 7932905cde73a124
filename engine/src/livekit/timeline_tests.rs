//! The session timeline's placement of packets, with made-up reports and arrivals.

use super::*;

const NTP_2026: u64 = (NTP_UNIX_OFFSET_S + 1_795_000_000) << 32;

fn ntp_plus(ns: i64) -> u64 {
    let s = ns.div_euclid(1_000_000_000);
    let frac = ((ns.rem_euclid(1_000_000_000) as u64) << 32) / 1_000_000_000;
    NTP_2026 + ((s as u64) << 32) + frac
}

/// Audio (48 kHz) and video (90 kHz) of one sender, captured together, with video
/// arriving 120 ms later (its encoder and pacer): once both have a report, they line up.
#[test]
fn tracks_of_one_sender_line_up_whatever_their_arrival() {
    let timeline = Timeline::default();
    let (audio, video) = (1u32, 2u32);
    let net = 3_000_000; // 3 ms network
    let (a0, v0) = (1000u32, 5_000_000u32);
    // Before any report: arrival time.
    assert_eq!(timeline.retime(audio, 48000, a0, Arrival::at(100_000_000), false), 100_000_000);
    // Reports every 3 s for both tracks, from capture time t (ns since NTP_2026, which is
    // running time 0 here).
    for k in 0..6i64 {
        let t = k * 3_000_000_000;
        timeline.on_sender_report(audio, a0.wrapping_add((t * 48 / 1_000_000) as u32), ntp_plus(t), t + net);
        timeline.on_sender_report(video, v0.wrapping_add((t * 90 / 1_000_000) as u32), ntp_plus(t), t + net);
    }
    // A packet of each, captured at 16 s: audio arrives 20 ms after, video 140 ms after.
    let t = 16_000_000_000i64;
    let a =
        timeline.retime(audio, 48000, a0.wrapping_add((t * 48 / 1_000_000) as u32), Arrival::at(t + 20_000_000), false);
    let v = timeline.retime(
        video,
        90000,
        v0.wrapping_add((t * 90 / 1_000_000) as u32),
        Arrival::at(t + 140_000_000),
        false,
    );
    assert!((a - v).abs() < 100_000, "audio {a} video {v}: {} µs apart", (a - v) / 1000);
}

/// A rejoin's new connection carries the same audio under another SSRC and RTP offset.
/// Its only report is 12 ms late (audio reports scatter); the old stream's envelope is
/// exact. Inheriting, the new stream's packets land where the old one's do.
#[test]
fn a_new_connections_stream_lands_where_its_predecessors_did() {
    let timeline = Timeline::default();
    let (old, new) = (1u32, 2u32);
    let (o0, n0) = (1000u32, 777_777u32);
    let rtp = |base: u32, t: i64| base.wrapping_add((t * 48 / 1_000_000) as u32);
    for k in 0..5i64 {
        let t = k * 3_000_000_000;
        timeline.on_sender_report(old, rtp(o0, t), ntp_plus(t), t + 1_000_000);
    }
    // Both connections get each 20 ms packet at once (jitter ±0.4 ms), for a second.
    let mut placed = Vec::new();
    for i in 0..60i64 {
        let t = 14_000_000_000 + i * 20_000_000;
        let jitter = (i % 3 - 1) * 400_000;
        placed.push(timeline.retime(old, 48000, rtp(o0, t), Arrival::at(t + 5_000_000 + jitter), true));
        timeline.retime(new, 48000, rtp(n0, t), Arrival::at(t + 5_000_000 - jitter), true);
    }
    let t = 15_000_000_000i64;
    timeline.on_sender_report(new, rtp(n0, t - 12_000_000), ntp_plus(t), t + 1_000_000);
    assert!(timeline.inherit(new, old));
    let t = 15_200_000_000i64;
    let a = timeline.retime(old, 48000, rtp(o0, t), Arrival::at(t + 5_000_000), true);
    let b = timeline.retime(new, 48000, rtp(n0, t), Arrival::at(t + 5_000_000), true);
    assert!((a - b).abs() < 1_000_000, "old {a} new {b}: {} µs apart", (b - a) / 1000);
}

/// The new connection gets every packet 25 ms after the old one (another path, a busy
/// server), and its packets of silence are alike: the same packet, told by its payload,
/// still lands where it did on the old connection. Compared by their fastest arrivals, the
/// streams' offset would be off by those 25 ms.
#[test]
fn a_new_connection_on_a_slower_path_is_paired_packet_by_packet() {
    let timeline = Timeline::default();
    let (old, new) = (1u32, 2u32);
    let (o0, n0) = (1000u32, 777_777u32);
    let rtp = |base: u32, t: i64| base.wrapping_add((t * 48 / 1_000_000) as u32);
    for k in 0..5i64 {
        let t = k * 3_000_000_000;
        timeline.on_sender_report(old, rtp(o0, t), ntp_plus(t), t + 1_000_000);
    }
    // A beep of 10 packets, then DTX silence: a packet every 400 ms, all alike.
    let sent: Vec<(i64, u64)> = (0..10i64)
        .map(|i| (14_000_000_000 + i * 20_000_000, 1000 + i as u64))
        .chain((1..4i64).map(|i| (14_200_000_000 + i * 400_000_000, 7)))
        .collect();
    for (i, &(t, payload)) in sent.iter().enumerate() {
        if i > 0 {
            assert!(!timeline.inherit(new, old) || i >= 2, "inherited from one packet");
        }
        let at = |delay: i64| Arrival { smoothed: t + delay, received: t + delay, payload };
        timeline.retime(old, 48000, rtp(o0, t), at(5_000_000), true);
        timeline.retime(new, 48000, rtp(n0, t), at(30_000_000), true);
    }
    assert!(timeline.inherit(new, old));
    let t = 15_600_000_000i64;
    let a = timeline.retime(old, 48000, rtp(o0, t), Arrival::at(t + 5_000_000), true);
    let b = timeline.retime(new, 48000, rtp(n0, t), Arrival::at(t + 30_000_000), true);
    assert!((a - b).abs() < 1_000_000, "old {a} new {b}: {} µs apart", (b - a) / 1000);
}

/// Before any report, packets are placed from the fastest arrival so far, not from the
/// first one: an audio and a video stream captured together, whose first packets happened
/// to be held up 60 ms and 10 ms by the network (later ones 0-60 ms), are placed within
/// a few ms of each other once each has had a fast packet, and no track goes backwards.
#[test]
fn before_reports_packets_are_placed_by_their_fastest_arrival() {
    let timeline = Timeline::default();
    let (audio, video) = (1u32, 2u32);
    let net = |i: i64, first: i64| if i == 0 { first } else { (i * 37 % 61) * 1_000_000 };
    let (mut last_a, mut last_v) = (i64::MIN, i64::MIN);
    let mut apart = Vec::new();
    for i in 0..50i64 {
        let t = 1_000_000_000 + i * 20_000_000; // a packet of each every 20 ms
        let a = timeline.retime(audio, 48000, (t * 48 / 1_000_000) as u32, Arrival::at(t + net(i, 60_000_000)), false);
        let v = timeline.retime(video, 90000, (t * 90 / 1_000_000) as u32, Arrival::at(t + net(i, 10_000_000)), false);
        assert!(a >= last_a && v >= last_v, "a track went backwards at packet {i}");
        (last_a, last_v) = (a, v);
        apart.push((a - v).abs());
    }
    let settled = apart[10..].iter().max().unwrap();
    assert!(*settled <= 2_000_000, "audio and video {} µs apart after 10 packets", settled / 1000);
}

/// A sender stamps an audio packet when it is complete (its first sample 20 ms earlier for
/// 20 ms packets) and a video frame when captured: the beep and the flash of one instant
/// end up together.
#[test]
fn audio_packets_are_placed_at_their_first_sample() {
    let timeline = Timeline::default();
    let (audio, video) = (1u32, 2u32);
    for k in 0..3i64 {
        let t = k * 3_000_000_000;
        // The audio reports say sample t was captured at t + 20 ms.
        timeline.on_sender_report(audio, (t * 48 / 1_000_000) as u32, ntp_plus(t + 20_000_000), t + 21_000_000);
        timeline.on_sender_report(video, (t * 90 / 1_000_000) as u32, ntp_plus(t), t + 1_000_000);
    }
    let t = 7_000_000_000i64;
    let rtp = |ns: i64| (ns * 48 / 1_000_000) as u32;
    timeline.retime(audio, 48000, rtp(t - 40_000_000), Arrival::at(t), true);
    timeline.retime(audio, 48000, rtp(t - 20_000_000), Arrival::at(t), true);
    let a = timeline.retime(audio, 48000, rtp(t), Arrival::at(t + 30_000_000), true);
    let v = timeline.retime(video, 90000, (t * 90 / 1_000_000) as u32, Arrival::at(t + 90_000_000), false);
    assert!((a - v).abs() < 100_000, "audio {a} video {v}: {} µs apart", (a - v) / 1000);
}

/// A correction after lock is slewed: 5 ms per second of media, not a jump.
#[test]
fn corrections_are_slewed() {
    let timeline = Timeline::default();
    let ssrc = 7;
    let rate = 48000u32;
    timeline.on_sender_report(ssrc, 0, ntp_plus(0), 0);
    let mut last = timeline.retime(ssrc, rate, 0, Arrival::at(0), false);
    // The next report says the delay is 50 ms longer (a slower path): the output moves
    // toward it, by at most 5 ms a second.
    let second = rate;
    timeline.on_sender_report(ssrc, second, ntp_plus(1_000_000_000), 1_000_000_000);
    timeline.on_sender_report(ssrc, 2 * second, ntp_plus(2_000_000_000), 2_050_000_000);
    for k in 1..=40u32 {
        let rtp = k * rate / 10; // every 100 ms
        let now = timeline.retime(ssrc, rate, rtp, Arrival::at(0), false);
        let step = now - last - 100_000_000;
        assert!(step.abs() <= 600_000, "packet {k} moved {step} ns beyond its 100 ms");
        last = now;
    }
}

/// A second track, 15 ms off by arrival, gets its first report: it goes on from where it
/// was and slews to its place (5 ms a second), where it used to step 15 ms at once. A
/// track 120 ms off is stepped.
#[test]
fn a_small_first_lock_is_slewed_and_a_large_one_stepped() {
    for (off_ms, stepped) in [(15i64, false), (-15, false), (120, true)] {
        let timeline = Timeline::default();
        let (first, second) = (1u32, 2u32);
        let rtp = |ns: i64| (ns * 48 / 1_000_000) as u32;
        timeline.on_sender_report(first, rtp(0), ntp_plus(0), 1_000_000);
        timeline.retime(first, 48000, rtp(0), Arrival::at(1_000_000), false);
        // The second track arrives `off_ms` later than its reports place it.
        let arrival = |ns: i64| Arrival::at(ns + 1_000_000 + off_ms * 1_000_000);
        let before = timeline.retime(second, 48000, rtp(980_000_000), arrival(980_000_000), false);
        timeline.on_sender_report(second, rtp(900_000_000), ntp_plus(900_000_000), 901_000_000);
        let mut last = before;
        let mut placed = 0;
        for k in 1..=200i64 {
            let t = 980_000_000 + k * 20_000_000;
            placed = timeline.retime(second, 48000, rtp(t), arrival(t), false);
            let step = placed - last - 20_000_000;
            if stepped && k == 1 {
                assert!((step + off_ms * 1_000_000).abs() < 100_000, "{off_ms} ms: stepped by {step} ns");
            } else {
                assert!(step.abs() <= 150_000, "{off_ms} ms: packet {k} moved {step} ns beyond its 20 ms");
            }
            last = placed;
        }
        // 4 s later: within the dead band of its place.
        let target = 980_000_000 + 200 * 20_000_000 + 1_000_000;
        assert!((placed - target).abs() <= 1_000_000, "{off_ms} ms: {} µs from its place", (placed - target) / 1000);
    }
}

/// Audio reports scattered late by up to 15 ms (frames handed over late), one sender:
/// the line follows the earliest, so a packet lands where it was captured, and it keeps
/// doing so over a minute (a least-squares line drifted 0.6 ms a second on such reports).
#[test]
fn late_scattered_reports_neither_offset_nor_drift() {
    let timeline = Timeline::default();
    let (audio, video) = (1u32, 2u32);
    // Lateness of each report in ms, as measured from a Python publisher.
    let late = [0.3, 5.7, 0.0, 0.2, 6.5, 7.6, 7.8, 14.0, 13.9, 1.1, 8.0, 12.0, 3.0, 9.5];
    let rtp = |ns: i64, khz: i64| (ns * khz / 1_000_000) as u32;
    for (k, late_ms) in late.iter().enumerate() {
        let t = k as i64 * 3_000_000_000;
        let late_ns = (late_ms * 1e6) as i64;
        timeline.on_sender_report(audio, rtp(t - late_ns, 48), ntp_plus(t), t + 1_000_000);
        timeline.on_sender_report(video, rtp(t, 90), ntp_plus(t), t + 1_000_000);
        // One packet of each, captured together 1.5 s after the report.
        let at = t + 1_500_000_000;
        let a = timeline.retime(audio, 48000, rtp(at, 48), Arrival::at(at + 30_000_000), false);
        // (Arriving as the audio does: a first lock off by arrival is slewed, another test's
        // subject.)
        let v = timeline.retime(video, 90000, rtp(at, 90), Arrival::at(at + 30_000_000), false);
        assert!((a - v).abs() <= 1_000_000, "report {k}: audio {a} video {v}: {} µs apart", (a - v) / 1000);
    }
}

#[test]
fn sender_reports_are_found_in_compound_packets() {
    // SR (ssrc 0x11, no report blocks) + SDES (empty).
    let mut packet = vec![0x80, 200, 0, 6];
    packet.extend(0x11u32.to_be_bytes());
    packet.extend(0x0102_0304_0506_0708u64.to_be_bytes());
    packet.extend(0x0a0b_0c0du32.to_be_bytes());
    packet.extend([0u8; 8]);
    packet.extend([0x80, 202, 0, 0]);
    assert_eq!(sender_reports(&packet), vec![(0x11, 0x0102_0304_0506_0708, 0x0a0b_0c0d)]);
}
