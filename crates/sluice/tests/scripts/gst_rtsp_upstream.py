#!/usr/bin/python3
"""gst-rtsp-server upstream for Sluice's pull-source tests.

One shared live-paced stream (loops an Annex-B .h264 file and optionally an
ADTS .aac file) fanned out to all RTSP readers at rtsp://127.0.0.1:PORT/MOUNT.

usage: /usr/bin/python3 gst_rtsp_upstream.py --port PORT --h264 FILE
           [--aac FILE] [--fps 25] [--mount /live]
           [--user U --password P]   # require RTSP Digest authentication
           [--tcp-only]              # refuse UDP transports (SETUP UDP -> 461)

Prints "ready ..." once listening, then one line per client event so tests
can count upstream connections:
    client connected <n>     (n = clients currently connected)
    client closed <n>
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--port", required=True)
ap.add_argument("--h264", required=True)
ap.add_argument("--aac")
ap.add_argument("--fps", type=int, default=25)
ap.add_argument("--mount", default="/live")
ap.add_argument("--user")
ap.add_argument("--password")
ap.add_argument("--tcp-only", action="store_true")
args = ap.parse_args()

Gst.init(None)
video = (
    f"multifilesrc location={args.h264} loop=true "
    f"caps=video/x-h264,stream-format=byte-stream,framerate={args.fps}/1 "
    "! h264parse ! video/x-h264,stream-format=avc,alignment=au "
    "! identity sync=true "
    "! rtph264pay name=pay0 pt=96 config-interval=1 mtu=1400"
)
audio = (
    f" multifilesrc location={args.aac} loop=true "
    "caps=audio/mpeg,mpegversion=4,stream-format=adts "
    "! aacparse ! identity sync=true ! rtpmp4gpay name=pay1 pt=97"
) if args.aac else ""
launch = f"( {video}{audio} )"

server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(args.port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(launch)
factory.set_shared(True)
factory.set_eos_shutdown(False)
if args.tcp_only:
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

if args.user is not None:
    auth = GstRtspServer.RTSPAuth()
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
    auth.add_digest(args.user, args.password or "", token)
    server.set_auth(auth)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_role_from_structure(
        Gst.Structure.from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )[0]
    )
    factory.set_permissions(perms)

server.get_mount_points().add_factory(args.mount, factory)

clients = {"n": 0}


def on_closed(_client):
    clients["n"] -= 1
    print(f"client closed {clients['n']}", flush=True)


def on_connected(_server, client):
    clients["n"] += 1
    print(f"client connected {clients['n']}", flush=True)
    client.connect("closed", on_closed)


server.connect("client-connected", on_connected)
if server.attach(None) == 0:
    print(f"cannot listen on 127.0.0.1:{args.port}", flush=True)
    sys.exit(1)
print(
    f"ready rtsp://127.0.0.1:{args.port}{args.mount} gst {Gst.version_string()} "
    f"auth={'digest' if args.user is not None else 'none'} tcp_only={args.tcp_only}",
    flush=True,
)
loop = GLib.MainLoop()
for sig in (signal.SIGINT, signal.SIGTERM):
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
loop.run()
