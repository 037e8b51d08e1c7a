//! Track alignment at the start of a recording, sans-IO: each track's first packet (RTP
//! time, arrival) and the source's RTCP Sender Reports in, the tracks' RTP times at one
//! instant out (what [`sluice_media::recorder::Recorder::playing`] takes), decided on the
//! caller's clock.
//!
//! Sender Reports put every track on the sender's one NTP clock, which is exact even when a
//! track's packets arrive ahead of their presentation (video with B-frames) or in bursts.
//! They come in any order, and some senders send none, or only for some tracks: the
//! aligner waits at most [`SR_WAIT`] after the first packet for every track's report, then
//! falls back to aligning each track by the arrival of its first packet (RTP time from the
//! first packets) and says why. Nothing is lost while it waits: the writer keeps every
//! packet and the file starts at the first keyframe among them, so the wait delays only
//! when the first part is written, never what it holds.

use std::time::{Duration, Instant};

use sluice_rtp::clock::SrMapping;

/// How long after the first packet the aligner waits for every track's Sender Report
/// (and every track's first packet) before aligning with what it has.
pub(super) const SR_WAIT: Duration = Duration::from_secs(2);

/// Largest disagreement (seconds) between a track's Sender Report and the arrival of its
/// first packet that is still taken as arrival jitter; beyond it the sender's reports do
/// not describe its packets (a clock that jumped, a stale report) and arrival wins.
const SR_TOLERANCE: f64 = 5.0;

/// How the tracks were aligned.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum How {
    /// By the source's Sender Reports (every track with packets had one).
    SenderReports,
    /// A single track: nothing to align.
    SingleTrack,
    /// By the arrival of each track's first packet, because of `Fallback`.
    Arrival(Fallback),
}

/// Why the aligner fell back to arrival.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fallback {
    /// These tracks (with packets) had no Sender Report after [`SR_WAIT`].
    NoSenderReport(Vec<usize>),
    /// Track `track`'s report disagreed with its packets' arrival by `by` seconds.
    Disagree {
        /// The track.
        track: usize,
        /// By how much (seconds).
        by: f64,
    },
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            How::SenderReports => f.write_str("sender reports"),
            How::SingleTrack => f.write_str("single track"),
            How::Arrival(Fallback::NoSenderReport(t)) => {
                write!(f, "arrival of the first packets (no sender report for track(s) {t:?} after {} s)", SR_WAIT.as_secs())
            }
            How::Arrival(Fallback::Disagree { track, by }) => write!(
                f,
                "arrival of the first packets (track {track}'s sender report disagrees with its packets by {by:.1} s)"
            ),
        }
    }
}

/// The alignment decided.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Aligned {
    /// The instant the RTP times name: the first packet's arrival.
    pub base: Instant,
    /// Each track's RTP time at `base` (None: a track with no packet and no report).
    pub rtptimes: Vec<Option<u32>>,
    /// How.
    pub how: How,
    /// Tracks that had no packet yet (recorded from their first packet on, aligned by
    /// their report when they had one).
    pub silent: Vec<usize>,
}

/// First packet of a track: RTP timestamp and arrival.
#[derive(Debug, Clone, Copy)]
struct First {
    ts: u32,
    at: Instant,
}

/// Collects the first packet of each track until the tracks can be aligned.
#[derive(Debug)]
pub(super) struct Aligner {
    clock_rates: Vec<u32>,
    firsts: Vec<Option<First>>,
    /// The first packet of all: its track.
    lead: Option<usize>,
    /// When the first packet was handed in (the caller's clock): the wait counts from it.
    since: Option<Instant>,
}

impl Aligner {
    /// An aligner of tracks with these RTP clock rates.
    pub(super) fn new(clock_rates: Vec<u32>) -> Aligner {
        let n = clock_rates.len();
        Aligner {
            clock_rates,
            firsts: vec![None; n],
            lead: None,
            since: None,
        }
    }

    /// Notes a packet of `track` with RTP timestamp `ts` that arrived at `at`, handed in at
    /// `now` (later than `at` for packets of the GOP cache).
    pub(super) fn packet(&mut self, track: usize, ts: u32, at: Instant, now: Instant) {
        let Some(slot) = self.firsts.get_mut(track) else {
            return;
        };
        if slot.is_none() {
            *slot = Some(First { ts, at });
            if self.lead.is_none() {
                self.lead = Some(track);
                self.since = Some(now);
            }
        }
    }

    /// When [`Aligner::decide`] aligns whatever arrives (None before the first packet).
    pub(super) fn deadline(&self) -> Option<Instant> {
        Some(self.since? + SR_WAIT)
    }

    /// How long it has waited at `now` (since the first packet was handed in).
    pub(super) fn waited(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// The alignment at `now` given the tracks' latest Sender Reports (`srs`, per track),
    /// or None to wait: aligned by the reports as soon as every track has a packet and a
    /// report; at [`SR_WAIT`] after the first packet with what there is (the reports when
    /// every track with packets has one that agrees with its packets, else arrival).
    pub(super) fn decide(&self, now: Instant, srs: &[Option<SrMapping>]) -> Option<Aligned> {
        let lead = self.lead?;
        let first = (*self.firsts.get(lead)?)?;
        let silent: Vec<usize> = (0..self.firsts.len())
            .filter(|&t| self.firsts[t].is_none())
            .collect();
        if self.firsts.len() == 1 {
            return Some(Aligned {
                base: first.at,
                rtptimes: vec![Some(first.ts)],
                how: How::SingleTrack,
                silent,
            });
        }
        let by_sr = self.by_sender_reports(lead, first, srs);
        let complete =
            silent.is_empty() && srs.len() >= self.firsts.len() && srs.iter().all(Option::is_some);
        if complete {
            if let Ok(rtptimes) = &by_sr {
                return Some(Aligned {
                    base: first.at,
                    rtptimes: rtptimes.clone(),
                    how: How::SenderReports,
                    silent,
                });
            }
        }
        let due = self.deadline().is_some_and(|d| now >= d);
        if !due {
            return None;
        }
        let (rtptimes, how) = match by_sr {
            Ok(r) => (r, How::SenderReports),
            Err(why) => (self.by_arrival(first.at), How::Arrival(why)),
        };
        Some(Aligned {
            base: first.at,
            rtptimes,
            how,
            silent,
        })
    }

    fn clock(&self, track: usize) -> f64 {
        f64::from(self.clock_rates.get(track).copied().unwrap_or(1).max(1))
    }

    /// Each track's RTP time at `base` from the arrival of its first packet: the first
    /// packet's RTP time, less the time it arrived after `base`.
    fn by_arrival(&self, base: Instant) -> Vec<Option<u32>> {
        self.firsts
            .iter()
            .enumerate()
            .map(|(t, f)| {
                let f = (*f)?;
                let behind = f.at.saturating_duration_since(base).as_secs_f64() * self.clock(t);
                Some(f.ts.wrapping_sub(behind.round() as u32))
            })
            .collect()
    }

    /// Each track's RTP time at the media instant of the first packet (`lead`'s `first`),
    /// through the Sender Reports: an error naming what is missing or wrong unless every
    /// track with packets has a report agreeing with its packets' arrival.
    fn by_sender_reports(
        &self,
        lead: usize,
        first: First,
        srs: &[Option<SrMapping>],
    ) -> Result<Vec<Option<u32>>, Fallback> {
        let missing: Vec<usize> = (0..self.firsts.len())
            .filter(|&t| self.firsts[t].is_some() && srs.get(t).copied().flatten().is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Fallback::NoSenderReport(missing));
        }
        let Some(Some(m0)) = srs.get(lead).copied() else {
            return Err(Fallback::NoSenderReport(vec![lead]));
        };
        // The NTP instant of the first packet, as seconds after m0's NTP time.
        let since = f64::from(first.ts.wrapping_sub(m0.rtp_timestamp) as i32) / self.clock(lead);
        let mut out = Vec::with_capacity(self.firsts.len());
        for t in 0..self.firsts.len() {
            let Some(Some(m)) = srs.get(t).copied() else {
                out.push(None);
                continue;
            };
            // m's NTP time after m0's (seconds; wraps like NTP itself).
            let offset = m.ntp.0.wrapping_sub(m0.ntp.0) as i64 as f64 / 4_294_967_296.0;
            let ticks = ((since - offset) * self.clock(t)).round() as i64;
            let rt = m.rtp_timestamp.wrapping_add(ticks as u32);
            if let Some(f) = self.firsts[t] {
                let ahead = f64::from(f.ts.wrapping_sub(rt) as i32) / self.clock(t);
                let arrived = f.at.saturating_duration_since(first.at).as_secs_f64();
                let by = (ahead - arrived).abs();
                if by >= SR_TOLERANCE {
                    return Err(Fallback::Disagree { track: t, by });
                }
            }
            out.push(Some(rt));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_rtp::ntp::NtpTime;

    const VIDEO: u32 = 90_000;
    const AUDIO: u32 = 48_000;

    /// A sender whose media clock is NTP `ntp0` + t seconds at RTP times `v0 + t·90k`
    /// (video) and `a0 + t·48k` (audio).
    struct Sender {
        ntp0: u64,
        v0: u32,
        a0: u32,
    }

    impl Sender {
        fn ts(&self, track: usize, t: f64) -> u32 {
            match track {
                0 => self.v0.wrapping_add((t * f64::from(VIDEO)).round() as u32),
                _ => self.a0.wrapping_add((t * f64::from(AUDIO)).round() as u32),
            }
        }

        fn sr(&self, track: usize, t: f64, at: Instant) -> SrMapping {
            SrMapping {
                ntp: NtpTime(self.ntp0.wrapping_add((t * 4_294_967_296.0) as u64)),
                rtp_timestamp: self.ts(track, t),
                received_at: at,
            }
        }
    }

    fn sender() -> Sender {
        Sender {
            ntp0: 3_974_000_000u64 << 32,
            v0: 4_000_000_000,
            a0: 77,
        }
    }

    /// The media instant (seconds of the sender's clock) each track's RTP time names.
    fn named(s: &Sender, a: &Aligned) -> Vec<f64> {
        a.rtptimes
            .iter()
            .enumerate()
            .map(|(t, r)| {
                let base = if t == 0 { s.v0 } else { s.a0 };
                let clock = if t == 0 { VIDEO } else { AUDIO };
                f64::from(r.unwrap().wrapping_sub(base) as i32) / f64::from(clock)
            })
            .collect()
    }

    #[test]
    fn reports_for_every_track_align_at_once_on_the_senders_clock() {
        let s = sender();
        let t0 = Instant::now();
        let mut a = Aligner::new(vec![VIDEO, AUDIO]);
        // Video at media 10.0 s arrives first, 300 ms ahead of its presentation (B-frames),
        // audio at 10.0 s 300 ms later: arrival alone would misalign them by 300 ms.
        a.packet(0, s.ts(0, 10.0), t0, t0);
        a.packet(1, s.ts(1, 10.0), t0 + Duration::from_millis(300), t0);
        let srs = [Some(s.sr(0, 9.0, t0)), Some(s.sr(1, 9.5, t0))];
        let got = a.decide(t0 + Duration::from_millis(300), &srs).unwrap();
        assert_eq!(got.how, How::SenderReports);
        let at = named(&s, &got);
        assert!(
            (at[0] - 10.0).abs() < 1e-4 && (at[1] - 10.0).abs() < 1e-4,
            "{at:?}"
        );
        assert_eq!(got.base, t0);
    }

    #[test]
    fn a_late_audio_report_is_waited_for_within_the_limit() {
        let s = sender();
        let t0 = Instant::now();
        let mut a = Aligner::new(vec![VIDEO, AUDIO]);
        a.packet(0, s.ts(0, 1.0), t0, t0);
        a.packet(1, s.ts(1, 1.0), t0 + Duration::from_millis(20), t0);
        let only_video = [Some(s.sr(0, 1.0, t0)), None];
        for ms in [0, 500, 1000, 1999] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(a.decide(now, &only_video), None, "waits at {ms} ms");
        }
        // The audio report comes 1.5 s in: aligned by the reports then.
        let both = [Some(s.sr(0, 1.0, t0)), Some(s.sr(1, 2.5, t0))];
        let got = a.decide(t0 + Duration::from_millis(1500), &both).unwrap();
        assert_eq!(got.how, How::SenderReports);
        let at = named(&s, &got);
        assert!(
            (at[0] - 1.0).abs() < 1e-4 && (at[1] - 1.0).abs() < 1e-4,
            "{at:?}"
        );
    }

    #[test]
    fn no_report_for_a_track_falls_back_to_arrival_after_two_seconds() {
        let s = sender();
        let t0 = Instant::now();
        let mut a = Aligner::new(vec![VIDEO, AUDIO]);
        a.packet(1, s.ts(1, 5.0), t0, t0);
        a.packet(0, s.ts(0, 5.04), t0 + Duration::from_millis(40), t0);
        // Only audio's report ever comes (any order: audio first here).
        let srs = [None, Some(s.sr(1, 5.0, t0))];
        assert_eq!(a.deadline(), Some(t0 + SR_WAIT));
        assert_eq!(a.decide(t0 + Duration::from_millis(1900), &srs), None);
        let got = a.decide(t0 + SR_WAIT, &srs).unwrap();
        assert_eq!(got.how, How::Arrival(Fallback::NoSenderReport(vec![0])));
        assert!(
            got.how.to_string().contains("no sender report"),
            "{}",
            got.how
        );
        // Both tracks' first packets pinned to their arrival: 5.0 s at t0 on both clocks.
        let at = named(&s, &got);
        assert!(
            (at[0] - 5.0).abs() < 1e-4 && (at[1] - 5.0).abs() < 1e-4,
            "{at:?}"
        );
        // Without any report at all, the same.
        let got = a.decide(t0 + SR_WAIT, &[None, None]).unwrap();
        assert_eq!(got.how, How::Arrival(Fallback::NoSenderReport(vec![0, 1])));
    }

    #[test]
    fn a_report_that_disagrees_with_the_packets_is_not_used() {
        let s = sender();
        let t0 = Instant::now();
        let mut a = Aligner::new(vec![VIDEO, AUDIO]);
        a.packet(0, s.ts(0, 1.0), t0, t0);
        a.packet(1, s.ts(1, 1.0), t0, t0);
        // Audio's report is 30 s off (its clock jumped).
        let srs = [Some(s.sr(0, 1.0, t0)), Some(s.sr(1, 31.0, t0))];
        let mut bad = srs;
        if let Some(m) = bad[1].as_mut() {
            m.ntp = s.sr(1, 1.0, t0).ntp;
        }
        assert_eq!(a.decide(t0, &bad), None, "waits for a better report");
        let got = a.decide(t0 + SR_WAIT, &bad).unwrap();
        assert!(
            matches!(got.how, How::Arrival(Fallback::Disagree { track: 1, by }) if (by - 30.0).abs() < 0.01),
            "{:?}",
            got.how
        );
        let at = named(&s, &got);
        assert!(
            (at[0] - 1.0).abs() < 1e-4 && (at[1] - 1.0).abs() < 1e-4,
            "{at:?}"
        );
        // The good reports align at once.
        assert_eq!(a.decide(t0, &srs).unwrap().how, How::SenderReports);
    }

    #[test]
    fn a_silent_track_waits_two_seconds_then_the_others_record() {
        let s = sender();
        let t0 = Instant::now();
        let mut a = Aligner::new(vec![VIDEO, AUDIO]);
        // GOP-cache packets handed in late: the wait counts from the hand-in.
        let handed = t0 + Duration::from_secs(3);
        a.packet(0, s.ts(0, 0.0), t0, handed);
        let srs = [Some(s.sr(0, 0.0, t0)), Some(s.sr(1, 0.0, t0))];
        assert_eq!(a.decide(handed + Duration::from_secs(1), &srs), None);
        let got = a.decide(handed + SR_WAIT, &srs).unwrap();
        assert_eq!(got.how, How::SenderReports);
        assert_eq!(got.silent, vec![1]);
        // The silent track's report still gives it its RTP time at the base.
        let at = named(&s, &got);
        assert!((at[0]).abs() < 1e-4 && (at[1]).abs() < 1e-4, "{at:?}");
        // No report for the silent track: it starts from its own first packet.
        let got = a.decide(handed + SR_WAIT, &[srs[0], None]).unwrap();
        assert_eq!(got.how, How::SenderReports);
        assert_eq!(got.rtptimes[1], None);
    }

    #[test]
    fn a_single_track_starts_at_its_first_packet() {
        let t0 = Instant::now();
        let mut a = Aligner::new(vec![AUDIO]);
        assert_eq!(a.decide(t0, &[None]), None);
        a.packet(0, 1234, t0, t0);
        let got = a.decide(t0, &[None]).unwrap();
        assert_eq!(got.how, How::SingleTrack);
        assert_eq!(got.rtptimes, vec![Some(1234)]);
    }
}
