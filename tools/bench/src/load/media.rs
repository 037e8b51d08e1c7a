//! The load client's media thread. Once a reader's PLAY has been answered and its first
//! keyframe timed, its handshake task hands the reader's sockets, session and counters
//! over, and from then on one thread reads every playing reader from one edge-triggered
//! `mio` poll.
//!
//! Why a thread of its own: with a tokio task per reader, each wake-up of a reader went
//! through the runtime's readiness bookkeeping, a task wake-up and a poll of the reader's
//! whole wait (stop signal, timers, write readiness), for the one or two packets a 200 kb/s
//! reader gets per frame. perf put that user-space share at 28 % (TCP) and 37 % (UDP) of
//! the client's CPU at 1,000 readers. Here a wake-up is one poll event and the reads it
//! calls for. Handshakes stay on the runtime: they are few, they need timeouts and the
//! connect storm's semaphore, and they are not what the window measures.
//!
//! Timers (keep-alives, request timeouts) are not armed per reader: every reader's
//! [`ClientSession::poll_timeout`] is checked on a sweep every [`SWEEP`], which keep-alives
//! tens of seconds apart do not notice.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use sluice_rtsp::client::{ClientEvent, ClientSession};
use tokio::sync::oneshot;

use super::{
    read_tcp_once, recv_batch, Ctx, ReadBufs, ReaderStats, Rx, TcpRead, TcpReadError, BATCH,
};

/// How often every reader's session timers are checked.
const SWEEP: Duration = Duration::from_millis(200);
/// After stop, how long readers get for their TEARDOWN answers.
const TEARDOWN_WAIT: Duration = Duration::from_secs(3);
/// Longest wait in one poll (stop and shut-down are seen within it, besides the waker).
const MAX_WAIT: Duration = Duration::from_millis(50);
/// The waker's token.
const WAKE: Token = Token(usize::MAX);
/// Low bits of a token naming a reader's socket: 0 is the RTSP connection, 1 + i the RTP
/// socket of track i. The reader's slot is the rest.
const KIND_BITS: u32 = 4;
/// Most tracks a reader can have here (the token's kind bits).
const MAX_TRACKS: usize = (1 << KIND_BITS) - 1;

/// A reader whose PLAY was answered, handed from its handshake task to the media thread.
pub(super) struct Playing {
    /// The RTSP session (keep-alives, TEARDOWN).
    pub session: ClientSession,
    /// The reader's counters.
    pub rx: Rx,
    /// The RTSP connection (and, for TCP transport, the media).
    pub tcp: std::net::TcpStream,
    /// RTP socket per track (UDP transport).
    pub rtp: Vec<std::net::UdpSocket>,
    /// RTCP socket per track: kept open, not read.
    pub rtcp: Vec<std::net::UdpSocket>,
    /// Bytes of a partial frame or message read but not yet parsed.
    pub carry: Vec<u8>,
    /// Bytes queued for the RTSP connection.
    pub out: Vec<u8>,
    /// Where the reader's counters go when it ends.
    pub done: oneshot::Sender<ReaderStats>,
}

/// The handshake tasks' and the coordinator's side of the media thread.
pub(super) struct Handoff {
    tx: mpsc::Sender<Playing>,
    waker: Waker,
    exit: AtomicBool,
}

impl Handoff {
    /// Gives a playing reader to the media thread; returns it if the thread has ended.
    ///
    /// The thread is not woken: it takes new readers in at its next poll, within
    /// [`MAX_WAIT`]. Their first keyframe has been timed already, and what arrives
    /// meanwhile waits in their sockets. A wake-up per hand-over would preempt the server
    /// on the other core once per reader during the connect storm.
    pub(super) fn send(&self, p: Playing) -> Result<(), Box<Playing>> {
        self.tx.send(p).map_err(|e| Box::new(e.0))
    }

    /// Wakes the thread so that it sees [`Ctx::stopping`] at once.
    pub(super) fn wake(&self) {
        // A failed wake only delays the thread to its next poll timeout.
        let _ = self.waker.wake();
    }

    /// Ends the thread once every reader has been collected: readers handed over later are
    /// returned by [`Handoff::send`].
    pub(super) fn shut_down(&self) {
        self.exit.store(true, Ordering::Relaxed);
        self.wake();
    }
}

/// The thread before it starts: created first, so that [`Ctx`] can hold its [`Handoff`].
pub(super) struct MediaThread {
    poll: Poll,
    incoming: mpsc::Receiver<Playing>,
}

/// Creates the media thread's poll, its waker and the hand-over channel.
pub(super) fn create() -> io::Result<(Handoff, MediaThread)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKE)?;
    let (tx, incoming) = mpsc::channel();
    Ok((
        Handoff {
            tx,
            waker,
            exit: AtomicBool::new(false),
        },
        MediaThread { poll, incoming },
    ))
}

impl MediaThread {
    /// Runs the thread until [`Handoff::shut_down`].
    pub(super) fn spawn(self, ctx: Arc<Ctx>) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("bench-media".into())
            .spawn(move || {
                Media {
                    ctx,
                    poll: self.poll,
                    incoming: self.incoming,
                    slots: Vec::new(),
                    free: Vec::new(),
                    rests: VecDeque::new(),
                    bufs: ReadBufs::new(),
                    stop_at: None,
                }
                .run()
            })
    }
}

/// How a reader ended.
enum Gone {
    /// The session failed or the server closed it.
    Failed(String),
    /// TEARDOWN answered (or the connection closed) after stop.
    Closed,
}

/// One playing reader.
struct Slot {
    session: ClientSession,
    rx: Rx,
    tcp: TcpStream,
    rtp: Vec<UdpSocket>,
    _rtcp: Vec<std::net::UdpSocket>,
    carry: Vec<u8>,
    out: Vec<u8>,
    done: oneshot::Sender<ReaderStats>,
    /// TEARDOWN sent.
    stopping: bool,
    /// Resting (`Ctx::rest`) until then; `pending` has a bit per socket kind that became
    /// ready meanwhile.
    rest_until: Option<Instant>,
    pending: u16,
}

struct Media {
    ctx: Arc<Ctx>,
    poll: Poll,
    incoming: mpsc::Receiver<Playing>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Resting readers by due time (the rest is constant, so pushes come in order).
    rests: VecDeque<(Instant, usize)>,
    /// Read buffers, one set for the thread.
    bufs: ReadBufs,
    /// TEARDOWN deadline, once stop has been seen.
    stop_at: Option<Instant>,
}

impl Media {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let mut wait = MAX_WAIT;
            if let Some(&(due, _)) = self.rests.front() {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("bench media thread: poll: {e}");
                    break;
                }
            }
            let window = self.ctx.window.load(Ordering::Relaxed);
            let now = Instant::now();
            self.accept(now, window);
            for ev in events.iter() {
                if ev.token() == WAKE {
                    continue; // stop or shut-down: seen below
                }
                let i = ev.token().0 >> KIND_BITS;
                let kind = ev.token().0 & MAX_TRACKS;
                let read = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.on_ready(i, kind, read, ev.is_writable(), window, now);
            }
            self.wake_rested(now, window);
            if self.stop_at.is_none() && self.ctx.stopping.load(Ordering::Relaxed) {
                self.stop_at = Some(now + TEARDOWN_WAIT);
                for i in 0..self.slots.len() {
                    self.close(i, now);
                }
            }
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                for i in 0..self.slots.len() {
                    self.on_timer(i, now);
                }
            }
            if self.stop_at.is_some_and(|at| now >= at) {
                // Unanswered TEARDOWNs: the readers end as they stand.
                for i in 0..self.slots.len() {
                    self.finish(i, None);
                }
            }
            if self.ctx.media.exit.load(Ordering::Relaxed) {
                break;
            }
        }
        // Anything still here (or handed over in the meantime) gets its counters back.
        for i in 0..self.slots.len() {
            self.finish(i, None);
        }
        while let Ok(p) = self.incoming.try_recv() {
            let _ = p.done.send(p.rx.stats);
        }
    }

    /// Takes in the readers handed over since the last wake.
    fn accept(&mut self, now: Instant, window: bool) {
        while let Ok(p) = self.incoming.try_recv() {
            if p.rtp.len() > MAX_TRACKS {
                let mut stats = p.rx.stats;
                stats.ended = Some(format!("more than {MAX_TRACKS} tracks"));
                let _ = p.done.send(stats);
                continue;
            }
            let i = self.free.pop().unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
            let mut slot = Slot {
                session: p.session,
                rx: p.rx,
                tcp: TcpStream::from_std(p.tcp),
                rtp: p.rtp.into_iter().map(UdpSocket::from_std).collect(),
                _rtcp: p.rtcp,
                carry: p.carry,
                out: p.out,
                done: p.done,
                stopping: false,
                rest_until: None,
                pending: 0,
            };
            // Edge-triggered registration reports what is already queued, so nothing that
            // arrived during the hand-over waits for the next packet.
            let registered = register(&self.poll, &mut slot, i);
            self.slots[i] = Some(slot);
            if let Err(e) = registered {
                self.finish(i, Some(Gone::Failed(format!("register: {e}"))));
                continue;
            }
            if self.stop_at.is_some() {
                self.close(i, now);
            } else {
                self.settle(i, window);
            }
        }
    }

    /// A socket of reader `i` is ready.
    fn on_ready(
        &mut self,
        i: usize,
        kind: usize,
        read: bool,
        write: bool,
        window: bool,
        now: Instant,
    ) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return; // ended earlier in this batch of events
        };
        if write && kind == 0 {
            if let Err(g) = flush(slot) {
                self.finish(i, Some(g));
                return;
            }
        }
        if !read {
            return;
        }
        if slot.rest_until.is_some() {
            slot.pending |= 1 << kind;
            return;
        }
        self.read(i, kind, window, now);
    }

    /// Reads socket `kind` of reader `i` dry, then lets the reader rest if it should.
    fn read(&mut self, i: usize, kind: usize, window: bool, now: Instant) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let r = if kind == 0 {
            read_tcp(slot, &mut self.bufs, window)
        } else {
            read_udp(slot, kind - 1, &mut self.bufs, window).map(|()| false)
        };
        match r {
            Err(g) => {
                self.finish(i, Some(g));
                return;
            }
            // RTSP answers reached the session. Only then: the session's state is not
            // touched on a read that brought media alone.
            Ok(true) => self.settle(i, window),
            Ok(false) => {}
        }
        let rest = self.ctx.rest;
        if let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) {
            if !rest.is_zero() && !slot.stopping && slot.rx.stats.first_keyframe_ms.is_some() {
                let due = now + rest;
                slot.rest_until = Some(due);
                self.rests.push_back((due, i));
            }
        }
    }

    /// Reads, for each reader whose rest is over, what became ready during it.
    fn wake_rested(&mut self, now: Instant, window: bool) {
        while let Some(&(due, i)) = self.rests.front() {
            if due > now {
                break;
            }
            self.rests.pop_front();
            let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if slot.rest_until != Some(due) {
                continue; // the slot's reader changed, or its rest was cancelled
            }
            slot.rest_until = None;
            let pending = std::mem::take(&mut slot.pending);
            for kind in 0..=MAX_TRACKS {
                if pending & (1 << kind) != 0 {
                    self.read(i, kind, window, now);
                }
            }
        }
    }

    /// Fires reader `i`'s session timers if due.
    fn on_timer(&mut self, i: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if slot.session.poll_timeout().is_some_and(|t| t <= now) {
            slot.session.handle_timeout(now);
            self.settle(i, false);
        }
    }

    /// Sends reader `i`'s TEARDOWN (its answer, or its 2 s timeout, ends the reader).
    fn close(&mut self, i: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        slot.stopping = true;
        slot.rest_until = None;
        slot.pending = 0;
        slot.session.set_request_timeout(Duration::from_secs(2));
        slot.session.handle_timeout(now); // refreshes the session's clock
        slot.session.close();
        self.settle(i, false);
    }

    /// Writes what reader `i`'s session wants sent and handles its events.
    fn settle(&mut self, i: usize, window: bool) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        while let Some(b) = slot.session.poll_transmit() {
            slot.out.extend_from_slice(&b);
        }
        let mut gone = flush(slot).err();
        while gone.is_none() {
            let Some(ev) = slot.session.poll_event() else {
                break;
            };
            match ev {
                ClientEvent::Rtp { track, data } => {
                    // Not expected (frames are parsed here), but count it if it comes.
                    slot.rx.on_rtp(track, &data, data.len(), window);
                }
                ClientEvent::Failed(e) => gone = Some(Gone::Failed(e.to_string())),
                ClientEvent::Closed => {
                    gone = Some(if slot.stopping {
                        Gone::Closed
                    } else {
                        Gone::Failed("session closed".into())
                    })
                }
                _ => {}
            }
        }
        if let Some(g) = gone {
            self.finish(i, Some(g));
        }
    }

    /// Ends reader `i`: its counters go back to its task. A failure before stop is
    /// reported as the reader having ended early.
    fn finish(&mut self, i: usize, gone: Option<Gone>) {
        let Some(mut slot) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut slot.tcp);
        for s in &mut slot.rtp {
            let _ = registry.deregister(s);
        }
        let mut stats = slot.rx.stats;
        if let Some(Gone::Failed(reason)) = gone {
            if !slot.stopping {
                stats.ended = Some(reason);
            }
        }
        let _ = slot.done.send(stats);
        self.free.push(i);
    }
}

/// Registers reader `i`'s sockets: the RTSP connection for reading and writing, the RTP
/// sockets for reading.
fn register(poll: &Poll, slot: &mut Slot, i: usize) -> io::Result<()> {
    let base = i << KIND_BITS;
    poll.registry().register(
        &mut slot.tcp,
        Token(base),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    for (k, s) in slot.rtp.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(base | (k + 1)), Interest::READABLE)?;
    }
    Ok(())
}

/// Writes the reader's queued RTSP bytes as far as the socket takes them.
fn flush(slot: &mut Slot) -> Result<(), Gone> {
    while !slot.out.is_empty() {
        match (&slot.tcp).write(&slot.out) {
            Ok(0) => return Err(Gone::Failed("write: connection closed".into())),
            Ok(n) => {
                slot.out.drain(..n);
            }
            // The socket's next writable edge calls again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Gone::Failed(format!("write: {e}"))),
        }
    }
    Ok(())
}

/// Reads the RTSP connection dry: `$` frames are counted, RTSP messages go to the session.
/// Ok(true) if a message did (its events and requests are then due).
fn read_tcp(slot: &mut Slot, bufs: &mut ReadBufs, window: bool) -> Result<bool, Gone> {
    let mut messages = false;
    loop {
        let mut tcp = &slot.tcp;
        let r = read_tcp_once(
            &mut bufs.tcp,
            &mut slot.carry,
            &mut slot.rx,
            &mut slot.session,
            window,
            |b| tcp.read(b).map(|n| (n, None)),
        );
        match r {
            Ok(TcpRead::Eof) => {
                return Err(if slot.stopping {
                    Gone::Closed
                } else {
                    Gone::Failed("connection closed by server".into())
                })
            }
            Ok(TcpRead::Read { more, messages: m }) => {
                messages |= m;
                if !more {
                    // Drained: new bytes bring a new edge.
                    return Ok(messages);
                }
            }
            Err(TcpReadError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(messages)
            }
            Err(TcpReadError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(TcpReadError::Io(e)) => return Err(Gone::Failed(format!("read: {e}"))),
            Err(TcpReadError::Framing(e)) => return Err(Gone::Failed(e)),
        }
    }
}

/// Reads track `track`'s RTP socket dry, [`BATCH`] datagrams per call.
fn read_udp(slot: &mut Slot, track: usize, bufs: &mut ReadBufs, window: bool) -> Result<(), Gone> {
    let Some(sock) = slot.rtp.get(track) else {
        return Ok(());
    };
    let fd = sock.as_raw_fd();
    let take = slot.rx.udp_take();
    loop {
        match recv_batch(fd, &mut bufs.udp, take, &mut bufs.lens, None) {
            Ok(n) => {
                slot.rx
                    .on_datagrams(track, &bufs.udp, &bufs.lens[..n], take, None, window);
                if n < BATCH {
                    // Drained: new datagrams bring a new edge.
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Gone::Failed(format!("udp recv: {e}"))),
        }
    }
}
