// Drives headless Chromium through the demo page for one scenario; prints one JSON line.
//
// Started by tests/browser/run.py (inside a loopback-only network namespace) with:
//   TRIO_SFU_URL          the server, http://127.0.0.1:<port>
//   TRIO_SFU_ADMIN_TOKEN  the admin API's bearer token
//   TRIO_SFU_WEB_DIR      trio_sfu/web (playwright-core is in its node_modules)
//   TRIO_SFU_SCENARIO     vp8 | h264 | mute | leave | join
//   TRIO_SFU_RUNS         joins to time (join)
//   TRIO_SFU_CHROMIUM     the browser, /usr/bin/chromium (never a downloaded one)
//   TRIO_SFU_TIMEOUT_MS   the bound on the whole run
//   TRIO_SFU_SCREENSHOT   optional: a PNG of Bob's page at the end of vp8/h264
//
// Every step waits with a deadline; on failure the JSON says which step, with the pages'
// state, getStats excerpts and console output, so a failure reads like webrtc-internals.

import { createRequire } from 'node:module';

const env = process.env;
const require = createRequire(`${env.TRIO_SFU_WEB_DIR}/package.json`);
const { chromium } = require('playwright-core');

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

// ---- pages -------------------------------------------------------------------------------

async function openPage(browser, label) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => consoleLog.push(`[${label}] ${m.type()}: ${m.text()}`.slice(0, 500)));
  page.on('pageerror', (e) => consoleLog.push(`[${label}] pageerror: ${e.message}`.slice(0, 500)));
  const response = await page.goto(`${BASE}/`, { waitUntil: 'load' });
  if (!response || response.status() !== 200) {
    throw new StepFailed('open', `GET / answered ${response?.status()}`);
  }
  await page.waitForFunction(() => window.trioDemo !== undefined, null, { timeout: 10000 });
  return { label, page, context };
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

/** Two pages publish camera + microphone with `codec` and decode each other. */
async function twoPeers(browser, codec) {
  const meeting = meetingId();
  const a = await join(await openPage(browser, 'alice'), { meeting, name: 'alice', codec });
  const b = await join(await openPage(browser, 'bob'), { meeting, name: 'bob', codec });
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

async function mediaScenario(browser, codec) {
  const { meeting, a, b } = await twoPeers(browser, codec);
  const [alice, bob] = await Promise.all([pageReport(a, b), pageReport(b, a)]);
  if (env.TRIO_SFU_SCREENSHOT) await b.page.screenshot({ path: env.TRIO_SFU_SCREENSHOT, fullPage: true });
  const layers = codec === 'VP8' ? await layerPicker(b, a) : null;
  return { meeting, codec, pages: { alice, bob }, layers };
}

/** Bob picks 180p for Alice's video in the demo's layer picker, then auto again. */
async function layerPicker(p, from) {
  const select = `.tile[data-peer-id="${from.peerId}"] select.layers`;
  const widthIs = (width, step) =>
    until(
      step,
      async () => {
        const video = pick(await inbound(p), 'video', from.peerId);
        return { done: video?.frameWidth === width, frameWidth: video?.frameWidth };
      },
      { timeoutMs: 15000 },
    );
  const preferred = () =>
    p.page.evaluate((peerId) => window.trioDemo.tiles.get(peerId).preferred, from.peerId);
  await p.page.selectOption(select, '0');
  const low = await widthIs(320, `${p.label} picks r0`);
  const lowPreferred = await preferred();
  await p.page.selectOption(select, '2');
  const high = await widthIs(1280, `${p.label} picks auto`);
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

async function muteScenario(browser) {
  const { meeting, a, b } = await twoPeers(browser, 'VP8');
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

async function leaveScenario(browser) {
  const { meeting, a, b } = await twoPeers(browser, 'VP8');
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
async function joinScenario(browser) {
  const runs = [];
  for (let i = 0; i < RUNS; i += 1) {
    const meeting = meetingId();
    const a = await join(await openPage(browser, `alice${i}`), { meeting, name: 'alice', codec: 'VP8' });
    const b = await openPage(browser, `bob${i}`);
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

const SCENARIOS = {
  vp8: (browser) => mediaScenario(browser, 'VP8'),
  h264: (browser) => mediaScenario(browser, 'H264'),
  mute: muteScenario,
  leave: leaveScenario,
  join: joinScenario,
};

// ---- main --------------------------------------------------------------------------------

async function dumpPages(browser) {
  const pages = [];
  for (const context of browser.contexts()) {
    for (const page of context.pages()) {
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
              inbound: await d.inboundStats(),
              outbound: await d.outboundStats(),
            };
          })
          .catch((e) => ({ error: String(e) })),
      );
    }
  }
  return pages;
}

async function main() {
  const guard = setTimeout(() => {
    process.stdout.write(`${JSON.stringify({ ok: false, error: 'driver timeout', console: consoleLog.slice(-80) })}\n`);
    process.exit(3);
  }, TIMEOUT_MS);
  const scenario = SCENARIOS[SCENARIO];
  if (!scenario) throw new Error(`unknown scenario ${SCENARIO}`);
  const started = Date.now();
  const browser = await chromium.launch({
    executablePath: env.TRIO_SFU_CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: 30000,
  });
  let result;
  try {
    result = { ok: true, scenario: SCENARIO, browser: browser.version(), ...(await scenario(browser)) };
  } catch (error) {
    result = {
      ok: false,
      scenario: SCENARIO,
      error: String(error.message ?? error),
      step: error.step ?? null,
      details: error.details ?? null,
      stack: String(error.stack ?? ''),
      pages: await dumpPages(browser),
    };
  } finally {
    await browser.close().catch(() => {});
  }
  result.elapsedMs = Date.now() - started;
  result.console = consoleLog.slice(-80);
  clearTimeout(guard);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error) => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: String(error.stack ?? error), console: consoleLog })}\n`);
  process.exit(2);
});
