//! Fragmented MP4 writing (ISO/IEC 14496-12 movie fragments), for recording and fMP4 segments.
//!
//! [`Mp4Writer::new`] writes `ftyp` and a `moov` with an `mvex` (no samples) at once; samples are then
//! buffered and written as `moof`+`mdat` fragments, so the file is playable after every fragment even if
//! the process dies before [`Mp4Writer::finish`]. The writer only needs [`Write`]; boxes are encoded with
//! `mp4-atom`. No clock is read: timing comes from the caller's decode timestamps.
//!
//! ```
//! use sluice_media::mux::Mp4Writer;
//! use sluice_media::{Codec, CodecParams};
//!
//! let opus = CodecParams { sample_rate: Some(48_000), channels: Some(2), ..CodecParams::new(Codec::Opus, Vec::new()) };
//! let mut w = Mp4Writer::new(Vec::new(), &[opus])?;
//! for i in 0..100u64 {
//!     w.write_sample(0, i * 960, 0, true, &[0xfc, 0xff, 0xfe])?;
//! }
//! let file: Vec<u8> = w.finish()?;
//! assert_eq!(&file[4..8], b"ftyp");
//! # Ok::<(), sluice_media::mux::MuxError>(())
//! ```

use std::io::Write;

use mp4_atom::esds::{DecoderConfig, DecoderSpecific, EsDescriptor};
use mp4_atom::{
    Atom, Audio, Av01, Av1c, Avc1, Avcc, Dinf, Dops, Dref, DrefEntry, Esds, FixedPoint, FourCC,
    FragmentInfo, Ftyp, Hdlr, Hvc1, Hvcc, Mdhd, Mdia, Mfhd, Mfra, Mfro, Minf, Moof, Moov, Mp4a,
    Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tfra, Tkhd, Traf, Trak,
    Trex, Trun, TrunEntry, Url, Visual, Vmhd, Vp09, VpcC,
};
use mp4_atom::{Decode, Encode};

use crate::params::{Codec, CodecParams};

/// A fragment is written at the first video keyframe at least this long (in seconds) after the
/// fragment's start (audio-only: as soon as a fragment spans it).
const FRAGMENT_SECONDS: u64 = 1;
/// A fragment is written regardless of keyframes once it spans this long, bounding what an interrupted
/// recording loses and what is buffered.
const MAX_FRAGMENT_SECONDS: u64 = 10;
/// A fragment is written once its sample data reaches this size.
const MAX_FRAGMENT_BYTES: usize = 64 << 20;

/// `sample_depends_on` = 2 (an I-frame / independently decodable).
const SYNC_FLAGS: u32 = 0x0200_0000;
/// `sample_depends_on` = 1, `sample_is_non_sync_sample` = 1.
const NON_SYNC_FLAGS: u32 = 0x0101_0000;

/// Why writing failed.
#[derive(thiserror::Error, Debug)]
pub enum MuxError {
    /// The output failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A track's codec cannot be written to MP4 by this writer.
    #[error("{0:?} tracks are not supported")]
    Unsupported(Codec),
    /// A track's parameters are unusable (bad configuration record, zero timescale, no tracks).
    #[error("bad track {track} parameters: {reason}")]
    BadParams {
        /// Index of the track.
        track: usize,
        /// What is wrong.
        reason: String,
    },
    /// A sample was refused (unknown track, empty, decode time going backwards, too large).
    #[error("bad sample for track {track}: {reason}")]
    BadSample {
        /// Index of the track.
        track: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// mp4-atom could not encode a box.
    #[error("encoding {0} failed: {1}")]
    Encode(&'static str, String),
}

/// A sample whose duration is not known yet (it is the next sample's dts minus its own).
#[derive(Debug)]
struct Pending {
    dts: u64,
    pts_offset: i32,
    keyframe: bool,
    data: Vec<u8>,
}

/// Per-track state.
#[derive(Debug)]
struct Track {
    timescale: u32,
    video: bool,
    /// The last sample written, waiting for its successor to learn its duration.
    pending: Option<Pending>,
    /// Samples of the fragment being built.
    entries: Vec<TrunEntry>,
    /// Their data, concatenated.
    data: Vec<u8>,
    /// Decode time of the fragment's first sample.
    start: u64,
    /// Duration of the last completed sample (used for the very last one).
    last_duration: u32,
    /// Keyframe fragments for `mfra`: (decode time, moof offset, traf number).
    random_access: Vec<FragmentInfo>,
}

impl Track {
    /// Decode time just after the buffered samples.
    fn buffered_end(&self) -> u64 {
        self.start
            + self
                .entries
                .iter()
                .map(|e| u64::from(e.duration.unwrap_or(0)))
                .sum::<u64>()
    }

    /// Moves the pending sample into the fragment with `duration`.
    fn complete_pending(&mut self, duration: u32) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if self.entries.is_empty() {
            self.start = p.dts;
        }
        self.entries.push(TrunEntry {
            duration: Some(duration),
            size: Some(u32::try_from(p.data.len()).unwrap_or(u32::MAX)),
            flags: Some(if p.keyframe || !self.video {
                SYNC_FLAGS
            } else {
                NON_SYNC_FLAGS
            }),
            cts: Some(i64::from(p.pts_offset)),
        });
        self.data.extend_from_slice(&p.data);
        self.last_duration = duration;
    }
}

/// Writes a fragmented MP4 (`ftyp`, `moov` with `mvex`, then `moof`+`mdat` fragments, and at
/// [`finish`](Mp4Writer::finish) an `mfra` index) to a [`Write`].
#[derive(Debug)]
pub struct Mp4Writer<W: Write> {
    out: W,
    written: u64,
    tracks: Vec<Track>,
    /// The track whose keyframes and clock decide fragment boundaries: the first video track, else the
    /// first track.
    lead: usize,
    sequence: u32,
    /// Fragments are cut only by [`Mp4Writer::cut`] (live HLS parts), never by the writer.
    manual: bool,
    /// Timed parts (see [`Mp4Writer::with_part_duration`]): the lead track's span, in its
    /// timescale, after which a fragment is cut whatever the sample.
    part_ticks: Option<u64>,
}

/// Encodes a box with mp4-atom.
fn encode<T: Encode>(atom: &T, name: &'static str) -> Result<Vec<u8>, MuxError> {
    let mut out = Vec::new();
    atom.encode(&mut out)
        .map_err(|e| MuxError::Encode(name, e.to_string()))?;
    Ok(out)
}

/// Decodes a configuration record body as the box `T` (the record wrapped in a box header).
fn decode_record<T: Atom + Decode>(body: &[u8]) -> Option<T> {
    let size = u32::try_from(body.len() + 8).ok()?;
    let mut buf = Vec::with_capacity(body.len() + 8);
    buf.extend_from_slice(&size.to_be_bytes());
    buf.extend_from_slice(T::KIND.as_ref());
    buf.extend_from_slice(body);
    T::decode(&mut buf.as_slice()).ok()
}

/// The `dOps` of an Opus track from an OpusHead, a `dOps` body, or nothing (defaults).
fn dops(config: &[u8], channels: Option<u16>) -> Dops {
    let channels = channels
        .and_then(|c| u8::try_from(c).ok())
        .filter(|&c| c > 0)
        .unwrap_or(2);
    let (count, pre_skip, rate, gain) = match config.strip_prefix(b"OpusHead") {
        // OpusHead: version, channels, pre-skip, input rate, gain, all little-endian.
        Some(&[_, c, p0, p1, r0, r1, r2, r3, g0, g1, ..]) => (
            c,
            u16::from_le_bytes([p0, p1]),
            u32::from_le_bytes([r0, r1, r2, r3]),
            i16::from_le_bytes([g0, g1]),
        ),
        Some(_) => (channels, 0, 48_000, 0),
        // dOps: version, OutputChannelCount, PreSkip, InputSampleRate, OutputGain, big-endian.
        None => match *config {
            [0, c, p0, p1, r0, r1, r2, r3, g0, g1, ..] => (
                c,
                u16::from_be_bytes([p0, p1]),
                u32::from_be_bytes([r0, r1, r2, r3]),
                i16::from_be_bytes([g0, g1]),
            ),
            _ => (channels, 0, 48_000, 0),
        },
    };
    // Only mapping family 0 (mono/stereo) is written; more channels would need the mapping table.
    Dops {
        output_channel_count: count.clamp(1, 2),
        pre_skip,
        input_sample_rate: rate,
        output_gain: gain,
        channel_mapping: None,
    }
}

/// The sample entry of a track.
fn sample_entry(index: usize, p: &CodecParams) -> Result<mp4_atom::Codec, MuxError> {
    let bad = |reason: &str| MuxError::BadParams {
        track: index,
        reason: reason.to_owned(),
    };
    let visual = Visual {
        data_reference_index: 1,
        width: p.width.and_then(|w| u16::try_from(w).ok()).unwrap_or(0),
        height: p.height.and_then(|h| u16::try_from(h).ok()).unwrap_or(0),
        ..Visual::default()
    };
    let audio = |channels: u16, rate: u32| Audio {
        data_reference_index: 1,
        channel_count: channels,
        sample_size: 16,
        sample_rate: FixedPoint::new(u16::try_from(rate).unwrap_or(0), 0),
    };
    Ok(match p.codec {
        Codec::H264 => mp4_atom::Codec::Avc1(Avc1 {
            visual,
            avcc: decode_record::<Avcc>(&p.config).ok_or_else(|| bad("unusable avcC"))?,
            ..Avc1::default()
        }),
        Codec::H265 => mp4_atom::Codec::Hvc1(Hvc1 {
            visual,
            hvcc: decode_record::<Hvcc>(&p.config).ok_or_else(|| bad("unusable hvcC"))?,
            ..Hvc1::default()
        }),
        Codec::Av1 => mp4_atom::Codec::Av01(Av01 {
            visual,
            av1c: decode_record::<Av1c>(&p.config).ok_or_else(|| bad("unusable av1C"))?,
            ..Av01::default()
        }),
        Codec::Vp9 => mp4_atom::Codec::Vp09(Vp09 {
            visual,
            vpcc: decode_record::<VpcC>(&p.config).ok_or_else(|| bad("unusable vpcC"))?,
            ..Vp09::default()
        }),
        Codec::Aac => {
            let asc = &p.config;
            let &[a, b, ..] = &asc[..] else {
                return Err(bad("AudioSpecificConfig too short"));
            };
            let channels = p.channels.filter(|&c| c > 0).unwrap_or(2);
            mp4_atom::Codec::Mp4a(Mp4a {
                audio: audio(channels, p.clock_rate()),
                esds: Esds {
                    es_desc: EsDescriptor {
                        es_id: u16::try_from(index + 1).unwrap_or(0),
                        dec_config: DecoderConfig {
                            object_type_indication: 0x40,
                            stream_type: 5,
                            up_stream: 0,
                            dec_specific: Some(DecoderSpecific {
                                profile: a >> 3,
                                freq_index: ((a & 7) << 1) | (b >> 7),
                                chan_conf: (b >> 3) & 0x0f,
                                raw: asc.to_vec(),
                            }),
                            ..DecoderConfig::default()
                        },
                        ..EsDescriptor::default()
                    },
                },
                btrt: None,
                taic: None,
            })
        }
        Codec::Opus => {
            let dops = dops(&p.config, p.channels);
            mp4_atom::Codec::Opus(Opus {
                audio: audio(u16::from(dops.output_channel_count), 48_000),
                dops,
                btrt: None,
            })
        }
        // G.711: QuickTime's `ulaw`/`alaw` sample entries (what ffmpeg reads), encoded as a
        // PCM entry whose four-character code [`g711_fourccs`] then rewrites.
        Codec::Pcmu | Codec::Pcma => mp4_atom::Codec::Sowt(mp4_atom::Sowt {
            audio: audio(
                p.channels.filter(|&c| c > 0).unwrap_or(1),
                p.sample_rate.unwrap_or(8000),
            ),
            pcmc: None,
            chnl: None,
            btrt: None,
        }),
        other => return Err(MuxError::Unsupported(other)),
    })
}

/// Rewrites the sample entry code of the G.711 tracks of an encoded `moov` (written as
/// `sowt`, see [`sample_entry`]) to `ulaw` / `alaw`. Walks the boxes down to each track's
/// `stsd`, so no other bytes can be mistaken for the code.
fn g711_fourccs(moov: &mut [u8], tracks: &[CodecParams]) {
    /// The child boxes (type, body start, end) of `buf[start..end]`.
    fn boxes(buf: &[u8], start: usize, end: usize) -> Vec<([u8; 4], usize, usize)> {
        let mut out = Vec::new();
        let mut pos = start;
        while let (Some(size), Some(kind)) = (buf.get(pos..pos + 4), buf.get(pos + 4..pos + 8)) {
            let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
            if size < 8 || pos + size > end {
                break;
            }
            out.push(([kind[0], kind[1], kind[2], kind[3]], pos + 8, pos + size));
            pos += size;
        }
        out
    }
    let child = |buf: &[u8], (s, e): (usize, usize), kind: &[u8; 4]| {
        boxes(buf, s, e)
            .into_iter()
            .find(|b| &b.0 == kind)
            .map(|b| (b.1, b.2))
    };
    let Some(moov_box) = boxes(moov, 0, moov.len())
        .into_iter()
        .find(|b| &b.0 == b"moov")
    else {
        return;
    };
    let traks: Vec<(usize, usize)> = boxes(moov, moov_box.1, moov_box.2)
        .into_iter()
        .filter(|b| &b.0 == b"trak")
        .map(|b| (b.1, b.2))
        .collect();
    for (p, trak) in tracks.iter().zip(traks) {
        let code: &[u8; 4] = match p.codec {
            Codec::Pcmu => b"ulaw",
            Codec::Pcma => b"alaw",
            _ => continue,
        };
        let stsd = child(moov, trak, b"mdia")
            .and_then(|b| child(moov, b, b"minf"))
            .and_then(|b| child(moov, b, b"stbl"))
            .and_then(|b| child(moov, b, b"stsd"));
        // stsd: version/flags and entry count, then the first entry's size and code.
        if let Some(entry) = stsd.and_then(|(s, _)| moov.get_mut(s + 12..s + 16)) {
            if entry == b"sowt" {
                entry.copy_from_slice(code);
            }
        }
    }
}

/// The `trak` of a track (no samples: they all go in fragments).
fn trak(index: usize, p: &CodecParams, timescale: u32) -> Result<Trak, MuxError> {
    let video = p.codec.is_video();
    let track_id = u32::try_from(index + 1).unwrap_or(u32::MAX);
    let fixed =
        |v: Option<u32>| FixedPoint::new(v.and_then(|v| u16::try_from(v).ok()).unwrap_or(0), 0);
    Ok(Trak {
        tkhd: Tkhd {
            track_id,
            enabled: true,
            in_movie: true,
            alternate_group: 0,
            volume: if video {
                FixedPoint::default()
            } else {
                FixedPoint::new(1, 0)
            },
            width: if video {
                fixed(p.width)
            } else {
                FixedPoint::default()
            },
            height: if video {
                fixed(p.height)
            } else {
                FixedPoint::default()
            },
            ..Tkhd::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                language: "und".to_owned(),
                ..Mdhd::default()
            },
            hdlr: Hdlr {
                handler: FourCC::new(if video { b"vide" } else { b"soun" }),
                name: if video {
                    "VideoHandler"
                } else {
                    "SoundHandler"
                }
                .to_owned(),
            },
            minf: Minf {
                vmhd: video.then(Vmhd::default),
                smhd: (!video).then(Smhd::default),
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![DrefEntry::Url(Url::default())],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![sample_entry(index, p)?],
                    },
                    stts: Stts::default(),
                    stsc: Stsc::default(),
                    stsz: Stsz::default(),
                    stco: Some(Stco::default()),
                    ..Stbl::default()
                },
                ..Minf::default()
            },
        },
        ..Trak::default()
    })
}

impl<W: Write> Mp4Writer<W> {
    /// Tracks with their params; each track's timescale is its RTP clock rate ([`CodecParams::clock_rate`]:
    /// 90000 for video, the sample rate for AAC, 48000 for Opus). Writes `ftyp`+`moov`(`mvex`) immediately.
    ///
    /// Supports H.264 (`avc1`), H.265 (`hvc1`), AV1 (`av01` with the `av1C` body as config),
    /// VP9 (`vp09` with the `vpcC` body, FullBox header included), AAC (`mp4a`), Opus (`Opus`,
    /// mono/stereo) and G.711 (`ulaw`, `alaw`: one sample per RTP packet's worth of bytes) tracks.
    pub fn new(mut out: W, tracks: &[CodecParams]) -> Result<Self, MuxError> {
        if tracks.is_empty() {
            return Err(MuxError::BadParams {
                track: 0,
                reason: "no tracks".to_owned(),
            });
        }
        let mut traks = Vec::new();
        let mut state = Vec::new();
        for (i, p) in tracks.iter().enumerate() {
            let timescale = p.clock_rate();
            if timescale == 0 {
                return Err(MuxError::BadParams {
                    track: i,
                    reason: "unknown clock rate".to_owned(),
                });
            }
            traks.push(trak(i, p, timescale)?);
            state.push(Track {
                timescale,
                video: p.codec.is_video(),
                pending: None,
                entries: Vec::new(),
                data: Vec::new(),
                start: 0,
                last_duration: 0,
                random_access: Vec::new(),
            });
        }
        let ftyp = Ftyp {
            major_brand: FourCC::new(b"iso6"),
            minor_version: 0,
            compatible_brands: [b"iso6", b"iso5", b"mp41", b"dash"]
                .iter()
                .map(|b| FourCC::new(b))
                .collect(),
        };
        let moov = Moov {
            mvhd: Mvhd {
                timescale: 1000,
                duration: 0,
                rate: FixedPoint::new(1, 0),
                volume: FixedPoint::new(1, 0),
                next_track_id: u32::try_from(tracks.len() + 1).unwrap_or(u32::MAX),
                ..Mvhd::default()
            },
            mvex: Some(Mvex {
                mehd: None,
                trex: (0..tracks.len())
                    .map(|i| Trex {
                        track_id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                        default_sample_description_index: 1,
                        ..Trex::default()
                    })
                    .collect(),
            }),
            trak: traks,
            ..Moov::default()
        };
        let mut head = encode(&ftyp, "ftyp")?;
        head.extend(encode(&moov, "moov")?);
        g711_fourccs(&mut head, tracks);
        out.write_all(&head)?;
        out.flush()?;
        Ok(Mp4Writer {
            out,
            written: head.len() as u64,
            lead: state.iter().position(|t| t.video).unwrap_or(0),
            tracks: state,
            sequence: 0,
            manual: false,
            part_ticks: None,
        })
    }

    /// Adds a sample of `track` with its decode time (timescale units, starting at 0 for the first sample;
    /// the caller converts from RTP timestamps with wrap handling), composition offset (pts − dts) and
    /// keyframe flag. Data is as MP4 stores it (length-prefixed NAL units, raw AAC frame, Opus packet).
    ///
    /// Samples are buffered and flushed as a `moof`+`mdat` fragment at each keyframe of the first video
    /// track once the fragment spans ≥ 1 s (audio-only: every 1 s of the first track; any file: once a
    /// fragment spans 10 s or holds 64 MiB). A sample's duration is the next sample's dts minus its own, so
    /// each track's latest sample is held until its successor (or [`finish`](Self::finish)) arrives.
    pub fn write_sample(
        &mut self,
        track: usize,
        dts: u64,
        pts_offset: i32,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), MuxError> {
        let bad = |reason| MuxError::BadSample { track, reason };
        let t = self.tracks.get(track).ok_or(bad("no such track"))?;
        if data.is_empty() {
            return Err(bad("empty sample"));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(bad("sample larger than 4 GiB"));
        }
        let duration = match &t.pending {
            Some(p) if dts < p.dts => return Err(bad("decode time goes backwards")),
            Some(p) => {
                Some(u32::try_from(dts - p.dts).map_err(|_| bad("gap between samples too large"))?)
            }
            None if !t.entries.is_empty() && dts < t.buffered_end() => {
                return Err(bad("decode time goes backwards"))
            }
            None => None,
        };
        if let Some(d) = duration {
            self.tracks[track].complete_pending(d);
        }
        if self.should_flush(track, dts, keyframe) {
            self.flush()?;
        }
        self.tracks[track].pending = Some(Pending {
            dts,
            pts_offset,
            keyframe,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// Whether the buffered samples should become a fragment before the sample (`track`, `dts`).
    fn should_flush(&self, track: usize, dts: u64, keyframe: bool) -> bool {
        if self.manual {
            return false;
        }
        let bytes: usize = self.tracks.iter().map(|t| t.data.len()).sum();
        if bytes >= MAX_FRAGMENT_BYTES {
            return true;
        }
        let t = &self.tracks[track];
        if t.entries.is_empty() {
            return false;
        }
        let span = dts.saturating_sub(t.start);
        let ts = u64::from(t.timescale);
        if let (true, Some(part)) = (track == self.lead, self.part_ticks) {
            return span >= part;
        }
        if span >= MAX_FRAGMENT_SECONDS * ts {
            return true;
        }
        if track != self.lead || span < FRAGMENT_SECONDS * ts {
            return false;
        }
        keyframe || !t.video
    }

    /// Writes the buffered samples as one `moof`+`mdat` fragment (nothing if none are buffered).
    fn flush(&mut self) -> Result<(), MuxError> {
        let with_samples: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| !self.tracks[i].entries.is_empty())
            .collect();
        if with_samples.is_empty() {
            return Ok(());
        }
        self.sequence += 1;
        let mut moof = Moof {
            mfhd: Mfhd {
                sequence_number: self.sequence,
            },
            traf: with_samples
                .iter()
                .map(|&i| {
                    let t = &self.tracks[i];
                    Traf {
                        tfhd: Tfhd {
                            track_id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                            default_base_is_moof: true,
                            ..Tfhd::default()
                        },
                        tfdt: Some(Tfdt {
                            base_media_decode_time: t.start,
                        }),
                        trun: vec![Trun {
                            data_offset: Some(0),
                            samples: t.entries.clone().into(),
                        }],
                        ..Traf::default()
                    }
                })
                .collect(),
        };
        // The data offsets depend on the moof's size, which does not depend on their values.
        let moof_len = encode(&moof, "moof")?.len();
        let data_len: usize = with_samples
            .iter()
            .map(|&i| self.tracks[i].data.len())
            .sum();
        let mdat_header_len = if data_len + 8 > u32::MAX as usize {
            16
        } else {
            8
        };
        let mut offset = moof_len + mdat_header_len;
        for (traf, &i) in moof.traf.iter_mut().zip(&with_samples) {
            if let Some(trun) = traf.trun.first_mut() {
                trun.data_offset = Some(
                    i32::try_from(offset)
                        .map_err(|_| MuxError::Encode("moof", "fragment too large".into()))?,
                );
            }
            offset += self.tracks[i].data.len();
        }
        let mut head = encode(&moof, "moof")?;
        if mdat_header_len == 16 {
            head.extend_from_slice(&1u32.to_be_bytes());
            head.extend_from_slice(b"mdat");
            head.extend_from_slice(&((data_len + 16) as u64).to_be_bytes());
        } else {
            head.extend_from_slice(&((data_len + 8) as u32).to_be_bytes());
            head.extend_from_slice(b"mdat");
        }
        self.out.write_all(&head)?;
        for &i in &with_samples {
            self.out.write_all(&self.tracks[i].data)?;
        }
        self.out.flush()?;
        let moof_offset = self.written;
        self.written += (head.len() + data_len) as u64;
        for (n, &i) in with_samples.iter().enumerate() {
            let t = &mut self.tracks[i];
            if t.entries.first().and_then(|e| e.flags) == Some(SYNC_FLAGS) {
                t.random_access.push(FragmentInfo {
                    time: t.start,
                    moof_offset,
                    traf_number: u32::try_from(n + 1).unwrap_or(u32::MAX),
                    trun_number: 1,
                    sample_delta: 1,
                });
            }
            t.start = t.buffered_end();
            t.entries.clear();
            t.data.clear();
        }
        Ok(())
    }

    /// Flushes the last fragment (each track's last sample gets the previous sample's duration) and writes
    /// an `mfra` random access index; returns the writer. The file is playable after every flushed
    /// fragment even if this is never called.
    pub fn finish(mut self) -> Result<W, MuxError> {
        for t in &mut self.tracks {
            let d = if t.last_duration > 0 {
                t.last_duration
            } else {
                // A track with a single sample: assume a frame of 1/25 s.
                (t.timescale / 25).max(1)
            };
            t.complete_pending(d);
        }
        self.flush()?;
        let mut mfra = Mfra {
            tfra: self
                .tracks
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.random_access.is_empty())
                .map(|(i, t)| Tfra {
                    track_id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    entries: t.random_access.clone(),
                })
                .collect(),
            mfro: Mfro { parent_size: 0 },
        };
        let len = encode(&mfra, "mfra")?.len();
        mfra.mfro.parent_size = u32::try_from(len).unwrap_or(0);
        let bytes = encode(&mfra, "mfra")?;
        self.out.write_all(&bytes)?;
        self.out.flush()?;
        self.written += bytes.len() as u64;
        Ok(self.out)
    }

    /// Leaves cutting fragments to the caller ([`Mp4Writer::cut`]): a live packager cuts
    /// its parts on its own schedule (whole frames, constant duration), and bounds what it
    /// buffers itself.
    pub fn set_manual_fragments(&mut self) {
        self.manual = true;
    }

    /// Writes the completed samples buffered so far as one `moof`+`mdat` fragment (each
    /// track's latest sample stays held until its successor tells its duration); nothing
    /// when no sample is complete.
    pub fn cut(&mut self) -> Result<(), MuxError> {
        self.flush()
    }

    /// Cuts fragments on time instead of at keyframes: a fragment is written before the first
    /// sample of the lead track (the first video track, else the first track) at least
    /// `part` after the fragment's start, keyframe or not (its sample flags say which samples
    /// are sync samples), so that an interrupted recording loses at most about one `part`.
    /// The size bound still applies. Used by the archive's segment writer.
    pub fn with_part_duration(mut self, part: std::time::Duration) -> Self {
        let lead_scale = self.tracks.get(self.lead).map_or(90_000, |t| t.timescale);
        let ticks = part.as_nanos() * u128::from(lead_scale) / 1_000_000_000;
        self.part_ticks = Some(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
        self
    }

    /// Ends the file without an `mfra` index (a segment whose index lives elsewhere): flushes
    /// the last fragment, where each track's held last sample lasts until `ends[track]` (its
    /// decode time of the next segment's first sample, so segments abut exactly) when that is
    /// later than the sample, else as long as the track's previous sample.
    pub fn close(mut self, ends: &[Option<u64>]) -> Result<W, MuxError> {
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let fallback = if t.last_duration > 0 {
                t.last_duration
            } else {
                (t.timescale / 25).max(1)
            };
            let d = match (&t.pending, ends.get(i).copied().flatten()) {
                (Some(p), Some(end)) if end > p.dts => {
                    u32::try_from(end - p.dts).unwrap_or(fallback)
                }
                _ => fallback,
            };
            t.complete_pending(d);
        }
        self.flush()?;
        Ok(self.out)
    }

    /// Writes the buffered samples as a fragment now, each track's held last sample lasting
    /// as long as its previous one (a stalled stream's last media goes out instead of
    /// waiting for a successor that does not come). The next sample of a track should not
    /// start before [`Mp4Writer::track_end`].
    pub fn cut_now(&mut self) -> Result<(), MuxError> {
        self.cut_now_with(|_| None)
    }

    /// [`Mp4Writer::cut_now`], with `last(track)` choosing a track's held sample's duration
    /// (at least 1; None: as long as its previous one). For a track whose next sample may
    /// follow its last one closely, whatever their spacing so far (B-frames given decode
    /// times that are their presentation times made increasing).
    pub fn cut_now_with(&mut self, last: impl Fn(usize) -> Option<u32>) -> Result<(), MuxError> {
        for (i, t) in self.tracks.iter_mut().enumerate() {
            if t.pending.is_some() {
                let d = last(i).unwrap_or(if t.last_duration > 0 {
                    t.last_duration
                } else {
                    (t.timescale / 25).max(1)
                });
                t.complete_pending(d.max(1));
            }
        }
        self.flush()
    }

    /// Decode time just after the samples of `track` written or buffered, not counting the
    /// held last one (0 for an unknown track).
    pub fn track_end(&self, track: usize) -> u64 {
        self.tracks.get(track).map_or(0, Track::buffered_end)
    }

    /// Bytes written to the output so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The output (e.g. to check its position); writing to it directly corrupts the file.
    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

impl Mp4Writer<Vec<u8>> {
    /// Takes the bytes written so far out of an in-memory output, so a sans-IO caller can hand
    /// each fragment on as it is cut; [`bytes_written`](Self::bytes_written) and the `mfra`
    /// offsets keep counting from the file's start.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opus() -> CodecParams {
        CodecParams {
            channels: Some(2),
            ..CodecParams::new(Codec::Opus, Vec::new())
        }
    }

    #[test]
    fn refuses_bad_tracks_and_samples() {
        assert!(Mp4Writer::new(Vec::new(), &[]).is_err());
        assert!(matches!(
            Mp4Writer::new(Vec::new(), &[CodecParams::new(Codec::Vp8, Vec::new())]),
            Err(MuxError::Unsupported(Codec::Vp8))
        ));
        assert!(Mp4Writer::new(Vec::new(), &[CodecParams::new(Codec::H264, vec![1, 2])]).is_err());
        assert!(Mp4Writer::new(Vec::new(), &[CodecParams::new(Codec::Aac, Vec::new())]).is_err());
        let mut w = Mp4Writer::new(Vec::new(), &[opus()]).unwrap();
        let head = w.bytes_written();
        assert_eq!(head, w.get_ref().len() as u64);
        assert!(w.write_sample(1, 0, 0, true, &[1]).is_err());
        assert!(w.write_sample(0, 0, 0, true, &[]).is_err());
        w.write_sample(0, 960, 0, true, &[1]).unwrap();
        assert!(w.write_sample(0, 0, 0, true, &[1]).is_err());
        w.write_sample(0, 1920, 0, true, &[2]).unwrap();
        let out = w.finish().unwrap();
        assert!(out.len() as u64 > head);
    }

    #[test]
    fn audio_only_fragments_every_second() {
        let mut w = Mp4Writer::new(Vec::new(), &[opus()]).unwrap();
        let head = w.bytes_written();
        // 0.98 s of 20 ms packets: nothing written yet.
        for i in 0..50u64 {
            w.write_sample(0, i * 960, 0, true, &[0xfc, i as u8])
                .unwrap();
        }
        assert_eq!(w.bytes_written(), head);
        w.write_sample(0, 50 * 960, 0, true, &[0xfc]).unwrap();
        assert!(w.bytes_written() > head);
        let out = w.finish().unwrap();
        let moofs = out.windows(4).filter(|w| w == b"moof").count();
        assert_eq!(moofs, 2);
        assert_eq!(&out[out.len() - 16 + 4..out.len() - 8], b"mfro");
    }

    #[test]
    fn opus_configs_become_dops() {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 1, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0]);
        let d = dops(&head, None);
        assert_eq!(
            (d.output_channel_count, d.pre_skip, d.input_sample_rate),
            (1, 312, 48_000)
        );
        let d = dops(&[0, 2, 0x01, 0x38, 0, 0, 0xbb, 0x80, 0, 0, 0], None);
        assert_eq!(
            (d.output_channel_count, d.pre_skip, d.input_sample_rate),
            (2, 312, 48_000)
        );
        assert_eq!(dops(&[], Some(1)).output_channel_count, 1);
    }
}
