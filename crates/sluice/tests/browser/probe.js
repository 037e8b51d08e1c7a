// Injected into every page the browser tests open (playwright's addInitScript, before the
// page's own scripts). It reads the counter publisher's frame number from every presented
// frame of the page's <video> (requestVideoFrameCallback → canvas → the bit cells of the
// bottom strip), measures the audio energy (WebAudio analyser), and keeps the page's
// RTCPeerConnections so the driver can ask which server port each one uses.
//
// The strip: 20 cells of width/20 across the bottom 40/480 of the frame; cell i (from the
// left) is white when bit i of the frame number is set for i < 16, and cells 16..19 hold
// bits 0..3 of the inverted number (a check against misreads).
(() => {
  const P = (window.__probe = {
    frames: [], // [n, display wall time in ms since the epoch]
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
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.drawImage(video, 0, 0, w, h);
    const y = Math.min(h - 1, Math.round((h * 460) / 480));
    const row = ctx.getImageData(0, y, w, 1).data;
    const cell = w / 20;
    let bits = 0;
    for (let i = 0; i < 20; i++) {
      const x = Math.min(w - 1, Math.round(cell * (i + 0.5)));
      const lum = (row[4 * x] + row[4 * x + 1] + row[4 * x + 2]) / 3;
      if (lum > 128) bits |= 1 << i;
    }
    const n = bits & 0xffff;
    const check = (bits >> 16) & 0xf;
    if (check !== (~n & 0xf)) {
      P.misreads++;
      return null;
    }
    return n;
  }

  function watch(video) {
    const cb = (_now, meta) => {
      P.width = video.videoWidth;
      P.height = video.videoHeight;
      const n = decode(video);
      const wall = performance.timeOrigin + meta.expectedDisplayTime;
      if (n !== null) {
        P.frames.push([n, wall]);
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
