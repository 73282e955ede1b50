// The demo page: join a meeting, publish camera and microphone (simulcast video), see and
// hear everyone else, with live stats per video.
//
// In --dev mode (<body data-dev="true">) the token comes from the server's /dev/token;
// otherwise the page shows a token field. window.trioDemo exposes the page's state (events,
// timings, consumers, stats) for the browser tests and for poking around in the console.

import { SfuClient, signalingUrlFor } from './sfu-client.mjs';

const $ = (id) => document.getElementById(id);
const DEV = document.body.dataset.dev === 'true';
const STATS_INTERVAL_MS = 1000;
/** Simulcast: three spatial layers of the 1280x720 camera, three temporal layers each. */
const VIDEO_ENCODINGS = [
  { scaleResolutionDownBy: 4, maxBitrate: 100_000, scalabilityMode: 'L1T3' },
  { scaleResolutionDownBy: 2, maxBitrate: 300_000, scalabilityMode: 'L1T3' },
  { scaleResolutionDownBy: 1, maxBitrate: 1_500_000, scalabilityMode: 'L1T3' },
];
const LAYER_NAMES = ['180p (r0)', '360p (r1)', '720p (r2)'];

const demo = {
  /** 'idle' | 'joining' | 'joined' | 'leaving' | 'left' | 'error' */
  state: 'idle',
  error: null,
  meetingId: null,
  peerId: null,
  codec: null,
  /** Every notification: {t (performance.now()), type, data}. */
  events: [],
  /** performance.now() marks: joinStart (click), joined (rtc:joined), published, firstRemoteFrame. */
  timings: { joinStart: null, joined: null, published: null, firstRemoteFrame: null },
  /** [ms since the Join click, what happened]: the join's steps, for timing and debugging. */
  timeline: [],
  client: null,
  /** Our producers by kind, and the local MediaStream. */
  local: { audio: null, video: null, stream: null },
  /** Every consumer this page made (closed ones too), in order. */
  allConsumers: [],
  /** peerId -> tile (ours is 'local'). */
  tiles: new Map(),
  /** Consumes the server refused as this browser cannot receive them (`unsupported`, e.g.
   * H264 in a Firefox without OpenH264): {producerId, peerId, code, message}. */
  refused: [],
};
window.trioDemo = demo;

// ---- page setup ------------------------------------------------------------------------

function setUp() {
  $('bundle-missing').hidden = true;
  const params = new URLSearchParams(location.search);
  $('meeting').value = params.get('meeting') ?? $('meeting').value;
  $('name').value = params.get('name') ?? `guest-${Math.random().toString(36).slice(2, 6)}`;
  if (params.get('codec')) $('codec').value = params.get('codec').toUpperCase();
  $('token-field').hidden = DEV;
  if (!DEV) {
    $('token').required = true;
    $('token').value = params.get('token') ?? '';
  }
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    join().catch(fail);
  });
  $('leave').addEventListener('click', () => leave().catch(fail));
  $('toggle-mic').addEventListener('click', () => toggle('audio').catch(fail));
  $('toggle-cam').addEventListener('click', () => toggle('video').catch(fail));
  window.addEventListener('pagehide', () => demo.client?.close());
  setInterval(() => updateAllStats().catch((e) => console.warn('stats', e)), STATS_INTERVAL_MS);
  setStatus(DEV ? 'dev mode: tokens are minted by the server' : 'enter a token to join');
}

function setStatus(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.className = `status ${kind}`;
}

function showMessage(text) {
  $('message').textContent = text;
  $('message').hidden = !text;
}

function fail(error) {
  console.error(error);
  demo.error = { code: error.code ?? error.name ?? 'error', message: String(error.message ?? error) };
  demo.state = 'error';
  showMessage(`${demo.error.code}: ${demo.error.message}`);
  setStatus('error', 'error');
  setJoined(false);
}

function setJoined(joined) {
  for (const id of ['meeting', 'name', 'token', 'codec', 'join']) $(id).disabled = joined;
  $('leave').disabled = !joined;
  $('controls').hidden = !joined;
}

// ---- joining and leaving ---------------------------------------------------------------

async function fetchDevToken(meetingId, userId, name) {
  const query = new URLSearchParams({ meeting: meetingId, user: userId, name });
  const response = await fetch(`/dev/token?${query}`);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw Object.assign(new Error(body.error ?? `HTTP ${response.status}`), { code: 'dev_token' });
  }
  return body.token;
}

function userIdFor(name) {
  const slug = name.toLowerCase().replace(/[^a-z0-9_.-]+/g, '-').slice(0, 40) || 'user';
  return `${slug}-${Math.random().toString(36).slice(2, 8)}`;
}

async function join() {
  if (demo.state === 'joining' || demo.state === 'joined') return;
  const meetingId = $('meeting').value.trim();
  const name = $('name').value.trim();
  const codecName = $('codec').value;
  Object.assign(demo, { state: 'joining', error: null, meetingId, codec: codecName });
  demo.timings = { joinStart: performance.now(), joined: null, published: null, firstRemoteFrame: null };
  demo.timeline = [];
  showMessage('');
  setJoined(true);
  setStatus('joining…');

  const token = DEV ? await fetchDevToken(meetingId, userIdFor(name), name) : $('token').value.trim();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
  });
  demo.local.stream = stream;
  const localTile = ensureTile('local', `${name} (you)`);
  localTile.el.classList.add('local');
  localTile.video.srcObject = stream;

  const client = await SfuClient.connect(signalingUrlFor());
  demo.client = client;
  client.on('notification', onNotification);
  client.on('consumerclose', ({ consumer }) => onConsumerClose(consumer));
  client.on('transportstate', ({ direction, state }) => {
    mark(`${direction} transport ${state}`);
    console.info(`${direction} transport ${state}`);
    if (state === 'failed') showMessage(`the ${direction} transport failed (ICE/DTLS)`);
  });
  client.on('close', ({ code, reason }) => {
    if (demo.state === 'joined' || demo.state === 'joining') {
      fail(Object.assign(new Error(`signaling closed (${code} ${reason})`), { code: 'closed' }));
    }
  });

  const joined = await client.join({ meetingId, token, displayName: name });
  demo.peerId = joined.peerId;
  demo.timings.joined = performance.now();
  mark('joined');
  setStatus(`joined ${meetingId} as ${name}`, 'ok');

  // Subscribe to what is there already while our own media is being published.
  const consuming = [];
  for (const peer of joined.peers ?? []) {
    ensureTile(peer.peerId, peer.displayName || peer.userId);
    for (const producer of peer.producers ?? []) {
      consuming.push(consumeProducer(producer.producerId, peer.peerId));
    }
  }

  const codec = pickVideoCodec(client.device, codecName);
  const [audioTrack] = stream.getAudioTracks();
  const [videoTrack] = stream.getVideoTracks();
  mark('produce audio');
  demo.local.audio = await client.produce({
    track: audioTrack,
    codecOptions: { opusStereo: true, opusDtx: true, opusFec: true },
    stopTracks: false,
    appData: { source: 'mic' },
  });
  mark('produced audio');
  demo.local.video = await client.produce({
    track: videoTrack,
    encodings: VIDEO_ENCODINGS,
    codecOptions: { videoGoogleStartBitrate: 1000 },
    codec,
    stopTracks: false,
    appData: { source: 'camera' },
  });
  demo.timings.published = performance.now();
  mark('produced video');
  await Promise.allSettled(consuming);
  if (demo.state === 'joining') demo.state = 'joined';
}

/** The router's codec of that name that this browser can send (H264: baseline, pm 1). */
function pickVideoCodec(device, name) {
  const mime = `video/${name}`.toLowerCase();
  const codecs = device.rtpCapabilities.codecs.filter((c) => c.mimeType.toLowerCase() === mime);
  const score = (c) =>
    (c.parameters?.['packetization-mode'] === 1 ? 2 : 0) +
    (String(c.parameters?.['profile-level-id'] ?? '').startsWith('42e0') ? 1 : 0);
  codecs.sort((a, b) => score(b) - score(a));
  if (codecs.length === 0) {
    throw Object.assign(new Error(`this browser and the server have no ${name} in common`), {
      code: 'unsupported',
    });
  }
  return codecs[0];
}

async function leave() {
  const client = demo.client;
  demo.state = 'leaving';
  try {
    await client?.leave();
  } finally {
    client?.close();
    demo.client = null;
    for (const track of demo.local.stream?.getTracks() ?? []) track.stop();
    demo.local = { audio: null, video: null, stream: null };
    for (const peerId of [...demo.tiles.keys()]) removeTile(peerId);
    demo.state = 'left';
    setJoined(false);
    setStatus('left the meeting');
  }
}

async function toggle(kind) {
  const producer = demo.local[kind];
  if (!producer || !demo.client) return;
  const button = $(kind === 'audio' ? 'toggle-mic' : 'toggle-cam');
  button.disabled = true;
  try {
    if (producer.paused) await demo.client.resumeProducer(producer);
    else await demo.client.pauseProducer(producer);
  } finally {
    button.disabled = false;
  }
  const off = producer.paused;
  button.setAttribute('aria-pressed', String(off));
  if (kind === 'audio') button.textContent = off ? 'Unmute microphone' : 'Mute microphone';
  else button.textContent = off ? 'Start camera' : 'Stop camera';
  if (kind === 'video') demo.tiles.get('local').badge.hidden = !off;
}

// ---- remote media ----------------------------------------------------------------------

async function consumeProducer(producerId, peerId) {
  let consumer;
  try {
    consumer = await demo.client.consume(producerId);
  } catch (error) {
    if (error.code !== 'unsupported') throw error;
    // This browser cannot receive that producer's codec: say so on the tile, keep the rest.
    demo.refused.push({ producerId, peerId, code: error.code, message: String(error.message ?? error) });
    const note = ensureTile(peerId).note;
    note.textContent = `not playable in this browser: ${error.message ?? error}`;
    note.hidden = false;
    console.warn(`consume ${producerId} refused:`, error.message ?? error);
    return null;
  }
  demo.allConsumers.push(consumer);
  const tile = ensureTile(peerId);
  tile.consumers[consumer.kind] = consumer;
  const element = consumer.kind === 'video' ? tile.video : tile.audio;
  element.srcObject = new MediaStream([consumer.track]);
  element.play().catch(() => {}); // autoplay rules: video is muted; audio follows the click
  if (consumer.kind === 'video') {
    tile.badge.hidden = !consumer.appData.producerPaused;
    tile.select.hidden = consumer.appData.type !== 'simulcast';
    watchFirstFrame(tile.video);
  }
  return consumer;
}

function watchFirstFrame(video) {
  const first = () => {
    if (demo.timings.firstRemoteFrame === null) {
      demo.timings.firstRemoteFrame = performance.now();
      mark('first remote frame');
    }
  };
  if ('requestVideoFrameCallback' in video) video.requestVideoFrameCallback(first);
  video.addEventListener('loadeddata', first, { once: true });
}

function mark(what) {
  demo.timeline.push([Math.round(performance.now() - (demo.timings.joinStart ?? 0)), what]);
}

function onConsumerClose(consumer) {
  const tile = demo.tiles.get(consumer.appData.peerId);
  if (!tile || tile.consumers[consumer.kind] !== consumer) return;
  tile.consumers[consumer.kind] = null;
  (consumer.kind === 'video' ? tile.video : tile.audio).srcObject = null;
  tile.prev[consumer.kind] = null;
}

function onNotification({ type, data }) {
  demo.events.push({ t: performance.now(), type, data });
  switch (type) {
    case 'rtc:peerJoined':
      ensureTile(data.peerId, data.displayName || data.userId);
      break;
    case 'rtc:newProducer':
      consumeProducer(data.producerId, data.peerId).catch(fail);
      break;
    case 'rtc:peerLeft':
      removeTile(data.peerId);
      break;
    case 'rtc:producerPaused':
    case 'rtc:producerResumed': {
      const tile = demo.tiles.get(data.peerId);
      if (tile && tile.consumers.video?.producerId === data.producerId) {
        tile.badge.hidden = type === 'rtc:producerResumed';
      }
      break;
    }
    case 'rtc:consumerLayersChanged':
      for (const tile of demo.tiles.values()) {
        if (tile.consumers.video?.id === data.consumerId) {
          tile.layer = { spatial: data.spatialLayer, temporal: data.temporalLayer };
        }
      }
      break;
    case 'rtc:roomClosed':
      showMessage(`the meeting was closed (${data.reason})`);
      demo.state = 'left';
      break;
    default:
      break;
  }
}

// ---- tiles -----------------------------------------------------------------------------

function ensureTile(peerId, label = undefined) {
  let tile = demo.tiles.get(peerId);
  if (!tile) {
    const el = $('tile-template').content.firstElementChild.cloneNode(true);
    el.dataset.peerId = peerId;
    tile = {
      peerId,
      el,
      video: el.querySelector('video'),
      audio: el.querySelector('audio'),
      badge: el.querySelector('.badge'),
      note: el.querySelector('.note'),
      label: el.querySelector('.label'),
      select: el.querySelector('.layers'),
      statsEl: el.querySelector('.stats'),
      consumers: { audio: null, video: null },
      prev: { audio: null, video: null },
      layer: null,
      preferred: null,
    };
    tile.select.addEventListener('change', () => setLayer(tile).catch(fail));
    demo.tiles.set(peerId, tile);
    if (peerId === 'local') $('grid').prepend(el);
    else $('grid').append(el);
  }
  if (label) tile.label.textContent = label;
  else if (!tile.label.textContent) tile.label.textContent = peerId;
  return tile;
}

function removeTile(peerId) {
  const tile = demo.tiles.get(peerId);
  if (!tile) return;
  tile.video.srcObject = null;
  tile.audio.srcObject = null;
  tile.el.remove();
  demo.tiles.delete(peerId);
}

async function setLayer(tile) {
  const consumer = tile.consumers.video;
  if (!consumer || !demo.client) return;
  tile.preferred = await demo.client.setPreferredLayers(consumer.id, Number(tile.select.value));
}

// ---- stats -----------------------------------------------------------------------------

function pick(report, predicate) {
  let found = null;
  report.forEach((s) => {
    if (!found && predicate(s)) found = s;
  });
  return found;
}

function selectedPair(report) {
  const transport = pick(report, (s) => s.type === 'transport' && s.selectedCandidatePairId);
  if (transport) return report.get(transport.selectedCandidatePairId) ?? null;
  return pick(report, (s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
}

function rate(now, before, field) {
  if (!before || !now) return null;
  const seconds = (now.timestamp - before.timestamp) / 1000;
  return seconds > 0 ? ((now[field] - before[field]) * 8) / seconds : null;
}

const kbps = (bits) => (bits === null ? '–' : `${Math.round(bits / 1000)} kbit/s`);
const ms = (seconds) => (seconds == null ? '–' : `${Math.round(seconds * 1000)} ms`);

/** Inbound stats of one consumer, as the tests read them. */
async function inboundOf(consumer) {
  const report = await consumer.getStats();
  const inbound = pick(report, (s) => s.type === 'inbound-rtp' && s.kind === consumer.kind);
  const codec = inbound?.codecId ? report.get(inbound.codecId) : null;
  return { inbound, codec, pair: selectedPair(report) };
}

async function remoteLines(tile) {
  const lines = [];
  for (const kind of ['video', 'audio']) {
    const consumer = tile.consumers[kind];
    if (!consumer || consumer.closed) continue;
    const { inbound, codec, pair } = await inboundOf(consumer);
    if (!inbound) {
      lines.push(`${kind}: waiting for media`);
      continue;
    }
    const before = tile.prev[kind];
    tile.prev[kind] = inbound;
    const received = inbound.packetsReceived - (before?.packetsReceived ?? 0);
    const lost = inbound.packetsLost - (before?.packetsLost ?? 0);
    const loss = received + lost > 0 ? `${((100 * lost) / (received + lost)).toFixed(1)}%` : '–';
    const mime = codec?.mimeType?.split('/')[1] ?? '';
    let line = `${kind} ${mime}: ${kbps(rate(inbound, before, 'bytesReceived'))}, loss ${loss}, rtt ${ms(pair?.currentRoundTripTime)}`;
    if (kind === 'video') {
      const height = inbound.frameHeight ?? 0;
      const spatial = tile.layer?.spatial ?? (height >= 720 ? 2 : height >= 360 ? 1 : height ? 0 : null);
      const layer = spatial === null ? '–' : (LAYER_NAMES[spatial] ?? `L${spatial}`);
      const seconds = before ? (inbound.timestamp - before.timestamp) / 1000 : 0;
      const fps = seconds > 0 ? Math.round((inbound.framesDecoded - before.framesDecoded) / seconds) : 0;
      line += `\n  layer ${layer}, ${inbound.frameWidth ?? 0}x${height} @ ${fps} fps`;
    }
    lines.push(line);
  }
  return lines;
}

async function localLines(tile) {
  const lines = [];
  for (const kind of ['video', 'audio']) {
    const producer = demo.local[kind];
    if (!producer || producer.closed) continue;
    const report = await producer.getStats();
    const outbound = [];
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === kind) outbound.push(s);
    });
    const remote = pick(report, (s) => s.type === 'remote-inbound-rtp' && s.kind === kind);
    const rtt = remote?.roundTripTime ?? selectedPair(report)?.currentRoundTripTime;
    const total = {
      timestamp: outbound[0]?.timestamp ?? 0,
      bytesSent: outbound.reduce((sum, s) => sum + s.bytesSent, 0),
    };
    const before = tile.prev[kind];
    tile.prev[kind] = total;
    const loss = remote?.fractionLost == null ? '–' : `${(remote.fractionLost * 100).toFixed(1)}%`;
    let line = `${kind} sent: ${kbps(rate(total, before, 'bytesSent'))}, loss ${loss}, rtt ${ms(rtt)}`;
    if (producer.paused) line += ' (paused)';
    if (kind === 'video') {
      const layers = outbound
        .filter((s) => s.frameWidth)
        .sort((a, b) => a.frameWidth - b.frameWidth)
        .map((s) => `${s.rid ?? '?'} ${s.frameWidth}x${s.frameHeight}`);
      line += `\n  layers ${layers.join(', ') || '–'}`;
    }
    lines.push(line);
  }
  return lines;
}

async function updateAllStats() {
  for (const tile of [...demo.tiles.values()]) {
    const lines = tile.peerId === 'local' ? await localLines(tile) : await remoteLines(tile);
    tile.statsEl.textContent = lines.join('\n');
  }
}

// ---- hooks for tests -------------------------------------------------------------------

/** Every consumer made so far: ids, kind, owner and state (closed ones too). */
demo.consumerList = () =>
  demo.allConsumers.map((c) => ({
    id: c.id,
    producerId: c.producerId,
    peerId: c.appData.peerId,
    kind: c.kind,
    closed: c.closed,
    producerPaused: c.appData.producerPaused,
  }));

/** The inbound-rtp stats of every open consumer. */
demo.inboundStats = async () => {
  const out = [];
  for (const consumer of demo.client?.consumers.values() ?? []) {
    const { inbound, codec, pair } = await inboundOf(consumer);
    out.push({
      consumerId: consumer.id,
      producerId: consumer.producerId,
      peerId: consumer.appData.peerId,
      kind: consumer.kind,
      mimeType: codec?.mimeType ?? null,
      framesDecoded: inbound?.framesDecoded ?? 0,
      frameWidth: inbound?.frameWidth ?? 0,
      frameHeight: inbound?.frameHeight ?? 0,
      packetsReceived: inbound?.packetsReceived ?? 0,
      packetsLost: inbound?.packetsLost ?? 0,
      bytesReceived: inbound?.bytesReceived ?? 0,
      rtt: pair?.currentRoundTripTime ?? null,
    });
  }
  return out;
};

/** The outbound-rtp stats of our producers: per kind, one entry per simulcast stream. */
demo.outboundStats = async () => {
  const out = {};
  for (const kind of ['audio', 'video']) {
    const producer = demo.local[kind];
    if (!producer) continue;
    const report = await producer.getStats();
    if (kind === 'video') {
      // The send-side bandwidth estimate of the send transport (Chromium: GoogCC).
      out.availableOutgoingBitrate = selectedPair(report)?.availableOutgoingBitrate ?? null;
    }
    out[kind] = [];
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === kind) {
        out[kind].push({
          rid: s.rid ?? null,
          frameWidth: s.frameWidth ?? 0,
          framesEncoded: s.framesEncoded ?? 0,
          packetsSent: s.packetsSent ?? 0,
          bytesSent: s.bytesSent ?? 0,
          qualityLimitationReason: s.qualityLimitationReason ?? null,
        });
      }
    });
  }
  return out;
};

setUp();
