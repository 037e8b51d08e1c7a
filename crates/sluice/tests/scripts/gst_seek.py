#!/usr/bin/python3
"""Plays an RTSP URL with rtspsrc ! decodebin ! appsink (video), seeks, prints the next frame's time.

Usage: gst_seek.py URL SEEK_SECONDS [TIMEOUT_SECONDS]

Prints machine-readable lines:
  PREROLL pts=<s>                      first video sample before the seek
  SEEK ok=<bool>
  SAMPLE pts=<s> stream_time=<s> segment_start=<s> segment_time=<s>   first video sample after the seek
  ERROR <message>
Exit status 0 when a post-seek sample arrived, 1 otherwise.
"""
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp  # noqa: E402,F401

NS = 1e9


def secs(t):
    return t / NS if t is not None and t != Gst.CLOCK_TIME_NONE and t >= 0 else float("nan")


def main():
    url = sys.argv[1]
    target = float(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"rtspsrc name=src location={url} protocols=tcp latency=200 "
        "! decodebin name=dec ! videoconvert ! appsink name=sink sync=false "
        "emit-signals=false max-buffers=4 drop=false"
    )
    src = pipeline.get_by_name("src")
    sink = pipeline.get_by_name("sink")

    # rtspsrc exposes one pad per track: only video goes to decodebin, the rest to fakesink.
    def on_select_stream(_src, _num, caps):
        media = caps.get_structure(0).get_string("media")
        return media == "video"

    src.connect("select-stream", on_select_stream)

    bus = pipeline.get_bus()

    def check_bus():
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
            if msg is None:
                return
            if msg.type == Gst.MessageType.ERROR:
                err, dbg = msg.parse_error()
                print(f"ERROR {err.message} ({dbg})", flush=True)
                pipeline.set_state(Gst.State.NULL)
                sys.exit(1)
            if msg.type == Gst.MessageType.EOS:
                print("EOS", flush=True)

    deadline = time.monotonic() + timeout
    pipeline.set_state(Gst.State.PLAYING)

    def pull(what):
        while time.monotonic() < deadline:
            check_bus()
            sample = sink.try_pull_sample(200 * Gst.MSECOND)
            if sample is not None:
                return sample
        print(f"ERROR timeout waiting for {what}", flush=True)
        pipeline.set_state(Gst.State.NULL)
        sys.exit(1)

    # Play a little first, as a viewer would, then seek.
    first = pull("first sample")
    print(f"PREROLL pts={secs(first.get_buffer().pts):.3f}", flush=True)
    for _ in range(10):
        pull("samples before seek")
    ok = pipeline.seek_simple(
        Gst.Format.TIME,
        Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT,
        int(target * NS),
    )
    print(f"SEEK ok={ok}", flush=True)
    if not ok:
        pipeline.set_state(Gst.State.NULL)
        sys.exit(1)
    sample = pull("sample after seek")
    buf = sample.get_buffer()
    seg = sample.get_segment()
    stream_time = seg.to_stream_time(Gst.Format.TIME, buf.pts)
    print(
        f"SAMPLE pts={secs(buf.pts):.3f} stream_time={secs(stream_time):.3f} "
        f"segment_start={secs(seg.start):.3f} segment_time={secs(seg.time):.3f}",
        flush=True,
    )
    pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
