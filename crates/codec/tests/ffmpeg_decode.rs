//! End-to-end check: ffmpeg decodes an SDP and RTP packets produced from a real H.264 sample.
//! Skipped (passes trivially) when `ffmpeg` is not installed.

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::{Codec, CodecParams, Packetizer};

const AVCC: &[u8] = include_bytes!("data/h264.avcc");
const IDR: &[u8] = include_bytes!("data/h264_sample0.bin");
const P: &[u8] = include_bytes!("data/h264_sample1.bin");

#[test]
fn ffmpeg_decodes_our_h264_stream() {
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        eprintln!("ffmpeg not installed; skipping");
        return;
    }
    let params = CodecParams::new(Codec::H264, Bytes::from_static(AVCC));
    let mut p = Packetizer::new(&params, 96, 0x1234, 1000, 1200).unwrap();
    // A free even port: bind, note it, release.
    let port = {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port() & !1
    };
    let sdp = format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=sluice\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{}",
        p.sdp_media()
            .replacen("m=video 0 ", &format!("m=video {port} "), 1)
    );
    let dir = std::env::temp_dir().join(format!("sluice-codec-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sdp_path = dir.join("stream.sdp");
    std::fs::write(&sdp_path, &sdp).unwrap();
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "info"])
        .args(["-protocol_whitelist", "file,udp,rtp", "-i"])
        .arg(&sdp_path)
        .args(["-frames:v", "2", "-f", "framemd5", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ts: u32 = 0;
    let mut exited = None;
    while Instant::now() < deadline {
        for (data, key) in [(IDR, true), (P, false)] {
            let mut out = Vec::new();
            p.packetize(data, ts, key, &mut out).unwrap();
            for pkt in &out {
                let _ = sock.send_to(pkt, ("127.0.0.1", port));
            }
            ts = ts.wrapping_add(3600);
            std::thread::sleep(Duration::from_millis(40));
        }
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let frames = stdout.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        status.success() && frames == 2,
        "ffmpeg failed ({status}); {frames} frames\nSDP:\n{sdp}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("640x360"), "{stderr}");
    for bad in ["non-existing PPS", "error while decoding", "no frame!"] {
        assert!(!stderr.contains(bad), "ffmpeg reported {bad:?}:\n{stderr}");
    }
}
