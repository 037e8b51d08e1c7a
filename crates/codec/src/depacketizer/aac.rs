//! AAC depacketization, RFC 3640 (`mpeg4-generic`): the AU-header section laid out by the fmtp
//! (`sizelength`, `indexlength`, `indexdeltalength`, CTS/DTS deltas, random access and stream state fields),
//! an optional auxiliary section, then one or more access units or a fragment of one.

use bytes::{Bytes, BytesMut};

use super::{bad_params, fmtp_get, AccessUnit, DepacketizeError, RtpPacket, MAX_ACCESS_UNIT};
use crate::asc::AudioSpecificConfig;
use crate::bits::BitReader;
use crate::params::{Codec, CodecParams};

/// Bit widths of the AU-header fields (RFC 3640 §4.1).
#[derive(Debug, Clone, Copy, Default)]
struct Layout {
    size: u32,
    index: u32,
    index_delta: u32,
    cts_delta: u32,
    dts_delta: u32,
    random_access: bool,
    stream_state: u32,
    aux_size: u32,
}

/// An AAC frame being reassembled from fragments.
#[derive(Debug, Clone)]
struct Fragment {
    timestamp: u32,
    size: usize,
    data: BytesMut,
}

/// AAC depacketizer state.
#[derive(Debug, Clone)]
pub(super) struct Aac {
    config: Bytes,
    clock_rate: u32,
    channels: Option<u16>,
    layout: Layout,
    /// RTP timestamp ticks per access unit.
    frame_ticks: u32,
    fragment: Option<Fragment>,
    /// Packets were lost since the last emitted access unit.
    loss: bool,
}

/// Reads `frameLengthFlag` from an AudioSpecificConfig: 960 samples per frame if set, else 1024.
fn frame_samples(asc: &[u8]) -> u32 {
    let mut r = BitReader::new(asc);
    let flag = (|| {
        let mut aot = r.read(5)?;
        if aot == 31 {
            aot = 32 + r.read(6)?;
        }
        if r.read(4)? == 15 {
            r.read(24)?;
        }
        r.read(4)?;
        // GASpecificConfig follows for the general audio object types.
        if matches!(aot, 1..=4 | 6 | 7 | 17 | 19..=23) {
            r.flag()
        } else {
            Some(false)
        }
    })();
    if flag == Some(true) {
        960
    } else {
        1024
    }
}

/// Decodes a hex string.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Aac {
    /// Reads `config` and the AU-header layout from the fmtp.
    pub(super) fn new(
        clock_rate: u32,
        channels: Option<u16>,
        fmtp: &[(String, String)],
    ) -> Result<Self, DepacketizeError> {
        let bad = |r: &str| bad_params(Codec::Aac, r);
        let config = fmtp_get(fmtp, "config")
            .ok_or_else(|| bad("no config= in fmtp"))
            .and_then(|c| unhex(c).ok_or_else(|| bad("config= is not hex")))?;
        let asc = AudioSpecificConfig::parse(&config).map_err(bad)?;
        let num = |key: &str| -> Result<u32, DepacketizeError> {
            match fmtp_get(fmtp, key) {
                None => Ok(0),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n <= 32)
                    .ok_or_else(|| bad(&format!("bad {key}={v}"))),
            }
        };
        let mut layout = Layout {
            size: num("sizelength")?,
            index: num("indexlength")?,
            index_delta: num("indexdeltalength")?,
            cts_delta: num("ctsdeltalength")?,
            dts_delta: num("dtsdeltalength")?,
            random_access: num("randomaccessindication")? != 0,
            stream_state: num("streamstateindication")?,
            aux_size: num("auxiliarydatasizelength")?,
        };
        if layout.size == 0 {
            // Defaults of the named modes (RFC 3640 §3.3.5, §3.3.6).
            match fmtp_get(fmtp, "mode")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("aac-hbr") => (layout.size, layout.index, layout.index_delta) = (13, 3, 3),
                Some("aac-lbr") => (layout.size, layout.index, layout.index_delta) = (6, 2, 2),
                _ => return Err(bad("AU headers without sizelength are not supported")),
            }
        }
        let samples = u64::from(frame_samples(&config));
        let frame_ticks = samples * u64::from(clock_rate) / u64::from(asc.sample_rate);
        let frame_ticks = u32::try_from(frame_ticks).map_err(|_| bad("clock rate too high"))?;
        Ok(Aac {
            config: Bytes::from(config),
            clock_rate,
            channels: channels.filter(|&c| c > 0).or(asc.channels()),
            layout,
            frame_ticks,
            fragment: None,
            loss: false,
        })
    }

    /// The AudioSpecificConfig, with the RTP clock rate as sample rate (the muxer's timescale).
    pub(super) fn params(&self) -> CodecParams {
        CodecParams {
            sample_rate: Some(self.clock_rate),
            channels: self.channels,
            ..CodecParams::new(Codec::Aac, self.config.clone())
        }
    }

    /// Emits one access unit.
    fn emit(&mut self, timestamp: u32, data: Bytes, loss: bool, out: &mut Vec<AccessUnit>) {
        out.push(AccessUnit {
            rtp_timestamp: timestamp,
            keyframe: true,
            data,
            loss: loss || self.loss,
        });
        self.loss = false;
    }

    /// Processes one packet.
    pub(super) fn push(
        &mut self,
        pkt: &RtpPacket<'_>,
        gap: bool,
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), &'static str> {
        if gap {
            self.loss = true;
            self.fragment = None;
        }
        let result = self.payload(pkt, out);
        if result.is_err() {
            self.loss = true;
            self.fragment = None;
        }
        result
    }

    /// Parses the AU headers and emits the access units (or continues a fragment).
    fn payload(
        &mut self,
        pkt: &RtpPacket<'_>,
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), &'static str> {
        let l = self.layout;
        let p = pkt.payload;
        let &[h0, h1, ref rest @ ..] = p else {
            return Err("AU-headers-length is truncated");
        };
        let headers_bits = usize::from(u16::from_be_bytes([h0, h1]));
        let headers_len = headers_bits.div_ceil(8);
        let headers = rest.get(..headers_len).ok_or("AU headers are truncated")?;
        let mut r = BitReader::new(headers);
        let mut sizes = Vec::new();
        let mut consumed = 0usize;
        while consumed < headers_bits {
            let before = consumed;
            let read = |r: &mut BitReader<'_>, n: u32, consumed: &mut usize| {
                *consumed += n as usize;
                r.read(n)
            };
            let size = read(&mut r, l.size, &mut consumed).ok_or("AU header is truncated")?;
            let index_bits = if sizes.is_empty() {
                l.index
            } else {
                l.index_delta
            };
            read(&mut r, index_bits, &mut consumed).ok_or("AU header is truncated")?;
            if l.cts_delta > 0 && read(&mut r, 1, &mut consumed) == Some(1) {
                read(&mut r, l.cts_delta, &mut consumed).ok_or("AU header is truncated")?;
            }
            if l.dts_delta > 0 && read(&mut r, 1, &mut consumed) == Some(1) {
                read(&mut r, l.dts_delta, &mut consumed).ok_or("AU header is truncated")?;
            }
            if l.random_access {
                read(&mut r, 1, &mut consumed).ok_or("AU header is truncated")?;
            }
            read(&mut r, l.stream_state, &mut consumed).ok_or("AU header is truncated")?;
            if consumed > headers_bits || consumed == before {
                return Err("AU header overruns AU-headers-length");
            }
            sizes.push(size as usize);
            if sizes.len() > 512 {
                return Err("too many AU headers");
            }
        }
        let mut data = rest.get(headers_len..).unwrap_or_default();
        if l.aux_size > 0 {
            let mut ar = BitReader::new(data);
            let aux_bits = ar.read(l.aux_size).ok_or("auxiliary size is truncated")?;
            let aux_len = (l.aux_size as usize + aux_bits as usize).div_ceil(8);
            data = data.get(aux_len..).ok_or("auxiliary data is truncated")?;
        }
        if sizes.is_empty() {
            return Err("no AU headers");
        }

        // A fragment of one access unit: one header whose size exceeds the data (RFC 3640 §3.2.3.2).
        if let [size] = sizes[..] {
            if size > data.len() || self.fragment.is_some() {
                return self.fragment(pkt, size, data, out);
            }
        }
        self.fragment = None;
        let total: usize = sizes.iter().sum();
        if total > data.len() {
            return Err("access units run past the end of the packet");
        }
        let mut ts = pkt.timestamp;
        for size in sizes {
            let (au, tail) = data.split_at(size);
            data = tail;
            if !au.is_empty() {
                self.emit(ts, Bytes::copy_from_slice(au), false, out);
            }
            ts = ts.wrapping_add(self.frame_ticks);
        }
        Ok(())
    }

    /// Continues (or starts) a fragmented access unit of `size` bytes.
    fn fragment(
        &mut self,
        pkt: &RtpPacket<'_>,
        size: usize,
        data: &[u8],
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), &'static str> {
        if size > MAX_ACCESS_UNIT {
            return Err("access unit too large");
        }
        let frag = match self.fragment.take() {
            Some(f) if f.timestamp == pkt.timestamp && f.size == size => Some(f),
            Some(_) => {
                // A different access unit started: the previous one lost its end.
                self.loss = true;
                None
            }
            None => None,
        };
        let mut frag = frag.unwrap_or_else(|| Fragment {
            timestamp: pkt.timestamp,
            size,
            data: BytesMut::with_capacity(size),
        });
        if frag.data.len() + data.len() > size {
            return Err("fragments exceed the access unit size");
        }
        frag.data.extend_from_slice(data);
        if frag.data.len() == size {
            self.emit(frag.timestamp, frag.data.freeze(), false, out);
        } else if pkt.marker {
            // The last fragment came short: drop the access unit.
            self.loss = true;
        } else {
            self.fragment = Some(frag);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_length_flag_and_hex() {
        assert_eq!(frame_samples(&[0x11, 0x90]), 1024);
        assert_eq!(frame_samples(&[0x11, 0x94]), 960);
        assert_eq!(unhex("1190"), Some(vec![0x11, 0x90]));
        assert_eq!(unhex("119"), None);
        assert_eq!(unhex("zz"), None);
    }
}
