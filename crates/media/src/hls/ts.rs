//! MPEG-TS segments (ISO/IEC 13818-1) for the classic HLS variant: H.264 and AAC only,
//! the same samples as the fMP4 rendition, as PES packets in 188-byte TS packets.
//!
//! One program: PAT, PMT (video PID 0x100 carries the PCR; audio-only: the audio PID),
//! H.264 in Annex B with an access unit delimiter and its parameter sets before every
//! keyframe, AAC in ADTS. Timestamps are 90 kHz.

use bytes::{BufMut, Bytes, BytesMut};

const PACKET: usize = 188;
const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;

/// CRC-32/MPEG-2 of PSI sections.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// What the segmenter needs of the tracks.
#[derive(Debug, Clone)]
pub(crate) struct TsTracks {
    /// H.264 SPS and PPS NAL units, sent before every keyframe.
    pub(crate) parameter_sets: Option<Vec<Bytes>>,
    /// AAC: (ADTS profile, sampling frequency index, channel configuration, sample rate).
    pub(crate) aac: Option<(u8, u8, u8, u32)>,
}

/// Builds one TS segment at a time.
#[derive(Debug)]
pub(crate) struct TsWriter {
    tracks: TsTracks,
    out: BytesMut,
    /// Continuity counters of PAT, PMT, video, audio.
    cc: [u8; 4],
}

impl TsWriter {
    pub(crate) fn new(tracks: TsTracks) -> TsWriter {
        let mut w = TsWriter {
            tracks,
            out: BytesMut::new(),
            cc: [0; 4],
        };
        w.tables();
        w
    }

    fn pcr_pid(&self) -> u16 {
        if self.tracks.parameter_sets.is_some() {
            VIDEO_PID
        } else {
            AUDIO_PID
        }
    }

    /// Writes a PSI section (PAT or PMT) in one packet.
    fn section(&mut self, pid: u16, cc: usize, body: &[u8]) {
        let mut p = BytesMut::with_capacity(PACKET);
        p.put_u8(0x47);
        p.put_u16(0x4000 | pid);
        p.put_u8(0x10 | (self.cc[cc] & 0x0f));
        self.cc[cc] = self.cc[cc].wrapping_add(1);
        p.put_u8(0); // pointer field
        p.put_slice(body);
        p.put_u32(crc32(body));
        p.resize(PACKET, 0xff);
        self.out.put(p);
    }

    /// PAT and PMT, at the start of every segment.
    fn tables(&mut self) {
        let pat = [
            0x00,
            0xb0,
            0x0d,
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00,
            0x00,
            0x01,
            0xe0 | (PMT_PID >> 8) as u8,
            PMT_PID as u8,
        ];
        self.section(0, 0, &pat);
        let mut streams = Vec::new();
        if self.tracks.parameter_sets.is_some() {
            streams.extend_from_slice(&[
                0x1b,
                0xe0 | (VIDEO_PID >> 8) as u8,
                VIDEO_PID as u8,
                0xf0,
                0,
            ]);
        }
        if self.tracks.aac.is_some() {
            streams.extend_from_slice(&[
                0x0f,
                0xe0 | (AUDIO_PID >> 8) as u8,
                AUDIO_PID as u8,
                0xf0,
                0,
            ]);
        }
        let len = 9 + streams.len() + 4;
        let pcr = self.pcr_pid();
        let mut pmt = vec![
            0x02,
            0xb0 | ((len >> 8) as u8 & 0x0f),
            len as u8,
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00,
            0xe0 | (pcr >> 8) as u8,
            pcr as u8,
            0xf0,
            0x00,
        ];
        pmt.extend_from_slice(&streams);
        self.section(PMT_PID, 1, &pmt);
    }

    /// Appends one video access unit (4-byte length-prefixed NAL units) at 90 kHz times.
    pub(crate) fn video(&mut self, dts: u64, pts: u64, keyframe: bool, au: &[u8]) {
        let mut es = BytesMut::with_capacity(au.len() + 64);
        es.put_slice(&[0, 0, 0, 1, 0x09, 0xf0]);
        let mut has_sets = false;
        let mut rest = au;
        let mut nals = Vec::new();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_be_bytes(*len) as usize;
            let Some(nal) = tail.get(..len) else { break };
            rest = tail.get(len..).unwrap_or_default();
            match nal.first().map(|h| h & 0x1f) {
                Some(7) | Some(8) => has_sets = true,
                Some(9) => continue, // our own AUD leads
                _ => {}
            }
            nals.push(nal);
        }
        if keyframe && !has_sets {
            for set in self.tracks.parameter_sets.iter().flatten() {
                es.put_slice(&[0, 0, 0, 1]);
                es.put_slice(set);
            }
        }
        for nal in nals {
            es.put_slice(&[0, 0, 0, 1]);
            es.put_slice(nal);
        }
        self.pes(VIDEO_PID, 0xe0, dts, pts, &es, keyframe);
    }

    /// Appends one AAC frame (raw) at its decode time in the track's sample rate.
    pub(crate) fn audio(&mut self, dts: u64, frame: &[u8]) {
        let Some((profile, freq, channels, rate)) = self.tracks.aac else {
            return;
        };
        let len = frame.len() + 7;
        if len > 0x1fff {
            return;
        }
        let adts = [
            0xff,
            0xf1,
            ((profile.saturating_sub(1) & 3) << 6) | ((freq & 0x0f) << 2) | ((channels >> 2) & 1),
            ((channels & 3) << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            (((len & 7) as u8) << 5) | 0x1f,
            0xfc,
        ];
        let mut es = BytesMut::with_capacity(len);
        es.put_slice(&adts);
        es.put_slice(frame);
        let t = dts * 90_000 / u64::from(rate.max(1));
        self.pes(AUDIO_PID, 0xc0, t, t, &es, false);
    }

    /// Writes a PES packet over as many TS packets as it takes.
    fn pes(&mut self, pid: u16, stream_id: u8, dts: u64, pts: u64, es: &[u8], random: bool) {
        let ts = |marker: u8, t: u64| -> [u8; 5] {
            let t = t & 0x1_ffff_ffff;
            [
                (marker << 4) | (((t >> 30) as u8 & 7) << 1) | 1,
                (t >> 22) as u8,
                (((t >> 15) as u8) << 1) | 1,
                (t >> 7) as u8,
                ((t as u8) << 1) | 1,
            ]
        };
        let mut head = BytesMut::with_capacity(19);
        head.put_slice(&[0, 0, 1, stream_id]);
        let with_dts = dts != pts;
        let header_len: usize = if with_dts { 10 } else { 5 };
        let pes_len = 3 + header_len + es.len();
        head.put_u16(if pes_len > 0xffff || stream_id == 0xe0 {
            0
        } else {
            pes_len as u16
        });
        head.put_u8(0x80);
        head.put_u8(if with_dts { 0xc0 } else { 0x80 });
        head.put_u8(header_len as u8);
        head.put_slice(&ts(if with_dts { 3 } else { 2 }, pts));
        if with_dts {
            head.put_slice(&ts(1, dts));
        }
        let cc = if pid == VIDEO_PID { 2 } else { 3 };
        let pcr = (pid == self.pcr_pid()).then_some(dts);
        let mut pes = Vec::with_capacity(head.len() + es.len());
        pes.extend_from_slice(&head);
        pes.extend_from_slice(es);
        let mut rest = &pes[..];
        let mut first = true;
        while !rest.is_empty() {
            let mut fields = Vec::new();
            if first && (pcr.is_some() || random) {
                let mut flags = if random { 0x40 } else { 0 };
                if pcr.is_some() {
                    flags |= 0x10;
                }
                fields.push(flags);
                if let Some(pcr) = pcr {
                    let base = pcr & 0x1_ffff_ffff;
                    fields.extend_from_slice(&[
                        (base >> 25) as u8,
                        (base >> 17) as u8,
                        (base >> 9) as u8,
                        (base >> 1) as u8,
                        (((base & 1) as u8) << 7) | 0x7e,
                        0,
                    ]);
                }
            }
            let room = PACKET
                - 4
                - if fields.is_empty() {
                    0
                } else {
                    1 + fields.len()
                };
            let take = rest.len().min(room);
            // What the payload leaves of the 184 bytes goes to the adaptation field
            // (its length byte, flags, fields, stuffing).
            let af_space = PACKET - 4 - take;
            let mut p = BytesMut::with_capacity(PACKET);
            p.put_u8(0x47);
            p.put_u16(if first { 0x4000 } else { 0 } | pid);
            p.put_u8(if af_space > 0 { 0x30 } else { 0x10 } | (self.cc[cc] & 0x0f));
            self.cc[cc] = self.cc[cc].wrapping_add(1);
            if af_space > 0 {
                let af_len = af_space - 1;
                if af_len > 0 && fields.is_empty() {
                    fields.push(0);
                }
                fields.resize(af_len, 0xff);
                p.put_u8(af_len as u8);
                p.put_slice(&fields);
            }
            let (now, later) = rest.split_at(take);
            p.put_slice(now);
            rest = later;
            debug_assert_eq!(p.len(), PACKET);
            self.out.put(p);
            first = false;
        }
    }

    /// The segment so far; the next starts with fresh tables.
    pub(crate) fn take(&mut self) -> Bytes {
        let out = std::mem::take(&mut self.out).freeze();
        self.tables();
        out
    }
}

impl TsTracks {
    /// From the carried tracks' configuration: an `avcC` record (its SPS and PPS) and an
    /// AudioSpecificConfig with the sample rate. None when a record cannot be read.
    pub(crate) fn from_configs(avcc: Option<&[u8]>, asc: Option<(&[u8], u32)>) -> Option<TsTracks> {
        let parameter_sets = match avcc {
            Some(avcc) => Some(avcc_sets(avcc)?),
            None => None,
        };
        let aac = match asc {
            Some((&[a, b, ..], rate)) => {
                Some((a >> 3, ((a & 7) << 1) | (b >> 7), (b >> 3) & 0x0f, rate))
            }
            Some(_) => return None,
            None => None,
        };
        Some(TsTracks {
            parameter_sets,
            aac,
        })
    }
}

/// The SPS and PPS NAL units of an `avcC` body.
fn avcc_sets(avcc: &[u8]) -> Option<Vec<Bytes>> {
    let mut sets = Vec::new();
    let mut at = 5;
    for _ in 0..2 {
        let count = usize::from(*avcc.get(at)? & if sets.is_empty() { 0x1f } else { 0xff });
        at += 1;
        for _ in 0..count {
            let len = usize::from(u16::from_be_bytes([*avcc.get(at)?, *avcc.get(at + 1)?]));
            sets.push(Bytes::copy_from_slice(avcc.get(at + 2..at + 2 + len)?));
            at += 2 + len;
        }
    }
    Some(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_188_bytes_with_tables_first() {
        let tracks = TsTracks::from_configs(
            Some(&[
                1, 0x42, 0, 0x1e, 0xff, 0xe1, 0, 2, 0x67, 0x42, 1, 0, 2, 0x68, 0xce,
            ]),
            Some((&[0x11, 0x90], 48_000)),
        )
        .unwrap();
        assert_eq!(tracks.parameter_sets.as_ref().unwrap().len(), 2);
        assert_eq!(tracks.aac, Some((2, 3, 2, 48_000)));
        let mut w = TsWriter::new(tracks);
        w.video(3000, 6000, true, &[0, 0, 0, 3, 0x65, 0x88, 0x84]);
        w.audio(1024, &[0x21; 300]);
        w.video(6000, 9000, false, &vec![0x41; 1000]);
        let seg = w.take();
        assert_eq!(seg.len() % PACKET, 0);
        assert!(seg.chunks(PACKET).all(|p| p[0] == 0x47));
        // PAT, PMT, then the video PES with its PCR and random access flag.
        let pids: Vec<u16> = seg
            .chunks(PACKET)
            .map(|p| u16::from_be_bytes([p[1] & 0x1f, p[2]]))
            .collect();
        assert_eq!(&pids[..3], &[0, PMT_PID, VIDEO_PID]);
        assert!(pids.contains(&AUDIO_PID));
        let v = &seg[2 * PACKET..3 * PACKET];
        assert_eq!(v[3] & 0x30, 0x30);
        assert_eq!(v[5] & 0x50, 0x50, "PCR and random access");
        assert_eq!(crc32(b"123456789"), 0x0376_e6e7);
        // The next segment starts with the tables again.
        assert_eq!(w.take().len(), 2 * PACKET);
    }
}
