#!/usr/bin/env python3
"""Browser-free LL-HLS checks against a live path, run by tests/hls.rs.

usage: hls_check.py BASE_URL MODE [ARG]
  BASE_URL  http://127.0.0.1:PORT/<path>/ (with the trailing slash)
  MODE      full     -- first playlist time, every playlist parsed with the m3u8 package,
                        blocking reloads timed against a parallel poller, 400 ahead of range,
                        segment bytes = concatenated parts, delta update (_HLS_skip=YES)
            stall    -- the source stopped sending: a blocking reload must get 503 with
                        Retry-After after about 3 target durations
            segment  -- write init.mp4 + the newest complete segment to ARG
Prints one JSON object with the figures; exits non-zero with a message on a failed check.
"""

import json
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

import m3u8

BASE = sys.argv[1]
MODE = sys.argv[2]


def get(name, timeout=20):
    """GET BASE+name: (status, headers, body, monotonic time the answer arrived)."""
    try:
        with urllib.request.urlopen(BASE + name, timeout=timeout) as r:
            body = r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}, body, time.monotonic()
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}, body, time.monotonic()


def fail(msg):
    print(json.dumps({"error": msg}))
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


PARSED = {"count": 0}


def parse(body):
    """Parses a playlist with m3u8 and checks what every LL-HLS playlist must carry."""
    text = body.decode()
    p = m3u8.loads(text)
    PARSED["count"] += 1
    check(p.version is not None and int(p.version) >= 6, f"EXT-X-VERSION {p.version}")
    check(p.target_duration and p.target_duration >= 1, "no EXT-X-TARGETDURATION")
    sc = p.server_control
    check(sc is not None and sc.can_block_reload == "YES", "no CAN-BLOCK-RELOAD=YES")
    check(p.part_inf is not None and p.part_inf.part_target > 0, "no EXT-X-PART-INF")
    pt = p.part_inf.part_target
    check(abs(sc.part_hold_back - 3 * pt) < 0.01, f"PART-HOLD-BACK {sc.part_hold_back} != 3 x {pt}")
    check(sc.can_skip_until >= 6 * p.target_duration, "CAN-SKIP-UNTIL below 6 target durations")
    check(p.preload_hint is not None and p.preload_hint.hint_type == "PART", "no PRELOAD-HINT")
    check(p.segment_map and p.segment_map[0].uri == "init.mp4", "no EXT-X-MAP")
    complete = [s for s in p.segments if s.uri]
    for s in complete:
        check(round(s.duration) <= p.target_duration, f"EXTINF {s.duration} > target")
    for s in p.segments:
        for part in s.parts:
            # Whole frames of about PART-TARGET; a timestamp jump in the source (a looping
            # file) may stretch one, never beyond the packager's 1.5 x bound.
            PARSED["longest_part"] = max(PARSED.get("longest_part", 0), part.duration)
            check(part.duration <= 1.5 * pt + 0.001, f"part {part.uri} {part.duration} > 1.5 x PART-TARGET {pt}")
        if s.parts and s.uri:
            check(s.parts[0].independent == "YES", f"segment {s.uri} starts with a dependent part")
    pdt = text.count("#EXT-X-PROGRAM-DATE-TIME:")
    in_progress = len([s for s in p.segments if not s.uri and s.parts])
    check(pdt == len(complete) + in_progress, f"{pdt} PROGRAM-DATE-TIMEs for {len(complete)}+{in_progress} segments")
    return p


def position(p):
    """(msn, part index) of the part the preload hint names, and its URI."""
    complete = [s for s in p.segments if s.uri]
    msn = p.media_sequence + len(complete) + (p.skip.skipped_segments if p.skip else 0)
    trailing = [s for s in p.segments if not s.uri]
    k = sum(len(s.parts) for s in trailing)
    return msn, k, p.preload_hint.uri


def full():
    out = {}
    t = time.monotonic()
    status, _, body, done = get("index.m3u8")
    out["first_playlist_ms"] = round((done - t) * 1000, 1)
    check(status == 200, f"first playlist: {status} {body[:200]!r}")
    p = parse(body)

    # Blocking reloads, each timed against a poller that sees the part appear.
    delays = []
    polled = []
    for _ in range(10):
        _, _, body, _ = get("index.m3u8")
        msn, k, hint = position(parse(body))
        pattern = re.compile(rb'#EXT-X-PART:[^\n]*URI="' + re.escape(hint.encode()) + rb'"')
        seen = {}
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                _, _, b, at = get("index.m3u8")
                polled.append(b)
                if pattern.search(b):
                    seen["at"] = at
                    return

        th = threading.Thread(target=poll)
        th.start()
        status, _, body, answered = get(f"index.m3u8?_HLS_msn={msn}&_HLS_part={k}")
        th.join(timeout=5)
        stop.set()
        check(status == 200, f"blocking reload msn={msn} part={k}: {status}")
        check(pattern.search(body) is not None, f"blocking reload lacks {hint}")
        parse(body)
        if "at" in seen:
            delays.append((answered - seen["at"]) * 1000)
    check(len(delays) >= 8, f"poller saw only {len(delays)} parts")
    # The poller's playlists are parsed too, once the timing is done.
    for b in polled:
        parse(b)
    out["held_delay_ms_median"] = round(statistics.median(delays), 1)
    out["held_delay_ms_max"] = round(max(delays), 1)

    # Ahead of range: 400 at once.
    _, _, body, _ = get("index.m3u8")
    msn, k, _ = position(parse(body))
    t = time.monotonic()
    status, _, _, done = get(f"index.m3u8?_HLS_msn={msn + 5}")
    out["ahead_status"] = status
    out["ahead_ms"] = round((done - t) * 1000, 1)
    status, _, _, _ = get(f"index.m3u8?_HLS_msn={msn}&_HLS_part={k + 10}")
    out["ahead_part_status"] = status

    # A preload-hinted part is held until it exists.
    _, _, body, _ = get("index.m3u8")
    _, _, hint = position(parse(body))
    status, _, part, _ = get(hint)
    check(status == 200 and part[4:8] == b"moof", f"hinted part {hint}: {status}")

    # Segment bytes = its parts, for every complete segment that lists its parts.
    compared = 0
    for s in parse(get("index.m3u8")[2]).segments:
        if s.uri and s.parts:
            status, _, seg, _ = get(s.uri)
            check(status == 200, f"{s.uri}: {status}")
            parts = [get(pp.uri) for pp in s.parts]
            check(all(r[0] == 200 for r in parts), f"parts of {s.uri}: {[r[0] for r in parts]}")
            joined = b"".join(r[2] for r in parts)
            check(seg == joined, f"{s.uri} ({len(seg)} B) != its {len(s.parts)} parts ({len(joined)} B)")
            compared += 1
    check(compared >= 1, "no complete segment with parts to compare")
    out["segments_compared"] = compared
    status, headers, init, _ = get("init.mp4")
    check(status == 200 and init[4:8] == b"ftyp", "init.mp4")
    out["init_bytes"] = len(init)

    # Delta update once the playlist is longer than CAN-SKIP-UNTIL.
    deadline = time.monotonic() + 15
    skipped = 0
    while time.monotonic() < deadline:
        status, _, body, _ = get("index.m3u8?_HLS_skip=YES")
        check(status == 200, f"delta update: {status}")
        d = parse(body)
        if d.skip and d.skip.skipped_segments:
            skipped = d.skip.skipped_segments
            full_list = parse(get("index.m3u8")[2])
            out["segments"] = len([s for s in full_list.segments if s.uri])
            out["delta_segments"] = len([s for s in d.segments if s.uri])
            break
        time.sleep(0.5)
    check(skipped > 0, "no EXT-X-SKIP within 15 s")
    out["skipped_segments"] = skipped
    out["target_duration"] = p.target_duration
    out["part_target"] = p.part_inf.part_target
    out["playlists_parsed"] = PARSED["count"]
    out["longest_part"] = PARSED.get("longest_part")
    print(json.dumps(out))


def stall():
    status, _, body, _ = get("index.m3u8")
    check(status == 200, f"playlist: {status}")
    p = parse(body)
    msn, k, _ = position(p)
    t = time.monotonic()
    status, headers, body, done = get(f"index.m3u8?_HLS_msn={msn}&_HLS_part={k + 1}", timeout=30)
    print(json.dumps({
        "status": status,
        "retry_after": headers.get("retry-after"),
        "held_s": round(done - t, 2),
        "target_duration": p.target_duration,
        "content_type": headers.get("content-type"),
    }))


def segment(path):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, _, body, _ = get("index.m3u8")
        if status == 200:
            p = parse(body)
            complete = [s for s in p.segments if s.uri]
            if len(complete) >= 2:
                init = get("init.mp4")[2]
                seg = get(complete[-1].uri)[2]
                with open(path, "wb") as f:
                    f.write(init + seg)
                print(json.dumps({"segment": complete[-1].uri, "bytes": len(seg), "init_bytes": len(init)}))
                return
        time.sleep(0.3)
    fail("no two complete segments within 15 s")


def variant():
    """The multivariant playlist (main.m3u8) and the media playlist it names, both parsed."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, headers, body, _ = get("main.m3u8")
        if status == 200:
            v = m3u8.loads(body.decode())
            check(v.is_variant and len(v.playlists) == 1, f"not one variant: {body!r}")
            info = v.playlists[0].stream_info
            check(v.playlists[0].uri == "index.m3u8", f"variant URI {v.playlists[0].uri}")
            status, _, body, _ = get("index.m3u8")
            check(status == 200, f"index.m3u8: {status}")
            p = parse(body)
            print(json.dumps({
                "codecs": info.codecs,
                "resolution": list(info.resolution) if info.resolution else None,
                "bandwidth": info.bandwidth,
                "content_type": headers.get("content-type"),
                "parts": sum(len(s.parts) for s in p.segments) + len(p.segments),
                "independent_parts": body.decode().count("INDEPENDENT=YES"),
            }))
            return
        time.sleep(0.2)
    fail("no multivariant playlist within 15 s")


if MODE == "full":
    full()
elif MODE == "variant":
    variant()
elif MODE == "stall":
    stall()
elif MODE == "segment":
    segment(sys.argv[3])
else:
    fail(f"unknown mode {MODE}")
