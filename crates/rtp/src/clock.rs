//! NTP↔RTP clock mapping taken from a source's Sender Report.

use std::time::{Duration, Instant};

use crate::ntp::NtpTime;
use crate::rtcp::SenderInfo;

/// Maps a source's RTP timestamps to wall-clock NTP time from its latest Sender Report, so a relay can emit its own SRs that keep the publisher's NTP↔RTP mapping.
#[derive(Clone, Copy, Debug)]
pub struct SrMapping {
    /// NTP time from the Sender Report.
    pub ntp: NtpTime,
    /// RTP timestamp from the Sender Report, sampled at `ntp`.
    pub rtp_timestamp: u32,
    /// Local time at which the Sender Report arrived.
    pub received_at: Instant,
}

impl SrMapping {
    /// Takes the mapping from a Sender Report that arrived at `received_at`.
    pub fn from_sender_report(info: &SenderInfo, received_at: Instant) -> Self {
        SrMapping {
            ntp: info.ntp,
            rtp_timestamp: info.rtp_timestamp,
            received_at,
        }
    }

    /// (ntp, rtp) at `now`, extrapolated with the clock rate: rtp = rtp_timestamp + elapsed*clock_rate (wrapping), ntp = ntp + elapsed.
    ///
    /// `now` earlier than `received_at` extrapolates backwards. The RTP value is
    /// rounded to the nearest tick.
    pub fn extrapolate(&self, now: Instant, clock_rate: u32) -> (NtpTime, u32) {
        if let Some(elapsed) = now.checked_duration_since(self.received_at) {
            let ticks = ticks(elapsed, clock_rate);
            (
                self.ntp.add(elapsed),
                self.rtp_timestamp.wrapping_add(ticks),
            )
        } else {
            let back = self.received_at.duration_since(now);
            let ticks = ticks(back, clock_rate);
            (self.ntp.sub(back), self.rtp_timestamp.wrapping_sub(ticks))
        }
    }
}

/// `d * clock_rate`, rounded to the nearest tick and reduced modulo 2^32.
fn ticks(d: Duration, clock_rate: u32) -> u32 {
    let t = (d.as_nanos() * u128::from(clock_rate) + 500_000_000) / 1_000_000_000;
    // Truncation is the intended modulo-2^32 wrap of RTP timestamps.
    t as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(base: Instant) -> SrMapping {
        SrMapping {
            ntp: NtpTime::from_unix(Duration::from_secs(1_700_000_000)),
            rtp_timestamp: 1000,
            received_at: base,
        }
    }

    #[test]
    fn at_receive_time_is_identity() {
        let base = Instant::now();
        let m = mapping(base);
        assert_eq!(m.extrapolate(base, 90_000), (m.ntp, 1000));
    }

    #[test]
    fn forward() {
        let base = Instant::now();
        let m = mapping(base);
        let (ntp, rtp) = m.extrapolate(base + Duration::from_millis(1500), 90_000);
        assert_eq!(rtp, 1000 + 135_000);
        assert_eq!(
            ntp.to_unix(),
            Duration::from_secs(1_700_000_000) + Duration::from_millis(1500)
        );
        let (_, rtp) = m.extrapolate(base + Duration::from_millis(20), 48_000);
        assert_eq!(rtp, 1000 + 960);
    }

    #[test]
    fn rtp_wraps() {
        let base = Instant::now();
        let m = SrMapping {
            rtp_timestamp: u32::MAX - 899, // 900 ticks before wrap
            ..mapping(base)
        };
        let (_, rtp) = m.extrapolate(base + Duration::from_millis(20), 90_000); // +1800
        assert_eq!(rtp, 900);
        // A long time: 2^32 ticks at 90 kHz is ~13.25 h; 14 h wraps once.
        let elapsed = Duration::from_secs(14 * 3600);
        let (_, rtp) = mapping(base).extrapolate(base + elapsed, 90_000);
        let expected = (1000u64 + 14 * 3600 * 90_000) % (1u64 << 32);
        assert_eq!(u64::from(rtp), expected);
    }

    #[test]
    fn backwards() {
        let base = Instant::now() + Duration::from_secs(10);
        let m = mapping(base);
        let (ntp, rtp) = m.extrapolate(base - Duration::from_millis(100), 8000);
        assert_eq!(rtp, 200);
        assert_eq!(
            ntp.to_unix(),
            Duration::from_secs(1_700_000_000) - Duration::from_millis(100)
        );
        let (_, rtp) = m.extrapolate(base - Duration::from_millis(1000), 8000);
        assert_eq!(rtp, 1000u32.wrapping_sub(8000));
    }

    #[test]
    fn from_sender_report() {
        let base = Instant::now();
        let info = SenderInfo {
            ssrc: 1,
            ntp: NtpTime(42 << 32),
            rtp_timestamp: 7,
            packet_count: 0,
            octet_count: 0,
        };
        let m = SrMapping::from_sender_report(&info, base);
        assert_eq!(m.ntp, NtpTime(42 << 32));
        assert_eq!(m.rtp_timestamp, 7);
        assert_eq!(m.received_at, base);
    }
}
