//! MP4 boxes as `mp4_repair` reads and writes them: the top-level layout of a file, the
//! children of a container, big-endian fields, run-length sample tables.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Result, bail};

pub(super) struct TopBox {
    pub kind: [u8; 4],
    pub start: u64,
    pub size: u64,
    pub header: usize,
    pub complete: bool,
}

pub(super) fn top_level_boxes(file: &mut std::fs::File, len: u64) -> Result<Vec<TopBox>> {
    let mut boxes = Vec::new();
    let mut at = 0u64;
    while at + 8 <= len {
        let head = read_at(file, at, 16.min(len - at))?;
        let mut size = u32::from_be_bytes(head[0..4].try_into().unwrap()) as u64;
        let kind: [u8; 4] = head[4..8].try_into().unwrap();
        let mut header = 8;
        if size == 1 {
            if head.len() < 16 {
                break;
            }
            size = u64::from_be_bytes(head[8..16].try_into().unwrap());
            header = 16;
        }
        // Size 0 is "to the end of the file": a box still being written.
        let complete = size >= header as u64 && at + size <= len;
        let size = if size == 0 || !complete { len - at } else { size };
        boxes.push(TopBox { kind, start: at, size, header, complete });
        at += size;
    }
    Ok(boxes)
}

pub(super) fn read_at(file: &mut std::fs::File, at: u64, len: u64) -> Result<Vec<u8>> {
    if len > 64 << 20 {
        bail!("a {len}-byte header box is not an MP4 header");
    }
    let mut bytes = vec![0; len as usize];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The boxes inside a container body: (type, body) pairs.
pub(super) fn children(mut body: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    while body.len() >= 8 {
        let mut size = u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = body[4..8].try_into().unwrap();
        let mut header = 8;
        if size == 1 && body.len() >= 16 {
            size = u64::from_be_bytes(body[8..16].try_into().unwrap()) as usize;
            header = 16;
        } else if size == 0 {
            size = body.len();
        }
        if size < header || size > body.len() {
            break;
        }
        out.push((kind, &body[header..size]));
        body = &body[size..];
    }
    out
}

pub(super) fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(body).into_iter().find(|(k, _)| k == kind).map(|(_, b)| b)
}

/// Reads big-endian fields off a full box body.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pub at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let Some(slice) = self.bytes.get(self.at..self.at + n) else { bail!("a box ends early") };
        self.at += n;
        Ok(slice)
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// A run-length table body (stts, ctts): version/flags, count, (count, value) pairs.
pub(super) fn run_table(values: impl Iterator<Item = u32>) -> Vec<u8> {
    let mut entries: Vec<(u32, u32)> = Vec::new();
    for v in values {
        match entries.last_mut() {
            Some((count, last)) if *last == v => *count += 1,
            _ => entries.push((1, v)),
        }
    }
    let mut body = vec![0, 0, 0, 0];
    body.extend((entries.len() as u32).to_be_bytes());
    for (count, v) in entries {
        body.extend(count.to_be_bytes());
        body.extend(v.to_be_bytes());
    }
    body
}

/// A run-length table (stts, ctts) expanded to one value per sample.
pub(super) fn runs(body: Option<&[u8]>) -> Result<Vec<i32>> {
    let Some(body) = body else { return Ok(Vec::new()) };
    let mut r = Reader::new(body);
    r.u32()?;
    let n = r.u32()?;
    let mut values = Vec::new();
    for _ in 0..n {
        let (count, value) = (r.u32()?, r.u32()? as i32);
        if values.len() + count as usize > 50_000_000 {
            bail!("a sample table longer than any recording");
        }
        values.extend(std::iter::repeat_n(value, count as usize));
    }
    Ok(values)
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_be_bytes(s.try_into().unwrap()))
}

/// A full box body (mvhd, tkhd, mdhd) with its duration field set: at `v0` in version 0
/// (32 bits), at `v1` in version 1 (64 bits). A duration too long for version 0 stays
/// at its maximum.
pub(super) fn with_duration(body: &[u8], v0: usize, v1: usize, duration: u64) -> Vec<u8> {
    let mut body = body.to_vec();
    if body.first() == Some(&1) {
        if let Some(field) = body.get_mut(v1..v1 + 8) {
            field.copy_from_slice(&duration.to_be_bytes());
        }
    } else if let Some(field) = body.get_mut(v0..v0 + 4) {
        field.copy_from_slice(&(duration.min(u32::MAX as u64) as u32).to_be_bytes());
    }
    body
}

pub(super) fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend(((body.len() + 8) as u32).to_be_bytes());
    out.extend(kind);
    out.extend(body);
    out
}
