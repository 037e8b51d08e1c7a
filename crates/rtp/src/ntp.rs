//! 64-bit NTP timestamps (RFC 5905 §6) as used in RTCP Sender Reports.

use std::time::Duration;

/// Seconds between the NTP epoch (1900-01-01) and the Unix epoch (1970-01-01).
pub const UNIX_EPOCH_NTP_SECONDS: u64 = 2_208_988_800;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// 64-bit NTP timestamp (seconds since 1900 in the high 32 bits, fraction in the low 32).
///
/// Arithmetic wraps at the 2036 era boundary; [`NtpTime::to_unix`] interprets
/// seconds below the Unix epoch offset as belonging to era 1 (2036–2106).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// Converts a time since the Unix epoch to NTP, rounding to the nearest fraction unit.
    ///
    /// Times past 2106 wrap modulo the 32-bit seconds field.
    pub fn from_unix(d: Duration) -> Self {
        let secs = d.as_secs().wrapping_add(UNIX_EPOCH_NTP_SECONDS);
        NtpTime((secs << 32).wrapping_add(u64::from(nanos_to_fraction(d.subsec_nanos()))))
    }

    /// Converts back to a time since the Unix epoch, rounding to the nearest nanosecond.
    ///
    /// Seconds values below [`UNIX_EPOCH_NTP_SECONDS`] are taken to be in NTP era 1
    /// (after 2036-02-07), so the covered range is 1970–2106.
    pub fn to_unix(self) -> Duration {
        let ntp_secs = self.seconds() as u64;
        let secs = if ntp_secs >= UNIX_EPOCH_NTP_SECONDS {
            ntp_secs - UNIX_EPOCH_NTP_SECONDS
        } else {
            ntp_secs + (1 << 32) - UNIX_EPOCH_NTP_SECONDS
        };
        // Duration::new carries a rounded-up 1_000_000_000 ns into the seconds.
        Duration::new(secs, fraction_to_nanos(self.fraction()))
    }

    /// The middle 32 bits (16.16 fixed point seconds), as carried in the LSR field of report blocks.
    pub fn middle32(self) -> u32 {
        (self.0 >> 16) as u32
    }

    /// Adds a duration, wrapping at the end of the NTP era.
    #[allow(clippy::should_implement_trait)] // named method is part of the agreed API
    pub fn add(self, d: Duration) -> Self {
        NtpTime(self.0.wrapping_add(duration_to_ntp_units(d)))
    }

    /// Subtracts a duration, wrapping at the start of the NTP era.
    #[allow(clippy::should_implement_trait)]
    pub fn sub(self, d: Duration) -> Self {
        NtpTime(self.0.wrapping_sub(duration_to_ntp_units(d)))
    }

    /// Whole seconds since 1900 (modulo the era).
    pub fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Fractional second in units of 2^-32 s.
    pub fn fraction(self) -> u32 {
        self.0 as u32
    }
}

/// Converts a duration to 64-bit NTP units (32.32 fixed point seconds), wrapping.
fn duration_to_ntp_units(d: Duration) -> u64 {
    (d.as_secs() << 32).wrapping_add(u64::from(nanos_to_fraction(d.subsec_nanos())))
}

/// Converts a duration to 16.16 fixed point seconds (the unit of DLSR), saturating.
pub fn duration_to_short(d: Duration) -> u32 {
    let units = (d.as_nanos() << 16) / NANOS_PER_SEC;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// Converts 16.16 fixed point seconds (LSR/DLSR units) to a duration.
pub fn short_to_duration(v: u32) -> Duration {
    let nanos = (u128::from(v) * NANOS_PER_SEC) >> 16;
    // At most 65536 s, which fits easily in u64 nanoseconds.
    Duration::from_nanos(nanos as u64)
}

fn nanos_to_fraction(nanos: u32) -> u32 {
    // nanos < 1e9, so the rounded result is < 2^32.
    (((u64::from(nanos) << 32) + 500_000_000) / 1_000_000_000) as u32
}

fn fraction_to_nanos(fraction: u32) -> u32 {
    // Result is at most 1e9 (when rounding up the largest fraction).
    ((u64::from(fraction) * 1_000_000_000 + (1 << 31)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_epoch() {
        let t = NtpTime::from_unix(Duration::ZERO);
        assert_eq!(t.0, UNIX_EPOCH_NTP_SECONDS << 32);
        assert_eq!(t.to_unix(), Duration::ZERO);
    }

    #[test]
    fn half_second() {
        let t = NtpTime::from_unix(Duration::from_millis(1500));
        assert_eq!(t.seconds() as u64, UNIX_EPOCH_NTP_SECONDS + 1);
        assert_eq!(t.fraction(), 0x8000_0000);
        assert_eq!(t.to_unix(), Duration::from_millis(1500));
    }

    #[test]
    fn nanosecond_round_trip() {
        for nanos in [0, 1, 2, 499_999_999, 500_000_001, 999_999_998, 999_999_999] {
            let d = Duration::new(1_700_000_000, nanos);
            assert_eq!(NtpTime::from_unix(d).to_unix(), d, "nanos {nanos}");
        }
    }

    #[test]
    fn largest_fraction_carries() {
        let t = NtpTime((UNIX_EPOCH_NTP_SECONDS << 32) | 0xffff_ffff);
        assert_eq!(t.to_unix(), Duration::from_secs(1));
    }

    #[test]
    fn era_one() {
        // 2_208_988_800 s after the Unix epoch (early 2040) lies in NTP era 1.
        let unix = Duration::from_secs(2_208_988_800);
        let t = NtpTime::from_unix(unix);
        assert_eq!(t.seconds() as u64, (2 * UNIX_EPOCH_NTP_SECONDS) - (1 << 32));
        assert_eq!(t.to_unix(), unix);
    }

    #[test]
    fn middle32() {
        let t = NtpTime(0x1234_5678_9abc_def0);
        assert_eq!(t.middle32(), 0x5678_9abc);
    }

    #[test]
    fn add_and_sub() {
        let t = NtpTime::from_unix(Duration::from_secs(100));
        let later = t.add(Duration::from_millis(250));
        assert_eq!(later.0 - t.0, 1 << 30);
        assert_eq!(later.sub(Duration::from_millis(250)), t);
        // Wraps at the era boundary.
        assert_eq!(
            NtpTime(u64::MAX).add(Duration::from_secs(1)).0,
            (1 << 32) - 1
        );
    }

    #[test]
    fn short_format() {
        assert_eq!(duration_to_short(Duration::from_millis(500)), 0x8000);
        assert_eq!(duration_to_short(Duration::from_secs(2)), 0x2_0000);
        assert_eq!(duration_to_short(Duration::from_secs(1 << 20)), u32::MAX);
        assert_eq!(short_to_duration(0x1_8000), Duration::from_millis(1500));
    }
}
