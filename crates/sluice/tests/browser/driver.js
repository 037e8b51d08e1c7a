// Drives the system Chromium (headless, through playwright-core installed by
// scripts/install-test-deps.sh into /opt/sluice-test-node) for crates/sluice/tests/browser.rs.
//
//   node driver.js '<job as JSON>'
//
// prints one line `RESULT <json>` (and progress on stderr). Jobs:
//
// - {"kind":"list","url":…,"seconds":S,"credentials":{"username","password"}?}
//   opens the list page and samples the listed paths every 100 ms for S seconds:
//   {"status","changes":[{"t":unix ms,"paths":[…]}],"requests":[urls]}
// - {"kind":"play","url":…,"loads":N,"pages":K,"seconds":S,"noWebRTC":bool,"screenshot":path?}
//   loads the player page N times one after another (each load's first-frame time), then
//   keeps K pages open together for S seconds and reports each one's decoded frames,
//   video size, audio energy, mode, fallback reason, notice, errors and WebRTC ports.
//   With "html" instead of "url", the page is that document, served from another
//   origin (an embedding page).
// - {"kind":"whip","origin":…,"path":…,"seconds":S}
//   publishes Chromium's fake camera and microphone to POST <origin>/<path>/whip for S
//   seconds: {"status","location","connected_ms","requests"}
// - {"kind":"support","url":…} what this browser decodes through MSE (hvc1, avc1 High).
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const { chromium } = require('playwright-core');

const job = JSON.parse(process.argv[2]);
const PROBE = fs.readFileSync(path.join(__dirname, 'probe.js'), 'utf8');
const ARGS = [
  '--no-sandbox',
  '--allow-loopback-in-peer-connection',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-gpu',
  // Every page of a test plays at once: none is a throttled background tab.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
  '--mute-audio',
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => process.stderr.write(a.join(' ') + '\n');

async function newPage(context, noWebRTC) {
  const page = await context.newPage();
  if (noWebRTC) await page.addInitScript('window.__noWebRTC = true;');
  await page.addInitScript(PROBE);
  page.on('console', (m) => log('console:', m.type(), m.text()));
  page.on('pageerror', (e) => log('pageerror:', e.message));
  return page;
}

async function playerState(page) {
  return page.evaluate(() => {
    const el = document.querySelector('.sluice-player');
    const d = el ? el.dataset : {};
    const p = window.__probe;
    return {
      state: d.state || null,
      mode: d.mode || null,
      fallback: d.fallback || null,
      notice: d.notice || null,
      errors: el && el.sluice ? el.sluice.errors : [],
      firstFrameMs: p.firstFrameMs,
      frames: p.frames.length,
      misreads: p.misreads,
      width: p.width,
      height: p.height,
      audioMax: p.audioMax,
      audioVia: p.audioVia,
      audioError: p.audioError || null,
      status: el ? (el.querySelector('.sluice-status') || {}).textContent : null,
    };
  });
}

async function waitFirstFrame(page, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const s = await playerState(page);
    if (s.firstFrameMs !== null || Date.now() > end) return s;
    await sleep(50);
  }
}

async function list(context) {
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  const page = await newPage(context, false);
  let status = 0;
  page.on('response', (r) => {
    if (r.url() === job.url) status = r.status();
  });
  let res = null;
  try {
    res = await page.goto(job.url);
  } catch (e) {
    // A 401 with no credentials to give: a headful browser would ask the user.
    if (!/ERR_INVALID_AUTH_CREDENTIALS/.test(String(e))) throw e;
    status = status || 401;
  }
  const out = { status: res ? res.status() : status, changes: [], requests };
  if (out.status !== 200) return out;
  const end = Date.now() + job.seconds * 1000;
  let last = null;
  while (Date.now() < end) {
    const paths = await page.evaluate(() =>
      Array.from(document.querySelectorAll('#paths tbody tr')).map((tr) => tr.dataset.path),
    );
    const key = JSON.stringify(paths);
    if (key !== last) {
      last = key;
      out.changes.push({ t: Date.now(), paths });
      log('list:', key);
    }
    await sleep(100);
  }
  out.text = await page.evaluate(() => document.body.innerText);
  return out;
}

async function play(context) {
  // A page of another origin (a server of the driver's own, on loopback) embedding the
  // player, if given.
  let embed = null;
  if (job.html) {
    embed = http.createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(job.html);
    });
    await new Promise((r) => embed.listen(0, '127.0.0.1', r));
    job.url = `http://127.0.0.1:${embed.address().port}/embed.html`;
  }
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  const out = { loads: [], pages: [], requests };
  const loads = job.loads || 0;
  for (let i = 0; i < loads; i++) {
    const page = await newPage(context, job.noWebRTC);
    const t = Date.now();
    await page.goto(job.url);
    const s = await waitFirstFrame(page, job.firstFrameTimeoutMs || 15000);
    log(`load ${i}: first frame ${s.firstFrameMs} ms, mode ${s.mode}, took ${Date.now() - t} ms`);
    out.loads.push(s);
    await page.close({ runBeforeUnload: true });
    await sleep(300);
  }
  const pages = [];
  for (let i = 0; i < (job.pages || 1); i++) {
    const page = await newPage(context, job.noWebRTC);
    pages.push(page);
  }
  await Promise.all(pages.map((p) => p.goto(job.url)));
  const start = Date.now();
  await Promise.all(pages.map((p) => waitFirstFrame(p, job.firstFrameTimeoutMs || 15000)));
  const rest = job.seconds * 1000 - (Date.now() - start);
  if (rest > 0) await sleep(rest);
  for (const page of pages) {
    const s = await playerState(page);
    s.frameList = await page.evaluate(() => window.__probe.frames);
    s.ports = await page.evaluate(() => window.__probePorts());
    s.inbound = await page.evaluate(() => window.__probeInbound());
    s.videoWidth = await page.evaluate(() => (document.querySelector('video') || {}).videoWidth || 0);
    out.pages.push(s);
  }
  if (job.screenshot) {
    await pages[0].screenshot({ path: job.screenshot });
    out.screenshot = job.screenshot;
  }
  for (const page of pages) await page.close({ runBeforeUnload: true });
  if (embed) embed.close();
  return out;
}

async function whip(context) {
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  const page = await newPage(context, false);
  // Any page of the server's origin: the WHIP POST is then same-origin.
  await page.goto(job.origin + '/assets/sluice.css');
  const r = await page.evaluate(async ({ path }) => {
    const t = performance.now();
    const media = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 480, frameRate: 30 },
      audio: true,
    });
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    window.__whipPc = pc;
    for (const track of media.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [media] });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((res) => {
      if (pc.iceGatheringState === 'complete') return res();
      const to = setTimeout(res, 1000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(to); res(); }
      });
    });
    const resp = await fetch('/' + path + '/whip', {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    const body = await resp.text();
    if (resp.status !== 201) return { status: resp.status, body };
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    await new Promise((res) => {
      if (pc.connectionState === 'connected') return res();
      const to = setTimeout(res, 10000);
      pc.addEventListener('connectionstatechange', () => {
        if (pc.connectionState === 'connected') { clearTimeout(to); res(); }
      });
    });
    return {
      status: resp.status,
      location: resp.headers.get('Location'),
      state: pc.connectionState,
      connected_ms: performance.now() - t,
    };
  }, { path: job.path });
  log('whip:', JSON.stringify(r));
  if (r.status === 201) {
    await sleep(job.seconds * 1000);
    r.bytesSent = await page.evaluate(async () => {
      let sent = 0;
      (await window.__whipPc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp') sent += s.bytesSent;
      });
      return sent;
    });
  }
  r.requests = requests;
  await page.close();
  return r;
}

async function support(context) {
  const page = await context.newPage();
  await page.goto(job.url);
  return page.evaluate(() => ({
    hvc1: MediaSource.isTypeSupported('video/mp4; codecs="hvc1.1.6.L93.B0"'),
    hev1: MediaSource.isTypeSupported('video/mp4; codecs="hev1.1.6.L93.B0"'),
    avc1High: MediaSource.isTypeSupported('video/mp4; codecs="avc1.640028"'),
    aac: MediaSource.isTypeSupported('audio/mp4; codecs="mp4a.40.2"'),
    opus: MediaSource.isTypeSupported('audio/mp4; codecs="opus"'),
  }));
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.SLUICE_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ARGS,
  });
  let result;
  try {
    const context = await browser.newContext({
      viewport: { width: 640, height: 480 },
      httpCredentials: job.credentials || undefined,
    });
    const run = { list, play, whip, support }[job.kind];
    if (!run) throw new Error('unknown job ' + job.kind);
    result = await run(context);
    await context.close();
  } finally {
    await browser.close();
  }
  process.stdout.write('RESULT ' + JSON.stringify(result) + '\n');
})().catch((e) => {
  process.stderr.write('driver failed: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
