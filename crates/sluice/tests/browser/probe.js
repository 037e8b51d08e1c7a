// Injected into every page the browser tests open (playwright's addInitScript, before the
// page's own scripts). It reads the counter publisher's frame number from every presented
// frame of the page's <video> (requestVideoFrameCallback → canvas → the bit cells of the
// bottom strip), measures the audio energy (WebAudio analyser), and keeps the page's
// RTCPeerConnections so the driver can ask which server port each one uses.
//
// The strip: two rows of 20 cells of width/20 across the bottom 80/480 of the frame; in
// each row cell i (from the left) is white when bit i of the value is set for i < 16, and
// cells 16..19 hold bits 0..3 of the inverted value (a check against misreads). The upper
// row holds the frame number, the lower one the wall clock (ms since the epoch, mod 2^16)
// when the publisher's source produced the frame.
(() => {
  const P = (window.__probe = {
    // [n, display wall time in ms since the epoch, capture ms mod 65536, the video's
    // presentedFrames counter]
    frames: [],
    firstFrameMs: null, // ms from navigation start to the first decoded frame
    misreads: 0,
    width: 0,
    height: 0,
    audioMax: 0,
    audioVia: null,
    pcs: [],
  });
  if (window.__noWebRTC) {
    delete window.RTCPeerConnection;
    delete window.webkitRTCPeerConnection;
  } else if (window.RTCPeerConnection) {
    const Orig = window.RTCPeerConnection;
    const Wrapped = function (...args) {
      const pc = new Orig(...args);
      P.pcs.push(pc);
      return pc;
    };
    Wrapped.prototype = Orig.prototype;
    Object.setPrototypeOf(Wrapped, Orig);
    window.RTCPeerConnection = Wrapped;
  }

  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });

  function decode(video) {
    const w = video.videoWidth;
    const h = video.videoHeight;
    if (!w || !h) return null;
    // Only the bottom strip (rows 400..480 of 480) is drawn and read: cheap per frame.
    const top = Math.floor((h * 400) / 480);
    const sh = h - top;
    if (canvas.width !== w || canvas.height !== sh) {
      canvas.width = w;
      canvas.height = sh;
    }
    ctx.drawImage(video, 0, top, w, sh, 0, 0, w, sh);
    const readRow = (ref) => {
      const y = Math.min(sh - 1, Math.max(0, Math.round((h * ref) / 480) - top));
      const row = ctx.getImageData(0, y, w, 1).data;
      const cell = w / 20;
      let bits = 0;
      for (let i = 0; i < 20; i++) {
        const x = Math.min(w - 1, Math.round(cell * (i + 0.5)));
        const lum = (row[4 * x] + row[4 * x + 1] + row[4 * x + 2]) / 3;
        if (lum > 128) bits |= 1 << i;
      }
      const v = bits & 0xffff;
      return ((bits >> 16) & 0xf) === (~v & 0xf) ? v : null;
    };
    const n = readRow(420);
    const captured = readRow(460);
    if (n === null || captured === null) {
      P.misreads++;
      return null;
    }
    return [n, captured];
  }

  function watch(video) {
    const cb = (_now, meta) => {
      P.width = video.videoWidth;
      P.height = video.videoHeight;
      const got = decode(video);
      const wall = performance.timeOrigin + meta.expectedDisplayTime;
      if (got !== null) {
        P.frames.push([got[0], wall, got[1], meta.presentedFrames]);
        if (P.firstFrameMs === null) P.firstFrameMs = wall - performance.timeOrigin;
      }
      video.requestVideoFrameCallback(cb);
    };
    video.requestVideoFrameCallback(cb);
  }

  let audio = null;
  function listen(video) {
    if (audio) return;
    let source = null;
    try {
      const ac = new AudioContext();
      const stream = video.srcObject;
      if (stream && stream.getAudioTracks && stream.getAudioTracks().length) {
        source = ac.createMediaStreamSource(stream);
        P.audioVia = 'webrtc';
      } else if (!stream && video.currentTime > 0) {
        source = ac.createMediaElementSource(video);
        P.audioVia = 'media-element';
      } else {
        ac.close();
        return;
      }
      const an = ac.createAnalyser();
      an.fftSize = 2048;
      source.connect(an);
      if (P.audioVia === 'media-element') an.connect(ac.destination);
      ac.resume();
      const buf = new Float32Array(an.fftSize);
      audio = { ac, an, buf };
      setInterval(() => {
        an.getFloatTimeDomainData(buf);
        let sum = 0;
        for (const s of buf) sum += s * s;
        const rms = Math.sqrt(sum / buf.length);
        if (rms > P.audioMax) P.audioMax = rms;
      }, 100);
    } catch (e) {
      P.audioError = String(e);
    }
  }

  const timer = setInterval(() => {
    const v = document.querySelector('video');
    if (!v) return;
    if (!v.__probed) {
      v.__probed = true;
      watch(v);
    }
    if (P.frames.length > 0) listen(v);
    if (audio) clearInterval(timer);
  }, 10);
  // Keep looking for audio after the first frames (HLS attaches later).
  setInterval(() => {
    const v = document.querySelector('video');
    if (v && P.frames.length > 0) listen(v);
  }, 250);

  // The video receivers' inbound-rtp figures (loss, NACK, PLI, decoded, dropped).
  window.__probeInbound = async () => {
    const out = [];
    for (const pc of P.pcs) {
      if (pc.connectionState === 'closed') continue;
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp') {
          out.push({
            kind: s.kind, packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
            nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
            framesDecoded: s.framesDecoded, framesDropped: s.framesDropped,
            framesReceived: s.framesReceived, keyFramesDecoded: s.keyFramesDecoded,
            freezeCount: s.freezeCount, jitterBufferDelay: s.jitterBufferDelay,
            jitterBufferEmittedCount: s.jitterBufferEmittedCount,
            totalDecodeTime: s.totalDecodeTime,
          });
        }
      });
    }
    return out;
  };

  // The remote ports of the selected candidate pairs of the page's peer connections.
  window.__probePorts = async () => {
    const ports = [];
    for (const pc of P.pcs) {
      if (pc.connectionState === 'closed') continue;
      const stats = await pc.getStats();
      let pairId = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      stats.forEach((s) => {
        if (s.type === 'candidate-pair' && s.id === pairId) {
          const remote = stats.get(s.remoteCandidateId);
          if (remote) ports.push(remote.port);
        }
      });
    }
    return ports;
  };
})();
