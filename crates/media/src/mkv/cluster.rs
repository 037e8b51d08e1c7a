//! Scans a `Cluster`'s block headers (never their payloads) into raw block records, splitting
//! laced blocks (Xiph, EBML and fixed-size lacing) into one record per frame.

use std::collections::HashMap;
use std::io::{Read, Seek};

use super::ids;
use crate::ebml::{self, Header};
use crate::error::MediaError;
use crate::source::Source;

/// One frame found in a cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawFrame {
    pub track: u64,
    pub offset: u64,
    pub size: u32,
    /// Presentation timestamp in TimestampScale ticks.
    pub ts: i64,
    pub keyframe: bool,
    /// BlockDuration in ticks, if given.
    pub duration: Option<u64>,
}

/// A block as found in a cluster, before lacing is resolved.
struct BlockRef {
    data: u64,
    end: u64,
    simple: bool,
}

/// Scans the cluster whose header is `cluster` and appends its frames to `out`. Returns the end
/// of the cluster (for unknown sizes, where the next top-level element starts). `frame_ticks`
/// gives each track's DefaultDuration in ticks, used to time the frames of laced blocks. At most
/// `budget` frames are added (decremented here).
pub(crate) fn scan<R: Read + Seek>(
    src: &mut Source<R>,
    cluster: &Header,
    limit: u64,
    frame_ticks: &HashMap<u64, i64>,
    out: &mut Vec<RawFrame>,
    budget: &mut u64,
) -> Result<u64, MediaError> {
    const P: &str = "Segment/Cluster";
    let end = cluster.end_or(limit).min(limit);
    let mut cluster_ts: i64 = 0;
    let mut pos = cluster.data;
    while pos < end {
        src.seek_to(pos)?;
        let h = match ebml::read_header(src) {
            Ok(h) => h,
            // A truncated tail ends the cluster.
            Err(_) => return Ok(end),
        };
        if cluster.size.is_none() && ids::is_top_level(h.id) {
            return Ok(h.start);
        }
        let Some(size) = h.size else {
            return Err(MediaError::malformed(
                P,
                h.start,
                format!("child 0x{:X} of unknown size", h.id),
            ));
        };
        let h_end = h.data.saturating_add(size);
        if h_end > end {
            // Truncated element: ignore it and stop.
            return Ok(end);
        }
        match h.id {
            ids::TIMESTAMP => {
                let ts = ebml::read_uint(src, size, "Segment/Cluster/Timestamp")?;
                cluster_ts = i64::try_from(ts).unwrap_or(i64::MAX);
            }
            ids::SIMPLE_BLOCK => {
                let b = BlockRef {
                    data: h.data,
                    end: h_end,
                    simple: true,
                };
                read_block(src, &b, cluster_ts, None, true, frame_ticks, out, budget)?;
            }
            ids::BLOCK_GROUP => {
                let mut block = None;
                let mut duration = None;
                let mut referenced = false;
                let mut p = h.data;
                while p < h_end {
                    src.seek_to(p)?;
                    let c = ebml::read_header(src)?;
                    let c_end = c
                        .size
                        .map(|s| c.data.saturating_add(s))
                        .filter(|&e| e <= h_end)
                        .ok_or_else(|| {
                            MediaError::malformed(
                                "Segment/Cluster/BlockGroup",
                                c.start,
                                "bad child size",
                            )
                        })?;
                    match c.id {
                        ids::BLOCK => {
                            block = Some(BlockRef {
                                data: c.data,
                                end: c_end,
                                simple: false,
                            })
                        }
                        ids::BLOCK_DURATION => {
                            duration = Some(ebml::read_uint(
                                src,
                                c_end - c.data,
                                "Segment/Cluster/BlockGroup/BlockDuration",
                            )?)
                        }
                        ids::REFERENCE_BLOCK => referenced = true,
                        _ => {}
                    }
                    p = c_end;
                }
                if let Some(b) = block {
                    read_block(
                        src,
                        &b,
                        cluster_ts,
                        duration,
                        !referenced,
                        frame_ticks,
                        out,
                        budget,
                    )?;
                }
            }
            _ => {}
        }
        pos = h_end;
    }
    Ok(end)
}

/// Parses one block's header (and lace sizes) and appends its frames.
#[allow(clippy::too_many_arguments)]
fn read_block<R: Read + Seek>(
    src: &mut Source<R>,
    b: &BlockRef,
    cluster_ts: i64,
    duration: Option<u64>,
    group_key: bool,
    frame_ticks: &HashMap<u64, i64>,
    out: &mut Vec<RawFrame>,
    budget: &mut u64,
) -> Result<(), MediaError> {
    const P: &str = "Segment/Cluster/Block";
    src.seek_to(b.data)?;
    let (track, _) = ebml::read_plain_vint(src, P)?;
    let mut hdr = [0u8; 3];
    src.read_exact(&mut hdr)?;
    let rel = i64::from(i16::from_be_bytes([hdr[0], hdr[1]]));
    let flags = hdr[2];
    let keyframe = if b.simple {
        flags & 0x80 != 0
    } else {
        group_key
    };
    let ts = cluster_ts.saturating_add(rel);
    let lacing = (flags >> 1) & 3;
    let mut sizes: Vec<u64> = Vec::new();
    if lacing != 0 {
        let frames = u64::from(src.read_u8()?) + 1;
        match lacing {
            // Xiph: each size but the last as a run of 255s plus a final byte.
            1 => {
                for _ in 1..frames {
                    let mut s = 0u64;
                    loop {
                        let v = src.read_u8()?;
                        s += u64::from(v);
                        if v != 255 {
                            break;
                        }
                        if src.pos() >= b.end {
                            return Err(MediaError::malformed(
                                P,
                                b.data,
                                "Xiph lace overruns block",
                            ));
                        }
                    }
                    sizes.push(s);
                }
            }
            // EBML: first size, then signed differences.
            3 => {
                let (first, _) = ebml::read_plain_vint(src, P)?;
                sizes.push(first);
                let mut prev = i128::from(first);
                for _ in 2..frames {
                    let (raw, len) = ebml::read_plain_vint(src, P)?;
                    let bias = (1i128 << (7 * len - 1)) - 1;
                    prev += i128::from(raw) - bias;
                    let s = u64::try_from(prev)
                        .map_err(|_| MediaError::malformed(P, b.data, "negative EBML lace size"))?;
                    sizes.push(s);
                }
            }
            // Fixed-size: filled in below.
            _ => {}
        }
        let header_end = src.pos();
        if header_end > b.end {
            return Err(MediaError::malformed(
                P,
                b.data,
                "lace header overruns block",
            ));
        }
        let total = b.end - header_end;
        if lacing == 2 {
            if !total.is_multiple_of(frames) {
                return Err(MediaError::malformed(
                    P,
                    b.data,
                    "fixed lacing does not divide the block",
                ));
            }
            sizes = vec![total / frames; usize::try_from(frames).unwrap_or(0)];
        } else {
            let used: u64 = sizes.iter().fold(0u64, |a, &s| a.saturating_add(s));
            if used > total {
                return Err(MediaError::malformed(
                    P,
                    b.data,
                    "lace sizes exceed the block",
                ));
            }
            sizes.push(total - used);
        }
    } else {
        let header_end = src.pos();
        if header_end > b.end {
            return Err(MediaError::malformed(
                P,
                b.data,
                "block header overruns block",
            ));
        }
        sizes.push(b.end - header_end);
    }
    let step = frame_ticks.get(&track).copied().unwrap_or(0);
    let mut offset = src.pos();
    for (i, &s) in sizes.iter().enumerate() {
        if *budget == 0 {
            return Ok(());
        }
        let size =
            u32::try_from(s).map_err(|_| MediaError::malformed(P, b.data, "frame over 4 GiB"))?;
        let n = i64::try_from(i).unwrap_or(0);
        out.push(RawFrame {
            track,
            offset,
            size,
            ts: ts.saturating_add(step.saturating_mul(n)),
            keyframe,
            duration: if sizes.len() == 1 { duration } else { None },
        });
        *budget -= 1;
        offset = offset.saturating_add(s);
    }
    Ok(())
}
