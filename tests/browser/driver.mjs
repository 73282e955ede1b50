// Drives headless browsers through the demo page for one scenario; prints one JSON line.
//
// Started by tests/browser/run.py (inside a loopback-only network namespace) with:
//   TRIO_SFU_URL          the server, http://127.0.0.1:<port>
//   TRIO_SFU_ADMIN_TOKEN  the admin API's bearer token
//   TRIO_SFU_WEB_DIR      trio_sfu/web (playwright-core and puppeteer-core are in its node_modules)
//   TRIO_SFU_SCENARIO     vp8 | h264 | mute | leave | join | layers | layers-loss |
//                         firefox-vp8 | firefox-h264 | firefox-switch
//   TRIO_SFU_RUNS         joins to time (join); switch cycles (firefox-switch)
//   TRIO_SFU_CHROMIUM     Chromium, /usr/bin/chromium (never a downloaded one)
//   TRIO_SFU_FIREFOX      Firefox ESR, /usr/bin/firefox-esr (never a downloaded one)
//   TRIO_SFU_TIMEOUT_MS   the bound on the whole run
//   TRIO_SFU_SCREENSHOT   optional: a PNG of Bob's page at the end of vp8/h264
//
// Chromium is driven by playwright-core (CDP); Firefox by puppeteer-core over WebDriver BiDi
// (Playwright drives only its own patched Firefox builds). A Firefox page is wrapped in
// BidiPage, which offers the few Playwright page methods the scenarios use, so that a
// scenario reads the same whichever browser a page runs in.
//
// Every step waits with a deadline; on failure the JSON says which step, with the pages'
// state, getStats excerpts and console output, so a failure reads like webrtc-internals.
//
// Control: in the relayed scenarios (layers-loss) the runner answers requests about the
// impairment relays in front of the pages' receive transports: `control(op, args)` prints
// `@control {json}` on stdout and reads the answer, one JSON line, from stdin.

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';

const env = process.env;
const require = createRequire(`${env.TRIO_SFU_WEB_DIR}/package.json`);
const { chromium } = require('playwright-core');
const puppeteer = require('puppeteer-core');

const BASE = env.TRIO_SFU_URL;
const SCENARIO = env.TRIO_SFU_SCENARIO;
const RUNS = Number(env.TRIO_SFU_RUNS ?? '1');
const TIMEOUT_MS = Number(env.TRIO_SFU_TIMEOUT_MS ?? '150000');
const MEDIA_TIMEOUT_MS = 45000;

const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
  '--use-fake-device-for-media-stream=fps=30',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

/**
 * Firefox's preferences for a headless call on loopback. Fake camera (it honours the
 * page's 1280x720 at 30 fps constraints) and microphone without a permission prompt;
 * ICE on 127.0.0.1 (Firefox leaves loopback out by default, and gathers nothing at all
 * without a default route: run.py adds one over `lo`), host candidates as addresses, not
 * mDNS names; media may play without a click; no OpenH264 download (there is no network:
 * this Firefox has no H264, and says so in its capabilities).
 */
const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  'media.gmp-manager.updateEnabled': false,
  'media.gmp-gmpopenh264.autoupdate': false,
};

const consoleLog = [];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class StepFailed extends Error {
  constructor(step, message, details = {}) {
    super(`${step}: ${message}`);
    this.step = step;
    this.details = details;
  }
}

/** Poll `probe` until it returns a truthy value; fail the step with its last value. */
async function until(step, probe, { timeoutMs = MEDIA_TIMEOUT_MS, intervalMs = 250 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.done) return last;
    if (Date.now() > deadline) throw new StepFailed(step, `not done in ${timeoutMs} ms`, { last });
    await sleep(intervalMs);
  }
}

// ---- control of the runner --------------------------------------------------------------

let controlLines = null;
const controlWaiters = [];

/** Ask the runner (tests/browser/run.py, RelayedEngine.control); its answer, or a failed step. */
async function control(op, args = {}) {
  if (controlLines === null) {
    controlLines = createInterface({ input: process.stdin });
    controlLines.on('line', (line) => controlWaiters.shift()?.(line));
  }
  let waiter;
  const answer = new Promise((resolve) => {
    waiter = resolve;
    controlWaiters.push(resolve);
  });
  process.stdout.write(`@control ${JSON.stringify({ op, ...args })}\n`);
  const line = await Promise.race([answer, sleep(10000).then(() => null)]);
  if (line === null) controlWaiters.splice(controlWaiters.indexOf(waiter), 1); // never answered
  const result = line === null ? { ok: false, error: 'no answer in 10 s' } : JSON.parse(line);
  if (!result.ok) throw new StepFailed(`control ${op}`, result.error ?? 'refused', { args, result });
  return result;
}

function closeControl() {
  controlLines?.close();
  process.stdin.destroy();
}

// ---- pages -------------------------------------------------------------------------------

/** Browsers launched so far, by kind ('chromium' | 'firefox'): each launched once, when a
 * scenario first opens a page in it. */
const browsers = new Map();
/** Every page opened, for the failure dump. */
const openedPages = [];

async function launch(kind) {
  if (kind === 'chromium') {
    return chromium.launch({
      executablePath: env.TRIO_SFU_CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      timeout: 30000,
    });
  }
  if (kind === 'firefox') {
    return puppeteer.launch({
      browser: 'firefox',
      protocol: 'webDriverBiDi',
      executablePath: env.TRIO_SFU_FIREFOX,
      headless: true,
      extraPrefsFirefox: FIREFOX_PREFS,
      timeout: 60000,
      dumpio: true, // its stderr goes to the driver's: crashes and ICE trouble show there
    });
  }
  throw new Error(`unknown browser ${kind}`);
}

async function browserOf(kind) {
  if (!browsers.has(kind)) browsers.set(kind, launch(kind));
  return browsers.get(kind);
}

/** A puppeteer (WebDriver BiDi) page with the Playwright page methods the scenarios use. */
class BidiPage {
  constructor(page) {
    this.raw = page;
  }

  goto(url, options) {
    return this.raw.goto(url, options);
  }

  fill(selector, value) {
    return this.raw.locator(selector).fill(value);
  }

  selectOption(selector, value) {
    return this.raw.select(selector, value);
  }

  click(selector) {
    return this.raw.click(selector);
  }

  evaluate(fn, arg) {
    return this.raw.evaluate(fn, arg);
  }

  waitForFunction(fn, arg, options = {}) {
    return this.raw.waitForFunction(fn, options, arg);
  }

  screenshot(options) {
    return this.raw.screenshot(options);
  }

  on(event, handler) {
    this.raw.on(event, handler);
  }
}

/** A console message as text; puppeteer shows an Error argument as "JSHandle@error". */
function consoleText(m) {
  const text = m.text();
  if (!text.includes('JSHandle@')) return text;
  const args = m.args?.() ?? [];
  return args.map((a) => String(a.remoteObject?.()?.description ?? a.remoteValue?.()?.value ?? text)).join(' ');
}

/** A new page (in a browser context of its own) of the demo in browser `kind`. */
async function openPage(kind, label) {
  const browser = await browserOf(kind);
  let context;
  let page;
  if (kind === 'firefox') {
    context = await browser.createBrowserContext();
    const raw = await context.newPage();
    await raw.setViewport({ width: 1280, height: 900 });
    page = new BidiPage(raw);
  } else {
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
  }
  openedPages.push({ label, kind, page });
  page.on('console', (m) => consoleLog.push(`[${label}] ${m.type()}: ${consoleText(m)}`.slice(0, 500)));
  page.on('pageerror', (e) => consoleLog.push(`[${label}] pageerror: ${e.message}`.slice(0, 500)));
  page.on('close', () => consoleLog.push(`[${label}] page closed`));
  const response = await page.goto(`${BASE}/`, { waitUntil: 'load' });
  if (!response || response.status() !== 200) {
    throw new StepFailed('open', `GET / answered ${response?.status()}`);
  }
  await page.waitForFunction(() => window.trioDemo !== undefined, null, { timeout: 10000 });
  return { label, kind, page, context };
}

/** Fill the form and click Join, as a person would; resolves when the page published. */
async function join(p, { meeting, name, codec }) {
  await p.page.fill('#meeting', meeting);
  await p.page.fill('#name', name);
  await p.page.selectOption('#codec', codec);
  await p.page.click('#join');
  await until(`${p.label} join`, () =>
    p.page.evaluate(() => {
      const d = window.trioDemo;
      return { done: d.state === 'joined' || d.state === 'error', state: d.state, error: d.error };
    }),
  );
  const state = await p.page.evaluate(() => ({
    state: window.trioDemo.state,
    error: window.trioDemo.error,
    peerId: window.trioDemo.peerId,
    producers: {
      audio: window.trioDemo.local.audio?.id ?? null,
      video: window.trioDemo.local.video?.id ?? null,
    },
  }));
  if (state.state !== 'joined') throw new StepFailed(`${p.label} join`, JSON.stringify(state.error));
  Object.assign(p, state);
  return p;
}

const inbound = (p) => p.page.evaluate(() => window.trioDemo.inboundStats());
const outbound = (p) => p.page.evaluate(() => window.trioDemo.outboundStats());
const events = (p, type) =>
  p.page.evaluate((t) => window.trioDemo.events.filter((e) => e.type === t), type);

/** Wait until `p` decodes video from `from` at `width` and receives its audio. */
async function waitMedia(p, from, { width = 1280, timeoutMs = MEDIA_TIMEOUT_MS } = {}) {
  // On failure: the last stats, and what the sender's bandwidth estimate and frame widths
  // were along the way (one sample per second), to tell congestion control from forwarding.
  const history = [];
  const started = Date.now();
  return until(
    `${p.label} receives ${from.label}`,
    async () => {
      const stats = (await inbound(p)).filter((s) => s.peerId === from.peerId);
      const video = stats.find((s) => s.kind === 'video');
      const audio = stats.find((s) => s.kind === 'audio');
      const done =
        !!video && !!audio && video.framesDecoded > 0 && video.frameWidth === width && audio.packetsReceived > 0;
      if (done) return { done };
      const sender = await outbound(from);
      const timeline = await from.page.evaluate(() => window.trioDemo.timeline);
      const second = Math.floor((Date.now() - started) / 1000);
      if (history.length === 0 || history[history.length - 1].s !== second) {
        history.push({
          s: second,
          senderBwe: sender.availableOutgoingBitrate,
          sent: (sender.video ?? []).map((v) => `${v.rid}:${v.frameWidth}`).join(' '),
          received: video ? `${video.frameWidth}x${video.frameHeight}/${video.framesDecoded}` : null,
        });
      }
      return { done, video, audio, senderOutbound: sender, senderTimeline: timeline, history };
    },
    { timeoutMs },
  );
}

function pick(stats, kind, peerId) {
  return stats.find((s) => s.kind === kind && s.peerId === peerId);
}

/** Two samples `ms` apart of what `p` receives from `from`. */
async function growth(p, from, ms = 2000) {
  const a = await inbound(p);
  await sleep(ms);
  const b = await inbound(p);
  const va = pick(a, 'video', from.peerId);
  const vb = pick(b, 'video', from.peerId);
  const aa = pick(a, 'audio', from.peerId);
  const ab = pick(b, 'audio', from.peerId);
  return {
    video: {
      framesDecoded: [va?.framesDecoded ?? 0, vb?.framesDecoded ?? 0],
      frameWidth: vb?.frameWidth ?? 0,
      frameHeight: vb?.frameHeight ?? 0,
      mimeType: vb?.mimeType ?? null,
      packetsLost: vb?.packetsLost ?? null,
      rtt: vb?.rtt ?? null,
    },
    audio: {
      packetsReceived: [aa?.packetsReceived ?? 0, ab?.packetsReceived ?? 0],
      mimeType: ab?.mimeType ?? null,
    },
  };
}

async function timings(p) {
  return p.page.evaluate(() => window.trioDemo.timings);
}

async function admin(path) {
  const response = await fetch(`${BASE}/v1${path}`, {
    headers: { authorization: `Bearer ${env.TRIO_SFU_ADMIN_TOKEN}` },
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

function meetingId() {
  return `m-${Math.random().toString(36).slice(2, 10)}`;
}

// ---- scenarios ---------------------------------------------------------------------------

/**
 * Two pages publish camera + microphone with `codec` and decode each other. Alice's page
 * runs in browser `alice`, Bob's in `bob` ('chromium' or 'firefox').
 */
async function twoPeers(codec, { alice = 'chromium', bob = 'chromium' } = {}) {
  const meeting = meetingId();
  const a = await join(await openPage(alice, 'alice'), { meeting, name: 'alice', codec });
  const b = await join(await openPage(bob, 'bob'), { meeting, name: 'bob', codec });
  await Promise.all([waitMedia(a, b), waitMedia(b, a)]);
  return { meeting, a, b };
}

async function pageReport(p, from) {
  const [received, sent, t, consumers] = await Promise.all([
    growth(p, from),
    outbound(p),
    timings(p),
    p.page.evaluate(() => window.trioDemo.consumerList()),
  ]);
  return {
    peerId: p.peerId,
    producers: p.producers,
    received,
    sent,
    consumers,
    joinToFirstFrameMs: t.firstRemoteFrame === null ? null : t.firstRemoteFrame - t.joinStart,
    timeline: await p.page.evaluate(() => window.trioDemo.timeline),
  };
}

async function mediaScenario(codec, browsers = {}) {
  const { meeting, a, b } = await twoPeers(codec, browsers);
  const [alice, bob] = await Promise.all([pageReport(a, b), pageReport(b, a)]);
  if (env.TRIO_SFU_SCREENSHOT) await b.page.screenshot({ path: env.TRIO_SFU_SCREENSHOT, fullPage: true });
  // A Firefox publisher takes longer to bring r2 back once the REMB let it drop it: its
  // estimate climbs back slowly (issue 17, defect 3: late transport-cc arrival times).
  const upTimeoutMs = a.kind === 'firefox' ? 45000 : 15000;
  const layers = codec === 'VP8' ? await layerPicker(b, a, upTimeoutMs) : null;
  return { meeting, codec, pages: { alice, bob }, layers };
}

/** Bob picks 180p for Alice's video in the demo's layer picker, then auto again. */
async function layerPicker(p, from, upTimeoutMs = 15000) {
  const select = `.tile[data-peer-id="${from.peerId}"] select.layers`;
  const widthIs = (width, step, timeoutMs = 15000) =>
    until(
      step,
      async () => {
        const video = pick(await inbound(p), 'video', from.peerId);
        return { done: video?.frameWidth === width, frameWidth: video?.frameWidth };
      },
      { timeoutMs },
    );
  const preferred = () =>
    p.page.evaluate((peerId) => window.trioDemo.tiles.get(peerId).preferred, from.peerId);
  await p.page.selectOption(select, '0');
  const low = await widthIs(320, `${p.label} picks r0`);
  const lowPreferred = await preferred();
  await p.page.selectOption(select, '2');
  const high = await widthIs(1280, `${p.label} picks auto`, upTimeoutMs);
  return {
    lowWidth: low.frameWidth,
    lowPreferred,
    highWidth: high.frameWidth,
    highPreferred: await preferred(),
  };
}

async function framesFrom(p, from) {
  return pick(await inbound(p), 'video', from.peerId)?.framesDecoded ?? 0;
}

async function muteScenario() {
  const { meeting, a, b } = await twoPeers('VP8');
  const videoId = a.producers.video;
  const hasEvent = async (type) =>
    (await events(b, type)).some((e) => e.data.producerId === videoId && e.data.peerId === a.peerId);
  const badgeShown = () =>
    b.page.evaluate((peerId) => {
      const tile = window.trioDemo.tiles.get(peerId);
      return tile ? !tile.badge.hidden : null;
    }, a.peerId);

  await a.page.click('#toggle-cam');
  await until('bob hears rtc:producerPaused', async () => ({ done: await hasEvent('rtc:producerPaused') }), {
    timeoutMs: 10000,
  });
  const consumerPausedFlag = (await b.page.evaluate(() => window.trioDemo.consumerList())).find(
    (c) => c.producerId === videoId,
  )?.producerPaused;
  const badgeWhilePaused = await badgeShown();
  const aliceProducerPaused = await a.page.evaluate(() => window.trioDemo.local.video.paused);
  await sleep(700); // frames already on the wire drain
  const pausedFrom = await framesFrom(b, a);
  await sleep(2000);
  const pausedTo = await framesFrom(b, a);

  await a.page.click('#toggle-cam');
  await until('bob hears rtc:producerResumed', async () => ({ done: await hasEvent('rtc:producerResumed') }), {
    timeoutMs: 10000,
  });
  const resumedFrom = await framesFrom(b, a);
  const resumed = await until(
    'bob decodes again',
    async () => {
      const now = await framesFrom(b, a);
      return { done: now > resumedFrom + 10, now };
    },
    { timeoutMs: 15000 },
  );
  return {
    meeting,
    videoProducerId: videoId,
    aliceProducerPaused,
    consumerPausedFlag,
    badgeWhilePaused,
    badgeAfterResume: await badgeShown(),
    decodedWhilePaused: pausedTo - pausedFrom,
    decodedAfterResume: resumed.now - resumedFrom,
    pausedEvents: (await events(b, 'rtc:producerPaused')).length,
    resumedEvents: (await events(b, 'rtc:producerResumed')).length,
  };
}

async function leaveScenario() {
  const { meeting, a, b } = await twoPeers('VP8');
  const before = await admin(`/rooms/${meeting}`);
  await a.context.close(); // the page and its WebSocket go away without rtc:leave
  const left = await until(
    'bob hears rtc:peerLeft',
    async () => {
      const peerLeft = (await events(b, 'rtc:peerLeft')).some((e) => e.data.peerId === a.peerId);
      const consumers = await b.page.evaluate(() => window.trioDemo.consumerList());
      const fromAlice = consumers.filter((c) => c.peerId === a.peerId);
      return { done: peerLeft && fromAlice.every((c) => c.closed), peerLeft, fromAlice };
    },
    { timeoutMs: 15000 },
  );
  const tileGone = await b.page.evaluate((peerId) => !window.trioDemo.tiles.has(peerId), a.peerId);
  const openConsumers = await b.page.evaluate(() => window.trioDemo.client.consumers.size);
  const withBob = await until(
    'admin shows one peer',
    async () => {
      const room = await admin(`/rooms/${meeting}`);
      return { done: room.body?.peerCount === 1, room };
    },
    { timeoutMs: 10000 },
  );
  await b.page.click('#leave');
  await until('bob left', () =>
    b.page.evaluate(() => ({ done: window.trioDemo.state === 'left', state: window.trioDemo.state })),
  );
  const afterLeave = await until(
    'admin shows no peer',
    async () => {
      const room = await admin(`/rooms/${meeting}`);
      return { done: room.status === 404 || room.body?.peerCount === 0, room };
    },
    { timeoutMs: 10000 },
  );
  const rooms = await admin('/rooms');
  return {
    meeting,
    alicePeerId: a.peerId,
    bobPeerId: b.peerId,
    peerCountBefore: before.body?.peerCount ?? null,
    consumersFromAlice: left.fromAlice,
    tileGone,
    openConsumers,
    roomWithBob: withBob.room,
    roomAfterLeave: afterLeave.room,
    roomsAfterLeave: rooms.body,
  };
}

/** `RUNS` times: alice joins, then bob; bob's time from clicking Join to a decoded frame. */
async function joinScenario() {
  const runs = [];
  for (let i = 0; i < RUNS; i += 1) {
    const meeting = meetingId();
    const a = await join(await openPage('chromium', `alice${i}`), { meeting, name: 'alice', codec: 'VP8' });
    const b = await openPage('chromium', `bob${i}`);
    await join(b, { meeting, name: 'bob', codec: 'VP8' });
    const t = await until(
      `bob${i} first frame`,
      async () => {
        const now = await timings(b);
        return { done: now.firstRemoteFrame !== null, now };
      },
      { timeoutMs: 30000, intervalMs: 50 },
    );
    runs.push({
      joinToFirstFrameMs: t.now.firstRemoteFrame - t.now.joinStart,
      joinToJoinedMs: t.now.joined - t.now.joinStart,
      joinToPublishedMs: t.now.published - t.now.joinStart,
    });
    await Promise.all([a.context.close(), b.context.close()]);
    await sleep(500);
  }
  const sorted = runs.map((r) => r.joinToFirstFrameMs).sort((x, y) => x - y);
  return { runs, medianJoinToFirstFrameMs: sorted[Math.floor(sorted.length / 2)] };
}

// ---- simulcast layers: preferred layers and the weak-network policy -----------------------

/** Sampling period of the receiving page's inbound-rtp video stats. */
const SAMPLE_MS = 100;
/** Gaps between samples longer than this are reported with the freezes they hold. */
const LONG_GAP_MS = 300;
/** How long Bob stays on r0 before asking for r2 again. */
const LOW_HOLD_MS = 6000;

/**
 * Start sampling, inside `p`'s page every SAMPLE_MS, the inbound-rtp stats of its consumer
 * `consumerId` (a video one): framesDecoded and frame size, with the stats' own timestamp.
 */
async function startSampler(p, consumerId, period = SAMPLE_MS) {
  await p.page.evaluate(
    ({ id, period }) => {
      const consumer = window.trioDemo.client.consumers.get(id);
      const sampler = { samples: [], errors: 0, busy: false };
      const tick = async () => {
        if (sampler.busy || consumer.closed) return; // a slow getStats: no pile-up
        sampler.busy = true;
        try {
          const report = await consumer.getStats();
          let s = null;
          report.forEach((x) => {
            if (x.type === 'inbound-rtp' && x.kind === 'video') s = x;
          });
          if (s) {
            sampler.samples.push({
              t: performance.now(),
              ts: s.timestamp,
              framesDecoded: s.framesDecoded ?? 0,
              keyFramesDecoded: s.keyFramesDecoded ?? 0,
              frameWidth: s.frameWidth ?? 0,
              frameHeight: s.frameHeight ?? 0,
              packetsReceived: s.packetsReceived ?? 0,
              packetsLost: s.packetsLost ?? 0,
              nackCount: s.nackCount ?? 0,
              pliCount: s.pliCount ?? 0,
              freezeCount: s.freezeCount ?? 0,
              totalFreezesDuration: s.totalFreezesDuration ?? 0,
              framesReceived: s.framesReceived ?? 0,
              framesDropped: s.framesDropped ?? 0,
              jitterBufferDelay: s.jitterBufferDelay ?? 0,
              jitterBufferEmittedCount: s.jitterBufferEmittedCount ?? 0,
            });
          }
        } catch {
          sampler.errors += 1;
        } finally {
          sampler.busy = false;
        }
      };
      sampler.timer = setInterval(tick, period);
      window.trioSampler = sampler;
    },
    { id: consumerId, period },
  );
}

/** Sample, every 250 ms in `p`'s page, its video producer's streams and send-side
 * estimate: to tell a publisher that stopped a simulcast stream from a forwarding problem. */
async function startSenderSampler(p) {
  await p.page.evaluate(() => {
    const sampler = { samples: [], busy: false };
    sampler.timer = setInterval(async () => {
      if (sampler.busy) return;
      sampler.busy = true;
      try {
        const out = await window.trioDemo.outboundStats();
        sampler.samples.push({
          wall: (performance.timeOrigin + performance.now()) / 1000,
          bwe: out.availableOutgoingBitrate,
          streams: Object.fromEntries(
            (out.video ?? []).map((v) => [v.rid, [v.framesEncoded, v.frameWidth, v.qualityLimitationReason]]),
          ),
        });
      } catch {
        // the page is leaving
      } finally {
        sampler.busy = false;
      }
    }, 250);
    window.trioSenderSampler = sampler;
  });
}

/** The sender sampler's samples, `t` in ms since `startWall` (Unix seconds). */
async function senderSamples(p, startWall) {
  const samples = await p.page.evaluate(() => window.trioSenderSampler.samples);
  return samples
    .filter((s) => s.wall >= startWall)
    .map(({ wall, ...s }) => ({ t: Math.round((wall - startWall) * 1000), ...s }));
}

/** The sampler's samples from `fromT` (page clock, performance.now()) on. */
const samplesSince = (p, fromT = 0) =>
  p.page.evaluate((t) => window.trioSampler.samples.filter((s) => s.t >= t), fromT);
const pageNow = (p) => p.page.evaluate(() => performance.now());
/** The page clock's `t` as Unix time in seconds (to line up with the server's timeline). */
const pageWall = (p, t) => p.page.evaluate((x) => (performance.timeOrigin + x) / 1000, t);

/**
 * What the samples say about decoding: the longest time framesDecoded stayed flat (from the
 * first to the last sample with one value, on the stats' clock; at most one sampling period
 * shorter than the real stall), where, and the longest gap between samples. A gap longer
 * than LONG_GAP_MS (a starved page) could hide a stall: `longGaps` lists them with the
 * freezes Chromium counted meanwhile (`totalFreezesDuration`, its own frame-interval
 * measure), which a hidden stall would show in.
 */
function decoding(samples) {
  let maxFlatMs = 0;
  let flatAt = null;
  // From the first sample that shows a count to the first that shows a higher one: the
  // time between two decoded frames, give or take a sampling period (more where the page
  // was starved and the sampler fell behind).
  let maxStallMs = 0;
  let maxGapMs = 0;
  const longGaps = [];
  let first = null;
  for (let i = 0; i < samples.length; i += 1) {
    const s = samples[i];
    if (i > 0) {
      const before = samples[i - 1];
      const gap = s.ts - before.ts;
      maxGapMs = Math.max(maxGapMs, gap);
      if (gap > LONG_GAP_MS) {
        const freezeMs = (s.totalFreezesDuration - before.totalFreezesDuration) * 1000;
        longGaps.push({ at: before.t, ms: Math.round(gap), freezeMs: Math.round(freezeMs) });
      }
    }
    if (first !== null && s.framesDecoded !== first.framesDecoded) {
      maxStallMs = Math.max(maxStallMs, s.ts - first.ts);
    }
    if (first === null || s.framesDecoded !== first.framesDecoded) first = s;
    const flat = s.ts - first.ts;
    if (flat > maxFlatMs) {
      maxFlatMs = flat;
      flatAt = { from: first.t, to: s.t, framesDecoded: s.framesDecoded, frameWidth: s.frameWidth };
    }
  }
  const a = samples[0];
  const b = samples[samples.length - 1];
  return {
    samples: samples.length,
    maxFlatMs: Math.round(maxFlatMs),
    flatAt,
    maxStallMs: Math.round(maxStallMs),
    maxGapMs: Math.round(maxGapMs),
    longGaps,
    framesDecoded: a && b ? b.framesDecoded - a.framesDecoded : 0,
    seconds: a && b ? (b.ts - a.ts) / 1000 : 0,
    widths: [...new Set(samples.map((s) => s.frameWidth))],
  };
}

/** Wait until the sampler sees frames `width` wide; ms from `sinceT` to that sample. */
async function waitWidth(p, width, sinceT, step, timeoutMs) {
  try {
    const found = await until(
      step,
      async () => {
        const samples = await samplesSince(p, sinceT);
        const hit = samples.find((s) => s.frameWidth === width);
        return hit ? { done: true, ms: Math.round(hit.t - sinceT) } : { done: false, last: samples.at(-1) };
      },
      { timeoutMs, intervalMs: 100 },
    );
    return found.ms;
  } catch (error) {
    if (error instanceof StepFailed) error.details.server = await serverLayers(p).catch(String);
    throw error;
  }
}

/** The server's view of `p`'s video consumer (rtc:getStats): layers, level, loss. */
async function serverLayers(p) {
  const stats = await p.page.evaluate(
    (id) => window.trioDemo.client.getServerStats(id),
    p.videoConsumerId,
  );
  const s = stats.find((x) => x.type === 'outbound-rtp') ?? stats[0] ?? {};
  return {
    currentLayers: s.currentLayers ?? null,
    targetLayers: s.targetLayers ?? null,
    preferredLayers: s.preferredLayers ?? null,
    networkLevel: s.networkLevel ?? null,
    fractionLost: s.fractionLost ?? null,
    packetsRetransmitted: s.packetsRetransmitted ?? null,
  };
}

/** Alice and Bob in a VP8 call; Bob's consumer of Alice's video sampled from now on. */
async function layersCall() {
  const { meeting, a, b } = await twoPeers('VP8');
  b.videoConsumerId = (await b.page.evaluate(() => window.trioDemo.consumerList())).find(
    (c) => c.peerId === a.peerId && c.kind === 'video' && !c.closed,
  )?.id;
  if (!b.videoConsumerId) throw new StepFailed('bob finds his video consumer', 'none');
  await Promise.all([startSampler(b, b.videoConsumerId), startSenderSampler(a)]);
  return { meeting, a, b };
}

const setPreferred = (p, spatialLayer) =>
  p.page.evaluate(
    ({ id, spatial }) => window.trioDemo.client.setPreferredLayers(id, spatial),
    { id: p.videoConsumerId, spatial: spatialLayer },
  );

/**
 * Bob prefers r0 for Alice's video, then r2 again (rtc:setPreferredLayers): how long each
 * took to reach the decoder (frameWidth 320, then 1280) and how decoding went meanwhile.
 */
async function layersScenario() {
  const { meeting, a, b } = await layersCall();
  const start = await pageNow(b);
  await sleep(1500); // a stretch of steady 1280-wide decoding before the first switch
  const lowAt = await pageNow(b);
  const lowAnswer = await setPreferred(b, 0);
  const lowMs = await waitWidth(b, 320, lowAt, 'bob decodes r0', 10000);
  // Long enough for the server's REMB to bring Alice down to r0 alone (it halves per
  // second), so that going back up needs her to start r1 and r2 again.
  await sleep(LOW_HOLD_MS);
  const lowServer = await serverLayers(b);
  const lowSteady = decoding(await samplesSince(b, lowAt + lowMs));
  const highAt = await pageNow(b);
  const highAnswer = await setPreferred(b, 2);
  const highMs = await waitWidth(b, 1280, highAt, 'bob decodes r2', 15000);
  await sleep(2000);
  const highServer = await serverLayers(b);
  const all = await samplesSince(b, start);
  const startWall = await pageWall(b, start);
  return {
    meeting,
    alicePeerId: a.peerId,
    bobPeerId: b.peerId,
    aliceSent: await senderSamples(a, startWall),
    low: { preferred: lowAnswer, ms: lowMs, server: lowServer, steady: lowSteady },
    high: { preferred: highAnswer, ms: highMs, server: highServer },
    decoding: decoding(all),
    startWall,
    marks: { low: Math.round(lowAt - start), high: Math.round(highAt - start) },
    samples: all.map((s) => ({ ...s, t: Math.round(s.t - start), ts: undefined })),
  };
}

/**
 * Bob's downlink (the relay in front of his receive transport) loses 15 %: the policy takes
 * Alice's video down to r0 and Bob keeps decoding it; then the loss stops and it climbs
 * back to r2.
 */
async function layersLossScenario() {
  const { meeting, a, b } = await layersCall();
  const start = await pageNow(b);
  await sleep(1500);
  const clean = decoding(await samplesSince(b, start));
  const lossAt = await pageNow(b);
  await control('downlink', { peerId: b.peerId, loss: 0.15 });
  const downMs = await waitWidth(b, 320, lossAt, 'bob decodes r0 under 15 % loss', 20000);
  // Settled: at least two policy intervals (3 s each) at r0, decoding all along.
  const settledAt = lossAt + downMs;
  await sleep(7000);
  const settledSamples = await samplesSince(b, settledAt);
  const settledServer = await serverLayers(b);
  const relaysUnderLoss = (await control('relays')).relays;
  const healAt = await pageNow(b);
  await control('downlink', { peerId: b.peerId, loss: 0 });
  const upMs = await waitWidth(b, 1280, healAt, 'bob climbs back to r2', 40000);
  await sleep(1000);
  const healedServer = await serverLayers(b);
  const all = await samplesSince(b, start);
  const startWall = await pageWall(b, start);
  const seconds = [];
  for (let t = settledAt; t + 1000 <= settledAt + 7000; t += 1000) {
    const window = settledSamples.filter((s) => s.t >= t && s.t < t + 1000);
    seconds.push(window.length ? window[window.length - 1].framesDecoded - window[0].framesDecoded : 0);
  }
  return {
    meeting,
    alicePeerId: a.peerId,
    bobPeerId: b.peerId,
    aliceSent: await senderSamples(a, startWall),
    clean,
    down: { ms: downMs },
    settled: {
      decoding: decoding(settledSamples),
      framesPerSecond: seconds,
      server: settledServer,
      relays: relaysUnderLoss,
    },
    healed: { ms: upMs, server: healedServer },
    underLoss: decoding(all.filter((s) => s.t >= lossAt && s.t < healAt)),
    startWall,
    marks: { loss: Math.round(lossAt - start), heal: Math.round(healAt - start) },
    samples: all.map((s) => ({ ...s, t: Math.round(s.t - start), ts: undefined })),
  };
}

// ---- Firefox ESR -------------------------------------------------------------------------

/**
 * Alice in Chromium publishes H264 simulcast; Bob in Firefox ESR (no OpenH264 here, so no
 * H264 in its capabilities) publishes VP8. The server refuses Bob's consume of Alice's
 * video as `unsupported`; his page shows it on her tile and goes on: he hears her, she sees
 * and hears him.
 */
async function firefoxH264Scenario() {
  const meeting = meetingId();
  const a = await join(await openPage('chromium', 'alice'), { meeting, name: 'alice', codec: 'H264' });
  const b = await join(await openPage('firefox', 'bob'), { meeting, name: 'bob', codec: 'VP8' });
  await waitMedia(a, b);
  await until('bob hears alice', async () => {
    const audio = pick(await inbound(b), 'audio', a.peerId);
    return { done: (audio?.packetsReceived ?? 0) > 0, audio };
  });
  const [alice, bob] = await Promise.all([pageReport(a, b), pageReport(b, a)]);
  const bobPage = await b.page.evaluate((peerId) => {
    const d = window.trioDemo;
    const tile = d.tiles.get(peerId);
    return {
      state: d.state,
      error: d.error,
      refused: d.refused,
      note: tile ? { hidden: tile.note.hidden, text: tile.note.textContent } : null,
      receiveCodecs: d.client.device.rtpCapabilities.codecs.map((c) => c.mimeType),
    };
  }, a.peerId);
  return { meeting, alicePeerId: a.peerId, bobPeerId: b.peerId, pages: { alice, bob }, bobPage };
}

/**
 * Record, in `p`'s page, when each frame of `peerId`'s video is shown (the video element's
 * requestVideoFrameCallback, in Chromium and Firefox alike): page time and mediaTime.
 */
async function startFrameClock(p, peerId) {
  await p.page.evaluate((id) => {
    const video = window.trioDemo.tiles.get(id).video;
    const frames = [];
    const onFrame = (now, meta) => {
      frames.push([now, meta.mediaTime, meta.width]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    window.trioFrames = frames;
  }, peerId);
}

/** The longest time between two frames shown from page time `from` to `to`, ms. */
async function longestFrameGap(p, from, to) {
  return p.page.evaluate(
    ({ from, to }) => {
      const shown = window.trioFrames.filter(([t]) => t >= from && t <= to);
      let longest = 0;
      let at = null;
      for (let i = 1; i < shown.length; i += 1) {
        const gap = shown[i][0] - shown[i - 1][0];
        if (gap > longest) [longest, at] = [gap, shown[i - 1][0]];
      }
      return { ms: Math.round(longest), at, frames: shown.length };
    },
    { from, to },
  );
}

/**
 * The freezes Chromium counted over these samples (its own measure of the time between two
 * frames, taken off the page's main thread: a gap longer than max(3 x the mean frame
 * interval, the mean + 150 ms), ~183 ms at 30 fps): [{ms, count, at}] per sample span
 * where its freezeCount grew. Counted from the second frame on: the first frame after a
 * pause ends a freeze as long as the pause.
 */
function freezesIn(samples) {
  const from = samples.length ? samples[0].framesDecoded + 1 : 0;
  const watched = samples.filter((s) => s.framesDecoded >= from);
  const freezes = [];
  for (let i = 1; i < watched.length; i += 1) {
    const [a, b] = [watched[i - 1], watched[i]];
    if (b.freezeCount > a.freezeCount) {
      const ms = (b.totalFreezesDuration - a.totalFreezesDuration) * 1000;
      freezes.push({ ms: Math.round(ms), count: b.freezeCount - a.freezeCount, at: Math.round(b.t) });
    }
  }
  return freezes;
}

/** Whether the samples show frames decoded from page time `from` on. */
function endsDecoding(samples, from) {
  const tail = samples.filter((s) => s.t >= from);
  return tail.length >= 2 && tail.at(-1).framesDecoded > tail[0].framesDecoded;
}

/** Cycles of the switch in firefox-switch, and how it samples Bob's decoding. */
const SWITCH_CYCLES = 3;
const SWITCH_SAMPLE_MS = 50;
/** Between Bob's resume (answered) and his asking for layer 0, as in the issue. */
const SWITCH_DELAY_MS = 100;
/** How long each switch is watched from the resume. */
const SWITCH_WATCH_MS = 3000;

/**
 * Issue 17's freeze: Alice publishes VP8 simulcast from Firefox ESR; Bob (Chromium) watches
 * her. Each cycle: Bob decodes r2 steadily, pauses his consumer for a second, resumes it
 * (the server asks Alice for an r2 keyframe) and 100 ms later prefers layer 0 (a request
 * for r0 that Firefox drops: it comes within 300 ms of the r2 one). Bob's framesDecoded is
 * sampled every 50 ms; per cycle: the longest time it stayed flat from the first frame
 * decoded after the resume to the end of the watch, and how long r0 took.
 */
async function firefoxSwitchScenario() {
  const meeting = meetingId();
  const a = await join(await openPage('firefox', 'alice'), { meeting, name: 'alice', codec: 'VP8' });
  const b = await join(await openPage('chromium', 'bob'), { meeting, name: 'bob', codec: 'VP8' });
  await waitMedia(b, a);
  // Only Alice's video matters: Bob stops his camera, which spares the CPU of his encoder
  // and of Alice's decoder (on a loaded machine Firefox's encoder otherwise scales down).
  await b.page.click('#toggle-cam');
  b.videoConsumerId = (await b.page.evaluate(() => window.trioDemo.consumerList())).find(
    (c) => c.peerId === a.peerId && c.kind === 'video' && !c.closed,
  )?.id;
  if (!b.videoConsumerId) throw new StepFailed('bob finds his video consumer', 'none');
  await Promise.all([
    startSampler(b, b.videoConsumerId, SWITCH_SAMPLE_MS),
    startFrameClock(b, a.peerId),
    startSenderSampler(a),
  ]);
  const start = await pageNow(b);
  const cycles = [];
  for (let i = 0; i < SWITCH_CYCLES; i += 1) {
    const upAt = Date.now();
    await setPreferred(b, 2);
    // r2 forwarded (whatever its size: Firefox scales its streams down when short of CPU).
    await until(
      `cycle ${i}: bob gets r2`,
      async () => {
        const server = await serverLayers(b);
        return { done: server.currentLayers?.spatialLayer === 2, server };
      },
      { timeoutMs: 30000, intervalMs: 200 },
    );
    const upMs = Date.now() - upAt;
    await sleep(1500);
    await b.page.evaluate((id) => {
      const client = window.trioDemo.client;
      return client.pauseConsumer(client.consumers.get(id));
    }, b.videoConsumerId);
    await sleep(1000);
    // In the page, so that the 100 ms are not stretched by the driver's round trips.
    const marks = await b.page.evaluate(
      async ({ id, delay }) => {
        const client = window.trioDemo.client;
        const resumeAt = performance.now();
        await client.resumeConsumer(client.consumers.get(id));
        const resumedAt = performance.now();
        await new Promise((resolve) => setTimeout(resolve, delay));
        const lowAt = performance.now();
        const preferred = await client.setPreferredLayers(id, 0);
        return { resumeAt, resumedAt, lowAt, preferred };
      },
      { id: b.videoConsumerId, delay: SWITCH_DELAY_MS },
    );
    await sleep(SWITCH_WATCH_MS - (marks.lowAt - marks.resumeAt));
    const samples = await samplesSince(b, marks.resumeAt - 200);
    const before = samples.filter((s) => s.t <= marks.resumeAt).at(-1);
    const firstNew = samples.find((s) => s.t > marks.resumeAt && s.framesDecoded > (before?.framesDecoded ?? 0));
    const watched = firstNew ? samples.filter((s) => s.t >= firstNew.t) : [];
    const widths = [...new Set(watched.map((s) => s.frameWidth))];
    const low = watched.find((s) => s.frameWidth === Math.min(...widths));
    cycles.push({
      wall: { resume: await pageWall(b, marks.resumeAt), low: await pageWall(b, marks.lowAt) },
      upMs,
      marks: {
        resumed: Math.round(marks.resumedAt - marks.resumeAt),
        low: Math.round(marks.lowAt - marks.resumeAt),
      },
      preferred: marks.preferred,
      firstFrameMs: firstNew ? Math.round(firstNew.t - marks.resumeAt) : null,
      lowMs: low ? Math.round(low.t - marks.resumeAt) : null,
      decoding: decoding(watched),
      freezes: freezesIn(watched),
      decodingAtEnd: endsDecoding(samples, marks.resumeAt + SWITCH_WATCH_MS - 500),
      shown: firstNew ? await longestFrameGap(b, firstNew.t, marks.resumeAt + SWITCH_WATCH_MS) : null,
      server: await serverLayers(b),
      at: Math.round(marks.resumeAt - start),
    });
  }
  const all = await samplesSince(b, start);
  const startWall = await pageWall(b, start);
  return {
    meeting,
    alicePeerId: a.peerId,
    bobPeerId: b.peerId,
    bobVideoConsumerId: b.videoConsumerId,
    cycles,
    aliceSent: await senderSamples(a, startWall),
    startWall,
    samples: all.map((s) => ({ ...s, t: Math.round(s.t - start), ts: undefined })),
  };
}

const SCENARIOS = {
  vp8: () => mediaScenario('VP8'),
  h264: () => mediaScenario('H264'),
  mute: muteScenario,
  leave: leaveScenario,
  join: joinScenario,
  layers: layersScenario,
  'layers-loss': layersLossScenario,
  'firefox-vp8': () => mediaScenario('VP8', { alice: 'firefox' }),
  'firefox-h264': firefoxH264Scenario,
  'firefox-switch': firefoxSwitchScenario,
};

// ---- main --------------------------------------------------------------------------------

async function dumpPages() {
  const pages = [];
  for (const { label, kind, page } of openedPages) {
    pages.push(
      await page
        .evaluate(async () => {
          const d = window.trioDemo;
          return {
            state: d.state,
            error: d.error,
            peerId: d.peerId,
            events: d.events.map((e) => e.type),
            consumers: d.consumerList(),
            refused: d.refused,
            inbound: await d.inboundStats(),
            outbound: await d.outboundStats(),
            samples: window.trioSampler?.samples.slice(-80) ?? null,
          };
        })
        .then((state) => ({ label, kind, ...state }))
        .catch((e) => ({ label, kind, error: String(e) })),
    );
  }
  return pages;
}

/** The version of every browser launched, by kind. */
async function versions() {
  const out = {};
  for (const [kind, launching] of browsers) {
    const browser = await launching.catch(() => null);
    if (browser) out[kind] = await browser.version();
  }
  return out;
}

async function closeBrowsers() {
  for (const launching of browsers.values()) {
    const browser = await launching.catch(() => null);
    await browser?.close().catch(() => {});
  }
}

async function main() {
  const guard = setTimeout(() => {
    process.stdout.write(`${JSON.stringify({ ok: false, error: 'driver timeout', console: consoleLog.slice(-80) })}\n`);
    process.exit(3);
  }, TIMEOUT_MS);
  const scenario = SCENARIOS[SCENARIO];
  if (!scenario) throw new Error(`unknown scenario ${SCENARIO}`);
  const started = Date.now();
  let result;
  try {
    const outcome = await scenario();
    const launched = await versions();
    result = {
      ok: true,
      scenario: SCENARIO,
      browser: Object.values(launched).join(', '),
      browsers: launched,
      ...outcome,
    };
  } catch (error) {
    result = {
      ok: false,
      scenario: SCENARIO,
      browsers: await versions(),
      error: String(error.message ?? error),
      step: error.step ?? null,
      details: error.details ?? null,
      stack: String(error.stack ?? ''),
      pages: await dumpPages(),
    };
  } finally {
    await closeBrowsers();
  }
  result.elapsedMs = Date.now() - started;
  result.console = consoleLog.slice(-80);
  clearTimeout(guard);
  closeControl();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error) => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: String(error.stack ?? error), console: consoleLog })}\n`);
  process.exit(2);
});
