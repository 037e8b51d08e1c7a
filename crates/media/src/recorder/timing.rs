//! How a track's access units are timed: RTP timestamps unwrapped against the track's origin,
//! or, when the sender's RTP clock does not advance, arrival times placed on a steady frame
//! grid.

/// A track whose RTP timestamp has not changed across access units arriving this long apart
/// (seconds) has a frozen RTP clock. Several access units with one timestamp within a
/// moment are normal (slices sent with their own marker bits); half a second of them is not.
pub(crate) const FROZEN_AFTER: f64 = 0.5;

/// How a track's access units are timed: by RTP timestamp, or by arrival when the sender's
/// RTP clock does not advance (RFC 3550 wants a timestamp per sampling instant, but a
/// GStreamer pipeline fed untimestamped buffers, for one, stamps every frame alike).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TrackClock {
    /// No access unit yet.
    Unseen,
    /// All `count` access units so far carried `ts`; the first arrived at `since` (seconds).
    Probing { ts: u32, since: f64, count: u32 },
    /// Timestamps advance: time by RTP.
    Rtp,
    /// Timestamps are frozen: time by arrival, on a grid of `frame` seconds (see [`grid_time`]).
    Arrival { frame: f64 },
}

impl TrackClock {
    /// Notes an access unit with RTP timestamp `ts` arriving at `at` (seconds); `framerate`
    /// is the SDP's, if any (else the frame rate is estimated from the probed arrivals).
    pub(crate) fn observe(&mut self, ts: u32, at: f64, framerate: Option<f64>) {
        match *self {
            TrackClock::Unseen => {
                *self = TrackClock::Probing {
                    ts,
                    since: at,
                    count: 1,
                }
            }
            TrackClock::Probing {
                ts: first,
                since,
                count,
            } => {
                let count = count.saturating_add(1);
                if ts != first {
                    *self = TrackClock::Rtp;
                } else if at - since >= FROZEN_AFTER {
                    // Whole frames per second: what cameras send, and what keeps a player's
                    // constant frame rate from merging or splitting frames.
                    let measured = f64::from(count - 1) / (at - since);
                    let fps = framerate.unwrap_or(measured).round().clamp(1.0, 240.0);
                    *self = TrackClock::Arrival { frame: 1.0 / fps };
                } else {
                    *self = TrackClock::Probing {
                        ts: first,
                        since,
                        count,
                    };
                }
            }
            TrackClock::Rtp | TrackClock::Arrival { .. } => {}
        }
    }

    /// Whether the timing is known well enough at `now` (seconds) to start the file: a track
    /// still probing may turn out frozen, so the file waits for it. Several access units
    /// with one timestamp wait for the next one to decide; a lone access unit (a slow
    /// track) counts as RTP-timed once [`FROZEN_AFTER`] passed without another.
    pub(crate) fn settled(&self, now: f64) -> bool {
        match *self {
            TrackClock::Probing { since, count, .. } => count < 2 && now - since >= FROZEN_AFTER,
            _ => true,
        }
    }

    /// When (seconds) a lone probed access unit settles the timing by itself (see
    /// [`TrackClock::settled`]); `None` when nothing but the next access unit can settle it.
    pub(crate) fn settles_at(&self) -> Option<f64> {
        match *self {
            TrackClock::Probing {
                since, count: 1, ..
            } => Some(since + FROZEN_AFTER),
            _ => None,
        }
    }
}

/// The time (seconds) of a frame of a track timed by arrival: one `frame` after the
/// previous frame's time `last`, nudged toward its `arrival` by at most an eighth of a frame
/// (so the grid follows the sender's real rate without its jitter), or moved on by whole
/// frames when it arrives more than two frames late (frames were lost or the sender
/// stalled). Raw arrival times would do instead if players did not map jittery frames onto
/// a constant frame rate, where two can land on one instant.
pub(crate) fn grid_time(last: Option<f64>, frame: f64, arrival: f64) -> f64 {
    let Some(last) = last else {
        return arrival;
    };
    let expected = last + frame;
    let late = arrival - expected;
    if late > 2.0 * frame {
        expected + (late / frame).round() * frame
    } else {
        expected + (late / 16.0).clamp(-frame / 8.0, frame / 8.0)
    }
}

/// Unwraps a track's 32-bit RTP timestamps into ticks since its origin: the RTP-Info
/// `rtptime` of PLAY when the server named one (all tracks' rtptimes name the same instant,
/// so tracks stay in sync), else the first timestamp seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct Unwrapper {
    origin: Option<u32>,
    /// The last timestamp and its unwrapped ticks, once one was seen.
    last: Option<(u32, i64)>,
}

impl Unwrapper {
    /// Sets the origin (RTP-Info `rtptime`); ignored once a timestamp was unwrapped.
    pub(crate) fn set_origin(&mut self, ts: u32) {
        if self.last.is_none() {
            self.origin = Some(ts);
        }
    }

    /// Ticks of `ts` since the origin, unwrapped: each step to the next timestamp is taken
    /// as the shorter way round the 32-bit circle, so wraps and small reorderings both work.
    pub(crate) fn ticks(&mut self, ts: u32) -> i64 {
        let (last_ts, last_rel) = match self.last {
            Some(l) => l,
            None => (*self.origin.get_or_insert(ts), 0),
        };
        let rel = last_rel + i64::from(ts.wrapping_sub(last_ts) as i32);
        self.last = Some((ts, rel));
        rel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_timestamps_time_by_rtp_at_the_second_access_unit() {
        let mut c = TrackClock::Unseen;
        assert!(c.settled(0.0));
        c.observe(1000, 0.0, None);
        assert!(!c.settled(0.1), "one access unit says nothing yet");
        c.observe(4000, 0.033, None);
        assert_eq!(c, TrackClock::Rtp);
        assert!(c.settled(0.033));
        // A later repeat (slices with their own marker bits) changes nothing.
        c.observe(4000, 5.0, None);
        assert_eq!(c, TrackClock::Rtp);
    }

    #[test]
    fn a_frozen_clock_is_timed_by_arrival_after_half_a_second() {
        let mut c = TrackClock::Unseen;
        for i in 0..15 {
            c.observe(77, f64::from(i) / 29.0, None);
        }
        assert!(matches!(c, TrackClock::Probing { count: 15, .. }));
        assert!(!c.settled(0.4));
        assert!(
            !c.settled(0.6),
            "repeated timestamps wait for the next access unit"
        );
        assert_eq!(c.settles_at(), None);
        c.observe(77, 0.52, None);
        assert_eq!(c, TrackClock::Arrival { frame: 1.0 / 29.0 });
        // The SDP's a=framerate wins over the estimate.
        let mut c = TrackClock::Unseen;
        c.observe(77, 0.0, Some(30.0));
        c.observe(77, 0.6, Some(30.0));
        assert_eq!(c, TrackClock::Arrival { frame: 1.0 / 30.0 });
    }

    #[test]
    fn a_single_access_unit_settles_after_the_probe_window() {
        let mut c = TrackClock::Unseen;
        c.observe(5, 1.0, None);
        assert!(!c.settled(1.2));
        assert_eq!(c.settles_at(), Some(1.0 + FROZEN_AFTER));
        assert!(c.settled(1.0 + FROZEN_AFTER));
    }

    #[test]
    fn the_frame_grid_smooths_jitter_and_skips_gaps() {
        let d = 1.0 / 30.0;
        let mut last = None;
        let mut times = Vec::new();
        // Jittery arrivals (±12 ms) at 30 fps, then a 1 s stall.
        for i in 0..60 {
            let jitter = if i % 2 == 0 { 0.012 } else { -0.012 };
            let arrival = f64::from(i) * d + jitter + if i >= 30 { 1.0 } else { 0.0 };
            let t = grid_time(last, d, arrival);
            last = Some(t);
            times.push(t);
        }
        for w in times.windows(2) {
            let step = w[1] - w[0];
            assert!(
                (step - d).abs() <= d / 8.0 + 1e-9 || step > 2.0 * d,
                "step {step}"
            );
        }
        let gap = times[30] - times[29];
        assert!((gap - (1.0 + d)).abs() < d, "the stall is kept: {gap}");
        assert!(
            (times[59] - (59.0 * d + 1.0)).abs() < d,
            "the grid follows the arrivals: {}",
            times[59]
        );
    }

    #[test]
    fn timestamps_unwrap_across_the_32_bit_wrap_from_the_origin() {
        let mut u = Unwrapper::default();
        u.set_origin(u32::MAX - 2999);
        assert_eq!(u.ticks(u32::MAX - 2999), 0);
        assert_eq!(
            u.ticks((u32::MAX - 2999).wrapping_add(3000)),
            3000,
            "wrapped to 0"
        );
        assert_eq!(u.ticks(3000), 6000);
        // A packet reordered slightly backwards goes back, not four billion ticks ahead.
        assert_eq!(u.ticks(0), 3000);
        // Without an RTP-Info rtptime the first timestamp is the origin.
        let mut u = Unwrapper::default();
        assert_eq!(u.ticks(90_000), 0);
        u.set_origin(5);
        assert_eq!(u.ticks(93_000), 3000, "a late origin changes nothing");
    }
}
