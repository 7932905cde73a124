//! Repairing a crash-safe MP4 that egret died under.
//!
//! While it is written, mp4mux's `first-moov-then-finalise` mode lays the file out as
//! `ftyp, mdat, moov(+mvex), [mdat, moof]…`: each fragment's samples come *before* the `moof`
//! that describes them (with absolute offsets), so the data is safe on disk after each
//! fragment, but no player reads that order (ffmpeg: "error reading header"). mp4mux rewrites
//! it into a plain MP4 at EOS; after SIGKILL nobody does.
//!
//! The repair is done in place and costs a few KB of writes whatever the file's size: every
//! sample the `moov` and the complete `moof`s describe is gathered, the old `moov` and every
//! `moof` are renamed `free` (their bytes stay, so no offset moves), the unfinished tail (the
//! fragment being written, ≤ one fragment of media) is cut, and a new plain `moov` describing
//! every sample is appended. The track headers, sample descriptions and start edits are kept.
//! A repaired file has no `mvex`, so running the repair again does nothing; a repair cut
//! short is finished from its journal.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::mp4_boxes::{
    Reader, be32, boxed, child, children, read_at, run_table, runs, top_level_boxes, with_duration,
};

/// What a repair found: the media duration of the longest track, in seconds.
pub struct Repaired {
    pub duration: f64,
}

/// Repairs `path` if it is a crash-left fragmented MP4; `Ok(None)` if it needs nothing
/// (already a plain MP4) or cannot be repaired (killed before the first `moov`).
///
/// The changes are planned first and written to a journal beside the file (written aside,
/// synced, renamed) before the file is touched; each change is idempotent. Killed midway, the
/// next repair finds the journal and finishes it, so the file is never left without an index.
pub fn repair(path: &Path) -> Result<Option<Repaired>> {
    let journal = journal_path(path);
    if let Some(plan) = Plan::read(&journal)? {
        plan.apply(path)?;
        std::fs::remove_file(&journal)?;
        return Ok(Some(Repaired { duration: plan.duration }));
    }
    let Some(plan) = Plan::make(path)? else { return Ok(None) };
    plan.write(&journal)?;
    plan.apply(path)?;
    std::fs::remove_file(&journal)?;
    Ok(Some(Repaired { duration: plan.duration }))
}

fn journal_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".repair");
    path.with_file_name(name)
}

/// What a repair does to the file: boxes renamed `free`, the file cut at `end`, the new
/// `moov` appended there.
struct Plan {
    end: u64,
    freed: Vec<u64>,
    moov: Vec<u8>,
    duration: f64,
}

const JOURNAL_MAGIC: &[u8; 8] = b"EGRETMP4";

impl Plan {
    fn make(path: &Path) -> Result<Option<Plan>> {
        let mut file = std::fs::File::open(path).context("opening the MP4")?;
        let len = file.metadata()?.len();
        let top = top_level_boxes(&mut file, len)?;
        let Some(moov) = top.iter().find(|b| &b.kind == b"moov" && b.complete) else { return Ok(None) };
        let moov_bytes = read_at(&mut file, moov.start, moov.size)?;
        let mut movie = Movie::parse(&moov_bytes[moov.header..])?;
        if !movie.fragmented {
            return Ok(None);
        }
        // The data of a fragment precedes its moof: the file ends with the last complete moof.
        let mut end = moov.start + moov.size;
        for b in top.iter().filter(|b| b.start > moov.start) {
            if &b.kind != b"moof" {
                continue;
            }
            if !b.complete {
                break;
            }
            let bytes = read_at(&mut file, b.start, b.size)?;
            movie.add_fragment(&bytes[b.header..], b.start)?;
            end = b.start + b.size;
        }
        let mdat_ends: Vec<u64> =
            top.iter().filter(|b| &b.kind == b"mdat" && b.complete).map(|b| b.start + b.size).collect();
        movie.complete_samples(&mdat_ends, end);
        // The old index boxes become padding; sizes stay, so every sample keeps its offset.
        let freed = top
            .iter()
            .filter(|b| b.start < end && (&b.kind == b"moov" || &b.kind == b"moof"))
            .map(|b| b.start)
            .collect();
        Ok(Some(Plan { end, freed, moov: movie.plain_moov(), duration: movie.duration_seconds() }))
    }

    fn apply(&self, path: &Path) -> Result<()> {
        let mut file = OpenOptions::new().write(true).open(path).context("opening the MP4")?;
        for &at in &self.freed {
            file.seek(SeekFrom::Start(at + 4))?;
            file.write_all(b"free")?;
        }
        file.set_len(self.end)?;
        file.seek(SeekFrom::Start(self.end))?;
        file.write_all(&self.moov)?;
        file.sync_all()?;
        Ok(())
    }

    fn write(&self, journal: &Path) -> Result<()> {
        let mut bytes = JOURNAL_MAGIC.to_vec();
        bytes.extend(self.end.to_be_bytes());
        bytes.extend(self.duration.to_bits().to_be_bytes());
        bytes.extend((self.freed.len() as u64).to_be_bytes());
        self.freed.iter().for_each(|at| bytes.extend(at.to_be_bytes()));
        bytes.extend(&self.moov);
        let aside = journal.with_extension("repair.tmp");
        let mut file = std::fs::File::create(&aside)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&aside, journal)?;
        if let Some(dir) = journal.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// The journal of a repair that was cut short, if there is one.
    fn read(journal: &Path) -> Result<Option<Plan>> {
        let bytes = match std::fs::read(journal) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut r = Reader::new(&bytes);
        if r.take(8)? != JOURNAL_MAGIC {
            bail!("{} is not a repair journal", journal.display());
        }
        let end = r.u64()?;
        let duration = f64::from_bits(r.u64()?);
        let n = r.u64()?;
        if n > bytes.len() as u64 / 8 {
            bail!("{} is damaged", journal.display());
        }
        let freed = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        let moov = bytes[r.at..].to_vec();
        Ok(Some(Plan { end, freed, moov, duration }))
    }
}

#[derive(Clone, Copy)]
struct Sample {
    offset: u64,
    size: u32,
    duration: u32,
    sync: bool,
    composition_offset: i32,
    /// mp4mux leaves some fragment samples without a size or a duration (and no default
    /// for either): worked out from what surrounds them.
    size_unknown: bool,
    duration_unknown: bool,
}

/// One track: its boxes as written (kept as they are) and every sample found.
struct Track {
    id: u32,
    timescale: u32,
    tkhd: Vec<u8>,
    edts: Option<Vec<u8>>,
    mdhd: Vec<u8>,
    hdlr: Vec<u8>,
    media_header: ([u8; 4], Vec<u8>),
    dinf: Vec<u8>,
    stsd: Vec<u8>,
    samples: Vec<Sample>,
    /// The decode time the samples found so far reach, in the track's timescale.
    decode_end: u64,
    // trex defaults, for fragments that do not say.
    default_duration: u32,
    default_size: u32,
    default_flags: u32,
}

struct Movie {
    mvhd: Vec<u8>,
    timescale: u32,
    tracks: Vec<Track>,
    fragmented: bool,
}

const NON_SYNC: u32 = 0x0001_0000;

impl Movie {
    fn parse(moov: &[u8]) -> Result<Movie> {
        let mvhd = child(moov, b"mvhd").context("no mvhd")?.to_vec();
        let timescale = if mvhd.first() == Some(&1) { be32(&mvhd, 20) } else { be32(&mvhd, 12) };
        let mut tracks = Vec::new();
        for (kind, trak) in children(moov) {
            if &kind == b"trak" {
                tracks.push(Track::parse(trak)?);
            }
        }
        let mvex = child(moov, b"mvex");
        if let Some(mvex) = mvex {
            for (kind, trex) in children(mvex) {
                if &kind != b"trex" {
                    continue;
                }
                let mut r = Reader::new(trex);
                r.take(4)?;
                let id = r.u32()?;
                let _description = r.u32()?;
                let (duration, size, flags) = (r.u32()?, r.u32()?, r.u32()?);
                if let Some(t) = tracks.iter_mut().find(|t| t.id == id) {
                    (t.default_duration, t.default_size, t.default_flags) = (duration, size, flags);
                }
            }
        }
        Ok(Movie { mvhd, timescale, tracks, fragmented: mvex.is_some() })
    }

    fn add_fragment(&mut self, moof: &[u8], moof_start: u64) -> Result<()> {
        for (kind, traf) in children(moof) {
            if &kind == b"traf" {
                self.add_traf(traf, moof_start)?;
            }
        }
        Ok(())
    }

    fn add_traf(&mut self, traf: &[u8], moof_start: u64) -> Result<()> {
        let tfhd = child(traf, b"tfhd").context("traf without tfhd")?;
        let mut r = Reader::new(tfhd);
        let flags = r.u32()? & 0xff_ffff;
        let id = r.u32()?;
        let Some(track) = self.tracks.iter_mut().find(|t| t.id == id) else { return Ok(()) };
        let base = if flags & 0x1 != 0 { r.u64()? } else { moof_start };
        if flags & 0x2 != 0 {
            r.u32()?;
        }
        let duration = if flags & 0x8 != 0 { r.u32()? } else { track.default_duration };
        let size = if flags & 0x10 != 0 { r.u32()? } else { track.default_size };
        let sample_flags = if flags & 0x20 != 0 { r.u32()? } else { track.default_flags };

        if let Some(tfdt) = child(traf, b"tfdt") {
            let mut r = Reader::new(tfdt);
            let version = r.u32()? >> 24;
            let decode_time = if version == 1 { r.u64()? } else { r.u32()? as u64 };
            // A fragment that starts later than the samples so far reach: the gap belongs to
            // the samples without a duration before it, else the last sample lasts until it.
            if decode_time > track.decode_end {
                let gap = decode_time - track.decode_end;
                let unknown = track.trailing_unknown_durations();
                let n = track.samples.len();
                if unknown > 0 {
                    for (i, s) in track.samples[n - unknown..].iter_mut().enumerate() {
                        let share = gap / unknown as u64 + if i + 1 == unknown { gap % unknown as u64 } else { 0 };
                        s.duration = share.min(u32::MAX as u64) as u32;
                    }
                } else if let Some(last) = track.samples.last_mut() {
                    last.duration = (last.duration as u64 + gap).min(u32::MAX as u64) as u32;
                }
                track.decode_end = decode_time;
            }
        }

        let mut data_at = base;
        for (kind, trun) in children(traf) {
            if &kind != b"trun" {
                continue;
            }
            let mut r = Reader::new(trun);
            let known = |present: bool, default: u32| present || default != 0;
            let head = r.u32()?;
            let (version, tflags) = (head >> 24, head & 0xff_ffff);
            let count = r.u32()?;
            if tflags & 0x1 != 0 {
                data_at = base.wrapping_add_signed(r.u32()? as i32 as i64);
            }
            let first_flags = if tflags & 0x4 != 0 { Some(r.u32()?) } else { None };
            for i in 0..count {
                let d = if tflags & 0x100 != 0 { r.u32()? } else { duration };
                let s = if tflags & 0x200 != 0 { r.u32()? } else { size };
                let f = match first_flags {
                    _ if tflags & 0x400 != 0 => r.u32()?,
                    Some(first) if i == 0 => first,
                    _ => sample_flags,
                };
                let cts = if tflags & 0x800 != 0 {
                    let v = r.u32()?;
                    if version == 0 { v.min(i32::MAX as u32) as i32 } else { v as i32 }
                } else {
                    0
                };
                track.samples.push(Sample {
                    offset: data_at,
                    size: s,
                    duration: d,
                    sync: f & NON_SYNC == 0,
                    composition_offset: cts,
                    size_unknown: !known(tflags & 0x200 != 0, size),
                    duration_unknown: !known(tflags & 0x100 != 0, duration),
                });
                track.decode_end += d as u64;
                data_at += s as u64;
            }
        }
        Ok(())
    }

    /// Sizes and durations mp4mux did not write: a sample runs to the next sample or the end
    /// of its `mdat`; a duration is the gap to the next fragment (filled when it was read) or,
    /// for a track's last sample, its predecessor's. Then every sample past `end` goes.
    fn complete_samples(&mut self, mdat_ends: &[u64], end: u64) {
        let mut bounds: Vec<u64> = self.tracks.iter().flat_map(|t| t.samples.iter().map(|s| s.offset)).collect();
        bounds.extend(mdat_ends);
        bounds.sort_unstable();
        for t in &mut self.tracks {
            for s in t.samples.iter_mut().filter(|s| s.size_unknown) {
                let next = bounds[bounds.partition_point(|&b| b <= s.offset)..].first().copied().unwrap_or(end);
                s.size = (next.min(end) - s.offset).min(u32::MAX as u64) as u32;
            }
            let (n, unknown) = (t.samples.len(), t.trailing_unknown_durations());
            if unknown > 0 && unknown < n {
                let known = t.samples[n - unknown - 1].duration;
                t.samples[n - unknown..].iter_mut().for_each(|s| s.duration = known);
            }
            t.samples.retain(|s| s.offset + s.size as u64 <= end && s.size > 0);
        }
    }

    fn duration_seconds(&self) -> f64 {
        self.tracks.iter().map(|t| t.media_duration() as f64 / t.timescale.max(1) as f64).fold(0.0, f64::max)
    }

    fn plain_moov(&self) -> Vec<u8> {
        let movie_duration = |t: &Track| t.media_duration() * self.timescale as u64 / t.timescale.max(1) as u64;
        let longest = self.tracks.iter().map(|t| movie_duration(t) + t.edit_delay()).max().unwrap_or(0);
        let mut body = boxed(b"mvhd", &with_duration(&self.mvhd, 16, 24, longest));
        for t in &self.tracks {
            body.extend(t.trak(movie_duration(t), self.timescale));
        }
        boxed(b"moov", &body)
    }
}

impl Track {
    fn parse(trak: &[u8]) -> Result<Track> {
        let tkhd = child(trak, b"tkhd").context("trak without tkhd")?.to_vec();
        let id = if tkhd.first() == Some(&1) { be32(&tkhd, 20) } else { be32(&tkhd, 12) };
        let mdia = child(trak, b"mdia").context("trak without mdia")?;
        let mdhd = child(mdia, b"mdhd").context("no mdhd")?.to_vec();
        let timescale = if mdhd.first() == Some(&1) { be32(&mdhd, 20) } else { be32(&mdhd, 12) };
        let minf = child(mdia, b"minf").context("no minf")?;
        let media_header = children(minf)
            .into_iter()
            .find(|(k, _)| matches!(k, b"vmhd" | b"smhd" | b"nmhd" | b"sthd"))
            .map(|(k, b)| (k, b.to_vec()))
            .context("no media header")?;
        let stbl = child(minf, b"stbl").context("no stbl")?;
        let mut track = Track {
            id,
            timescale,
            edts: child(trak, b"edts").map(<[u8]>::to_vec),
            hdlr: child(mdia, b"hdlr").context("no hdlr")?.to_vec(),
            dinf: child(minf, b"dinf").map(<[u8]>::to_vec).unwrap_or_default(),
            stsd: child(stbl, b"stsd").context("no stsd")?.to_vec(),
            tkhd,
            mdhd,
            media_header,
            samples: Vec::new(),
            decode_end: 0,
            default_duration: 0,
            default_size: 0,
            default_flags: 0,
        };
        track.read_sample_table(stbl)?;
        Ok(track)
    }

    /// The samples a (fragmented file's) moov already lists: the first fragment's.
    fn read_sample_table(&mut self, stbl: &[u8]) -> Result<()> {
        let sizes = {
            let mut r = Reader::new(child(stbl, b"stsz").context("no stsz")?);
            r.u32()?;
            let (fixed, count) = (r.u32()?, r.u32()?);
            (0..count).map(|_| if fixed != 0 { Ok(fixed) } else { r.u32() }).collect::<Result<Vec<u32>>>()?
        };
        let durations = runs(child(stbl, b"stts"))?;
        let offsets = runs(child(stbl, b"ctts"))?;
        let syncs = child(stbl, b"stss")
            .map(|b| -> Result<Vec<u32>> {
                let mut r = Reader::new(b);
                r.u32()?;
                let n = r.u32()?;
                (0..n).map(|_| r.u32()).collect()
            })
            .transpose()?;
        let chunks: Vec<u64> = if let Some(b) = child(stbl, b"stco") {
            let mut r = Reader::new(b);
            r.u32()?;
            let n = r.u32()?;
            (0..n).map(|_| r.u32().map(u64::from)).collect::<Result<_>>()?
        } else if let Some(b) = child(stbl, b"co64") {
            let mut r = Reader::new(b);
            r.u32()?;
            let n = r.u32()?;
            (0..n).map(|_| r.u64()).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let per_chunk = {
            let mut r = Reader::new(child(stbl, b"stsc").context("no stsc")?);
            r.u32()?;
            let n = r.u32()?;
            (0..n).map(|_| Ok((r.u32()?, r.u32()?, r.u32()?))).collect::<Result<Vec<_>>>()?
        };
        let mut sample = 0usize;
        for (chunk_index, &chunk_offset) in chunks.iter().enumerate() {
            let chunk_number = chunk_index as u32 + 1;
            let count = per_chunk.iter().rev().find(|(first, _, _)| *first <= chunk_number).map_or(0, |e| e.1);
            let mut at = chunk_offset;
            for _ in 0..count {
                let Some(&size) = sizes.get(sample) else { break };
                let duration = durations.get(sample).copied().unwrap_or(0) as u32;
                self.samples.push(Sample {
                    offset: at,
                    size,
                    duration,
                    sync: syncs.as_ref().is_none_or(|s| s.contains(&(sample as u32 + 1))),
                    composition_offset: offsets.get(sample).copied().unwrap_or(0),
                    size_unknown: false,
                    duration_unknown: false,
                });
                self.decode_end += duration as u64;
                at += size as u64;
                sample += 1;
            }
        }
        Ok(())
    }

    /// How many samples at the end have no duration yet.
    fn trailing_unknown_durations(&self) -> usize {
        self.samples.iter().rev().take_while(|s| s.duration_unknown && s.duration == 0).count()
    }

    fn media_duration(&self) -> u64 {
        self.samples.iter().map(|s| s.duration as u64).sum()
    }

    /// The empty edit before the media starts (a late start), in the movie's timescale.
    fn edit_delay(&self) -> u64 {
        self.edit_list().iter().filter(|(_, media_time)| *media_time == -1).map(|(d, _)| *d).sum()
    }

    fn edit_list(&self) -> Vec<(u64, i64)> {
        let Some(elst) = self.edts.as_deref().and_then(|e| child(e, b"elst")) else { return Vec::new() };
        let mut r = Reader::new(elst);
        let Ok(head) = r.u32() else { return Vec::new() };
        let n = r.u32().unwrap_or(0);
        let mut entries = Vec::new();
        for _ in 0..n {
            let entry = if head >> 24 == 1 {
                (r.u64(), r.u64().map(|t| t as i64))
            } else {
                (r.u32().map(u64::from), r.u32().map(|t| t as i32 as i64))
            };
            let (Ok(duration), Ok(media_time)) = entry else { break };
            r.take(4).ok();
            entries.push((duration, media_time));
        }
        entries
    }

    fn trak(&self, movie_duration: u64, movie_timescale: u32) -> Vec<u8> {
        let mut trak = boxed(b"tkhd", &with_duration(&self.tkhd, 20, 28, movie_duration + self.edit_delay()));
        // The start edit stays; the media's own edit now runs to its end.
        let edits = self.edit_list();
        if !edits.is_empty() {
            let mut elst = Vec::new();
            elst.extend(0x0100_0000u32.to_be_bytes());
            elst.extend((edits.len() as u32).to_be_bytes());
            for (duration, media_time) in edits {
                let skipped = media_time.max(0) as u64 * movie_timescale as u64 / self.timescale.max(1) as u64;
                let duration = if media_time == -1 { duration } else { movie_duration.saturating_sub(skipped) };
                elst.extend(duration.to_be_bytes());
                elst.extend(media_time.to_be_bytes());
                elst.extend(0x0001_0000u32.to_be_bytes());
            }
            trak.extend(boxed(b"edts", &boxed(b"elst", &elst)));
        }
        let mut minf = boxed(&self.media_header.0, &self.media_header.1);
        if !self.dinf.is_empty() {
            minf.extend(boxed(b"dinf", &self.dinf));
        }
        minf.extend(boxed(b"stbl", &self.sample_table()));
        let mut mdia = boxed(b"mdhd", &with_duration(&self.mdhd, 16, 24, self.media_duration()));
        mdia.extend(boxed(b"hdlr", &self.hdlr));
        mdia.extend(boxed(b"minf", &minf));
        trak.extend(boxed(b"mdia", &mdia));
        boxed(b"trak", &trak)
    }

    fn sample_table(&self) -> Vec<u8> {
        let n = self.samples.len() as u32;
        let mut stbl = boxed(b"stsd", &self.stsd);
        stbl.extend(boxed(b"stts", &run_table(self.samples.iter().map(|s| s.duration))));
        if self.samples.iter().any(|s| s.composition_offset != 0) {
            let table = run_table(self.samples.iter().map(|s| s.composition_offset as u32));
            let mut ctts = table.clone();
            // Version 1: signed offsets.
            ctts[0] = 1;
            stbl.extend(boxed(b"ctts", &ctts));
        }
        if self.samples.iter().any(|s| !s.sync) {
            let syncs: Vec<u32> = (1..=n).filter(|i| self.samples[*i as usize - 1].sync).collect();
            let mut stss = vec![0, 0, 0, 0];
            stss.extend((syncs.len() as u32).to_be_bytes());
            syncs.iter().for_each(|i| stss.extend(i.to_be_bytes()));
            stbl.extend(boxed(b"stss", &stss));
        }
        // One sample per chunk: plain, and every sample keeps its exact offset.
        let mut stsc = vec![0, 0, 0, 0];
        stsc.extend(if n > 0 { 1u32 } else { 0u32 }.to_be_bytes());
        if n > 0 {
            [1u32, 1, 1].iter().for_each(|v| stsc.extend(v.to_be_bytes()));
        }
        stbl.extend(boxed(b"stsc", &stsc));
        let mut stsz = vec![0; 8];
        stsz.extend(n.to_be_bytes());
        self.samples.iter().for_each(|s| stsz.extend(s.size.to_be_bytes()));
        stbl.extend(boxed(b"stsz", &stsz));
        let mut co64 = vec![0, 0, 0, 0];
        co64.extend(n.to_be_bytes());
        self.samples.iter().for_each(|s| co64.extend(s.offset.to_be_bytes()));
        stbl.extend(boxed(b"co64", &co64));
        stbl
    }
}

#[cfg(test)]
#[path = "mp4_repair_tests.rs"]
mod tests;
