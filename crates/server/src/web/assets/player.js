// Sluice player: plays one path in a <video>, WebRTC (WHEP) first, LL-HLS as the fallback.
//
// On the server's own page (`/<path>/`) it mounts itself on the element marked
// `data-sluice-page`, taking the path from the page's URL and the flags from its query
// (`?muted=1&autoplay=1&controls=1&proto=webrtc|hls`). Other pages embed it:
//
//   <div id="cam"></div>
//   <script src="https://sluice.example:8080/assets/player.js"></script>
//   <script>SluicePlayer.mount(document.getElementById('cam'), { path: 'cams/front', muted: true });</script>
//
// or with attributes only: <div data-sluice-path="cams/front" data-sluice-muted="1"></div>.
// (A page on another origin needs that origin in the server's `[http] cors_origins`; an
// <iframe src="https://sluice.example:8080/cams/front/?muted=1"> needs nothing.)
//
// Order of attempts: WHEP when RTCPeerConnection exists and proto is not `hls`; hls.js
// (loaded from the server only then) when WebRTC is missing, refused (e.g. 406 for a
// source with B-frames: the reason is shown), or shows no frame within FIRST_FRAME_MS;
// Safari's native HLS instead of hls.js. A WHEP answer naming AAC audio (which WebRTC
// cannot carry) shows a notice pointing at HLS (`?proto=hls`).
//
// The element's dataset says what happens, for people and for tests: data-state
// (connecting, playing, waiting, error), data-mode (webrtc, hls, native-hls),
// data-fallback (why WebRTC was left), data-notice.
(function () {
  'use strict';
  var FIRST_FRAME_MS = 4000;
  var RETRY_MS = 2000;
  var GATHER_MS = 500;
  // WebRTC jitter buffer target (ms): see startWebRtc.
  var JITTER_MS = 80;
  var script = document.currentScript;
  var serverBase = script && script.src ? new URL('/', script.src).href : new URL('/', location.href).href;
  var hlsLoading = null;

  function flag(v, dflt) {
    if (v === undefined || v === null) return dflt;
    if (v === '' || v === true) return true;
    if (v === false) return false;
    return !/^(0|false|no|off)$/i.test(String(v));
  }

  function encodePath(name) {
    return name.split('/').map(encodeURIComponent).join('/');
  }

  function loadHlsJs() {
    if (window.Hls) return Promise.resolve(window.Hls);
    if (!hlsLoading) {
      hlsLoading = new Promise(function (resolve, reject) {
        var s = document.createElement('script');
        s.src = new URL('assets/hls.min.js', serverBase).href;
        s.onload = function () { window.Hls ? resolve(window.Hls) : reject(new Error('hls.js did not load')); };
        s.onerror = function () { reject(new Error('cannot load hls.js')); };
        document.head.appendChild(s);
      });
    }
    return hlsLoading;
  }

  function isSafari() {
    var ua = navigator.userAgent;
    return /Safari\//.test(ua) && !/(Chrome|Chromium|CriOS|FxiOS|Edg|Android)\//.test(ua);
  }

  // Why a WHEP answer refused: the problem's detail, else the body's first line.
  function reasonOf(res) {
    return res.text().then(function (body) {
      var reason = res.headers.get('X-Sluice-Reason') || '';
      try {
        var p = JSON.parse(body);
        reason = reason || p.detail || p.title || '';
      } catch (e) {
        reason = reason || body.split('\n')[0];
      }
      return 'WHEP ' + res.status + (reason ? ': ' + reason : '');
    }, function () { return 'WHEP ' + res.status; });
  }

  function Player(el, opts) {
    this.el = el;
    this.opts = opts;
    this.pathUrl = new URL(encodePath(opts.path) + '/', opts.server);
    this.pc = null;
    this.hls = null;
    this.session = null;
    this.stopped = false;
    this.errors = [];
    var v = document.createElement('video');
    v.playsInline = true;
    v.muted = opts.muted;
    v.autoplay = opts.autoplay;
    v.controls = opts.controls;
    this.video = v;
    this.status = document.createElement('div');
    this.status.className = 'sluice-status';
    this.notice = document.createElement('div');
    this.notice.className = 'sluice-notice';
    this.notice.hidden = true;
    el.classList.add('sluice-player');
    el.textContent = '';
    el.appendChild(v);
    el.appendChild(this.status);
    el.appendChild(this.notice);
    el.sluice = this;
    var self = this;
    window.addEventListener('pagehide', function () { self.stop(); });
  }

  Player.prototype.setState = function (state, text) {
    this.el.dataset.state = state;
    this.status.textContent = text;
    // While playing, the status stays up only to say why WebRTC was left.
    this.status.hidden = state === 'playing' && !this.el.dataset.fallback && !this.opts.debug;
  };

  Player.prototype.showNotice = function (text) {
    this.el.dataset.notice = text;
    this.notice.textContent = text;
    this.notice.hidden = false;
  };

  Player.prototype.play = function () {
    var v = this.video;
    if (!this.opts.autoplay) return;
    var p = v.play();
    if (p && p.catch) {
      p.catch(function () {
        // Autoplay with sound refused: play muted; the controls can unmute.
        v.muted = true;
        v.controls = true;
        v.play().catch(function () {});
      });
    }
  };

  Player.prototype.start = function () {
    var proto = this.opts.proto;
    if (proto === 'hls') return this.startHls('proto=hls');
    if (typeof RTCPeerConnection !== 'function') {
      if (proto === 'webrtc') return this.fail('WebRTC is not available in this browser');
      this.el.dataset.fallback = 'WebRTC is not available in this browser';
      return this.startHls(this.el.dataset.fallback);
    }
    return this.startWebRtc();
  };

  Player.prototype.fallback = function (reason) {
    this.closePc();
    if (this.opts.proto === 'webrtc') return this.fail(reason);
    this.el.dataset.fallback = reason;
    return this.startHls(reason);
  };

  Player.prototype.fail = function (reason) {
    this.errors.push(reason);
    this.setState('error', reason);
  };

  Player.prototype.closePc = function () {
    if (this.session) {
      fetch(this.session, { method: 'DELETE', keepalive: true, credentials: 'same-origin' }).catch(function () {});
      this.session = null;
    }
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
  };

  Player.prototype.stop = function () {
    this.stopped = true;
    this.closePc();
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
  };

  // Resolves when the video presents its first frame, rejects after `ms`.
  Player.prototype.firstFrame = function (ms) {
    var v = this.video;
    return new Promise(function (resolve, reject) {
      var done = false;
      var timer = setTimeout(function () { if (!done) { done = true; reject(new Error('no frame within ' + ms / 1000 + ' s')); } }, ms);
      function ok() { if (!done) { done = true; clearTimeout(timer); resolve(); } }
      if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(ok);
      else v.addEventListener('loadeddata', ok, { once: true });
    });
  };

  Player.prototype.startWebRtc = function () {
    var self = this;
    var whep = new URL('whep', this.pathUrl).href;
    this.el.dataset.mode = 'webrtc';
    this.setState('connecting', 'WebRTC: connecting…');
    var pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    this.pc = pc;
    var stream = new MediaStream();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    // A small jitter buffer: frames that arrive in a burst (an encoder or a network that
    // stalled for a moment) are shown on their own timestamps instead of replacing each
    // other within one screen refresh, at the cost of JITTER_MS of latency.
    pc.getReceivers().forEach(function (r) {
      if ('jitterBufferTarget' in r) r.jitterBufferTarget = JITTER_MS;
      else if ('playoutDelayHint' in r) r.playoutDelayHint = JITTER_MS / 1000;
    });
    pc.ontrack = function (e) {
      stream.addTrack(e.track);
      if (self.video.srcObject !== stream) self.video.srcObject = stream;
    };
    pc.onconnectionstatechange = function () {
      if (pc !== self.pc) return;
      if (pc.connectionState === 'failed') self.fallback('WebRTC connection failed');
      if (pc.connectionState === 'disconnected') self.setState('waiting', 'WebRTC: disconnected');
    };
    return pc.createOffer()
      .then(function (offer) { return pc.setLocalDescription(offer); })
      .then(function () { return gathered(pc, GATHER_MS); })
      .then(function () {
        return fetch(whep, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp' },
          body: pc.localDescription.sdp,
          credentials: 'same-origin',
        });
      })
      .then(function (res) {
        if (pc !== self.pc) return null;
        if (res.status === 404) {
          // Not live (yet): wait for it rather than falling back to HLS, which would 404 too.
          self.closePc();
          self.setState('waiting', 'waiting for the stream…');
          setTimeout(function () { if (!self.stopped) self.startWebRtc(); }, RETRY_MS);
          return null;
        }
        if (res.status !== 201 && res.status !== 200) {
          return reasonOf(res).then(function (why) { self.fallback(why); return null; });
        }
        var audio = res.headers.get('X-Sluice-Audio');
        if (audio && /aac/i.test(audio)) {
          self.showNotice('The audio is AAC, which WebRTC cannot carry: this plays video only. Use HLS for sound (?proto=hls). (' + audio + ')');
        }
        var loc = res.headers.get('Location');
        if (loc) self.session = new URL(loc, whep).href;
        return res.text().then(function (sdp) {
          return pc.setRemoteDescription({ type: 'answer', sdp: sdp });
        }).then(function () {
          self.video.srcObject = stream;
          self.play();
          return self.firstFrame(FIRST_FRAME_MS);
        }).then(function () {
          if (pc === self.pc) self.setState('playing', 'WebRTC');
        }, function (e) {
          if (pc === self.pc) self.fallback('WebRTC: ' + e.message);
        });
      })
      .catch(function (e) {
        if (pc === self.pc) self.fallback('WebRTC: ' + e.message);
      });
  };

  Player.prototype.startHls = function (why) {
    var self = this;
    var src = new URL('index.m3u8', this.pathUrl).href;
    var v = this.video;
    v.srcObject = null;
    this.setState('connecting', 'HLS: loading…' + (why ? ' (' + why + ')' : ''));
    var native = v.canPlayType('application/vnd.apple.mpegurl');
    if (native && isSafari()) {
      this.el.dataset.mode = 'native-hls';
      v.src = src;
      this.play();
      return this.firstFrame(15000).then(function () { self.setState('playing', 'HLS'); },
        function (e) { self.fail('HLS: ' + e.message); });
    }
    return loadHlsJs().then(function (Hls) {
      if (!Hls.isSupported()) {
        if (native) {
          self.el.dataset.mode = 'native-hls';
          v.src = src;
          self.play();
          return;
        }
        return self.fail('this browser can play neither WebRTC nor HLS');
      }
      self.el.dataset.mode = 'hls';
      // Low-latency mode, and catching up (up to 1.25x) when playback falls behind the
      // live edge, so that latency does not drift after a stall.
      var hls = new Hls({
        lowLatencyMode: true,
        enableWorker: false,
        backBufferLength: 30,
        maxLiveSyncPlaybackRate: 1.25,
        liveSyncOnStallIncrease: 0.2,
      });
      self.hls = hls;
      var recovered = 0;
      hls.on(Hls.Events.ERROR, function (_e, data) {
        if (!data.fatal) return;
        self.errors.push('hls.js: ' + data.type + ' ' + data.details);
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR && recovered++ < 3) return hls.recoverMediaError();
        if (data.type === Hls.ErrorTypes.NETWORK_ERROR && data.response && data.response.code === 404) {
          self.setState('waiting', 'waiting for the stream…');
          hls.destroy();
          self.hls = null;
          setTimeout(function () { if (!self.stopped) self.start(); }, RETRY_MS);
          return;
        }
        if (/Codec/i.test(data.details)) {
          return self.fail('this browser cannot decode the stream (' + data.details +
            (data.mimeType ? ', ' + data.mimeType : '') + ')');
        }
        self.fail('HLS: ' + data.details);
      });
      hls.loadSource(src);
      hls.attachMedia(v);
      // hls.js only speeds up when close to its target latency; after a long stall (a
      // busy machine, a slow network) jump back to the live edge instead of playing on
      // seconds behind.
      var keepLive = setInterval(function () {
        if (self.hls !== hls) return clearInterval(keepLive);
        var sync = hls.liveSyncPosition;
        if (hls.latency > hls.targetLatency + 1.5 && sync && sync > v.currentTime + 0.5 && !v.paused) {
          v.currentTime = sync;
        }
      }, 1000);
      hls.on(Hls.Events.MANIFEST_PARSED, function () { self.play(); });
      return self.firstFrame(15000).then(function () {
        if (self.hls !== hls) return;
        var why = self.el.dataset.fallback;
        self.setState('playing', why ? 'LL-HLS (' + why + ')' : 'LL-HLS');
      }, function () {});
    }, function (e) { self.fail(e.message); });
  };

  // Resolves when ICE gathering completes or after `ms` (the server is ICE-lite and
  // learns the browser's address from its checks, so host candidates are enough).
  function gathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise(function (resolve) {
      var t = setTimeout(resolve, ms);
      pc.addEventListener('icegatheringstatechange', function () {
        if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
      });
    });
  }

  // Mounts a player on `el`. Options: path (required), server (default: where this
  // script came from), muted (default true), autoplay (true), controls (true), proto
  // ('auto', 'webrtc' or 'hls'). Returns the player (`stop()` ends it).
  function mount(el, options) {
    var o = options || {};
    if (!o.path) throw new Error('SluicePlayer.mount: a path is needed');
    var opts = {
      path: String(o.path).replace(/^\/+|\/+$/g, ''),
      server: o.server ? new URL('/', o.server).href : serverBase,
      muted: flag(o.muted, true),
      autoplay: flag(o.autoplay, true),
      controls: flag(o.controls, true),
      proto: /^(webrtc|hls)$/.test(o.proto || '') ? o.proto : 'auto',
      debug: flag(o.debug, false),
    };
    var p = new Player(el, opts);
    p.start();
    return p;
  }

  function pageOptions() {
    var q = new URLSearchParams(location.search);
    var path = decodeURIComponent(location.pathname.replace(/^\/+|\/+$/g, ''));
    var get = function (k) { return q.has(k) ? q.get(k) : undefined; };
    return {
      path: path, server: location.origin, muted: get('muted'), autoplay: get('autoplay'),
      controls: get('controls'), proto: get('proto'), debug: get('debug'),
    };
  }

  function auto() {
    var page = document.querySelector('[data-sluice-page]');
    if (page && !page.sluice) mount(page, pageOptions());
    document.querySelectorAll('[data-sluice-path]').forEach(function (el) {
      if (el.sluice) return;
      var d = el.dataset;
      mount(el, {
        path: d.sluicePath, server: d.sluiceServer, muted: d.sluiceMuted, autoplay: d.sluiceAutoplay,
        controls: d.sluiceControls, proto: d.sluiceProto,
      });
    });
  }

  window.SluicePlayer = { mount: mount };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', auto);
  else auto();
})();
