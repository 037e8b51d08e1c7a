#!/usr/bin/python3
"""ONVIF replay with GStreamer: rtspsrc onvif-mode=true ! rtponvifparse ! depay ! decode.

Usage:
  gst_onvif.py URL seek   NTP_NS OUT.yuv [TIMEOUT]   seek (clock) to NTP_NS, write the first
                                                   decoded I420 frame after it to OUT.yuv
  gst_onvif.py URL rate   RATE START_NS STOP_NS [TIMEOUT] [intra]
                                                   play [START, STOP] at RATE (negative:
                                                   backwards; `intra`: key units only)

In onvif-mode, rtspsrc positions are nanoseconds since 1900 (NTP) and rtponvifparse sets each
buffer's PTS from the 0xABAC extension, its DELTA_UNIT flag from the C bit, DISCONT from the
D bit, and pushes end of stream after the packet with the T bit.

Prints machine-readable lines:
  BUF t=<wall s> pts=<ntp s> key=<0|1> discont=<0|1>   each buffer out of rtponvifparse
  FRAME pts=<ntp s> w=<width> h=<height>               the frame written (seek)
  EOS t=<wall s>                                      end of stream reached
  ERROR <message>
"""
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import Gst, GstApp, GstRtsp  # noqa: E402,F401

NS = 1e9


# The streaming thread (the probe) and the main thread both print: one lock keeps each
# line whole (print writes the text and the newline separately).
_SAY = threading.Lock()


def say(*args, **kwargs):
    with _SAY:
        print(*args, **kwargs)


def main():
    url, mode = sys.argv[1], sys.argv[2]
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"rtspsrc name=src location={url} onvif-mode=true protocols=tcp latency=300 "
        "! rtponvifparse name=parse ! rtph264depay ! h264parse ! avdec_h264 max-threads=1 "
        "! videoconvert ! video/x-raw,format=I420 "
        "! appsink name=sink sync=false emit-signals=false max-buffers=1000 drop=false"
    )
    src = pipeline.get_by_name("src")
    sink = pipeline.get_by_name("sink")
    parse = pipeline.get_by_name("parse")

    def on_select_stream(_src, _num, caps):
        return caps.get_structure(0).get_string("media") == "video"

    src.connect("select-stream", on_select_stream)

    def on_before_send(_src, msg):
        # The replay headers of each PLAY, for the test's log.
        if msg.get_type() == GstRtsp.RTSPMsgType.REQUEST:
            _, method, _, _ = msg.parse_request()
            if method == GstRtsp.RTSPMethod.PLAY:
                hdrs = []
                for name in ("Range", "Scale", "Speed", "Frames", "Rate-Control", "Require"):
                    field = GstRtsp.rtsp_find_header_field(name)
                    res, val = msg.get_header(field, 0)
                    if res == GstRtsp.RTSPResult.OK:
                        hdrs.append(f"{name}: {val}")
                say("PLAY " + "; ".join(hdrs), flush=True)
        return True

    src.connect("before-send", on_before_send)
    t0 = time.monotonic()
    seeking = {"done": False}

    def probe(_pad, info):
        buf = info.get_buffer()
        if seeking["done"]:
            key = 0 if buf.has_flags(Gst.BufferFlags.DELTA_UNIT) else 1
            disc = 1 if buf.has_flags(Gst.BufferFlags.DISCONT) else 0
            say(
                f"BUF t={time.monotonic() - t0:.3f} pts={buf.pts / NS:.3f} key={key} discont={disc}",
                flush=True,
            )
        return Gst.PadProbeReturn.OK

    parse.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, probe)
    bus = pipeline.get_bus()
    eos = {"seen": False}

    def check_bus():
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
            if msg is None:
                return
            if msg.type == Gst.MessageType.ERROR:
                err, dbg = msg.parse_error()
                say(f"ERROR {err.message} ({dbg})", flush=True)
                pipeline.set_state(Gst.State.NULL)
                sys.exit(1)
            if msg.type == Gst.MessageType.EOS and not eos["seen"]:
                eos["seen"] = True
                say(f"EOS t={time.monotonic() - t0:.3f} from={msg.src.get_name()}", flush=True)

    if mode == "seek":
        target_ns, out = int(sys.argv[3]), sys.argv[4]
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
    else:
        rate, start_ns, stop_ns = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 20.0
        intra = len(sys.argv) > 7 and sys.argv[7] == "intra"
    deadline = time.monotonic() + timeout
    pipeline.set_state(Gst.State.PLAYING)

    def pull(what):
        while time.monotonic() < deadline:
            check_bus()
            if eos["seen"]:
                return None
            sample = sink.try_pull_sample(100 * Gst.MSECOND)
            if sample is not None:
                return sample
        say(f"ERROR timeout waiting for {what}", flush=True)
        pipeline.set_state(Gst.State.NULL)
        sys.exit(1)

    if pull("first sample") is None:
        say("ERROR end of stream before the seek", flush=True)
        sys.exit(1)
    flags = Gst.SeekFlags.FLUSH
    if mode == "seek":
        ok = pipeline.seek(
            1.0, Gst.Format.TIME, flags | Gst.SeekFlags.ACCURATE,
            Gst.SeekType.SET, target_ns, Gst.SeekType.NONE, -1,
        )
    else:
        if intra:
            flags |= Gst.SeekFlags.TRICKMODE | Gst.SeekFlags.TRICKMODE_KEY_UNITS
        ok = pipeline.seek(
            rate, Gst.Format.TIME, flags,
            Gst.SeekType.SET, start_ns, Gst.SeekType.SET, stop_ns,
        )
    t0 = time.monotonic()
    seeking["done"] = True
    say(f"SEEK ok={ok}", flush=True)
    if not ok:
        pipeline.set_state(Gst.State.NULL)
        return 1
    if mode == "seek":
        while True:
            sample = pull("a frame after the seek")
            if sample is None:
                say("ERROR end of stream before a frame", flush=True)
                return 1
            buf = sample.get_buffer()
            # Frames still in flight from before the seek are older than its target.
            if buf.pts != Gst.CLOCK_TIME_NONE and buf.pts + NS // 2 >= target_ns:
                break
        s = sample.get_caps().get_structure(0)
        ok, data = buf.map(Gst.MapFlags.READ)
        with open(out, "wb") as f:
            f.write(bytes(data.data))
        buf.unmap(data)
        say(
            f"FRAME pts={buf.pts / NS:.3f} w={s.get_int('width')[1]} h={s.get_int('height')[1]}",
            flush=True,
        )
    else:
        while not eos["seen"] and time.monotonic() < deadline:
            pull("the end")
        if not eos["seen"]:
            say("ERROR no end of stream", flush=True)
    pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
