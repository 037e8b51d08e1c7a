#!/usr/bin/python3
"""Reads an rtsp:// or rtsps:// URL with GStreamer rtspsrc, validating the server
certificate against a CA file (rtspsrc tls-database = Gio.TlsFileDatabase), and prints
`frames=N` (decoded H.264 frames) and `error=...` lines.

usage: gst_rtsps_read.py URL PROTOCOLS SECONDS [CA_FILE] [USER PASS]
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib, Gst  # noqa: E402


def main():
    url, protocols, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ca = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    user = sys.argv[5] if len(sys.argv) > 6 else None
    pw = sys.argv[6] if len(sys.argv) > 6 else None
    Gst.init(None)
    pipe = Gst.parse_launch(
        f"rtspsrc name=src location={url} protocols={protocols} latency=200 tcp-timeout=10000000 "
        "! rtph264depay ! h264parse ! avdec_h264 ! fakesink name=sink signal-handoffs=true sync=false"
    )
    src = pipe.get_by_name("src")
    if ca:
        src.set_property("tls-database", Gio.TlsFileDatabase.new(ca))
        src.set_property("tls-validation-flags", Gio.TlsCertificateFlags.VALIDATE_ALL)
    if user is not None:
        src.set_property("user-id", user)
        src.set_property("user-pw", pw)
    frames = [0]

    def on_handoff(_sink, _buf, _pad):
        frames[0] += 1

    pipe.get_by_name("sink").connect("handoff", on_handoff)
    loop = GLib.MainLoop()

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            print(f"error={err.message} ({dbg})", flush=True)
            loop.quit()
        elif msg.type == Gst.MessageType.EOS:
            print("eos", flush=True)
            loop.quit()

    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    pipe.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int(secs * 1000), loop.quit)
    loop.run()
    pipe.set_state(Gst.State.NULL)
    print(f"frames={frames[0]}", flush=True)


main()
