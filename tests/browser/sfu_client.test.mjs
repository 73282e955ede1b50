// Unit tests of trio_sfu/web/src/sfu-client.mjs's signaling half, on Node's test runner with
// a fake WebSocket (no browser, no server): `node --test tests/browser/sfu_client.test.mjs`.
// tests/test_browser.py runs this file too.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SfuClient, SfuError, SignalingConnection } from '../../trio_sfu/web/src/sfu-client.mjs';

/** Enough of the browser's WebSocket: records what is sent, lets the test play the server. */
class FakeWebSocket extends EventTarget {
  static last = null;

  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.last = this;
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code = 1000, reason = '') {
    this.serverClose(code, reason);
  }

  // ---- the test's side ----
  serverOpen() {
    this.readyState = 1;
    this.dispatchEvent(new Event('open'));
  }

  serverSend(frame) {
    const event = new Event('message');
    event.data = typeof frame === 'string' ? frame : JSON.stringify(frame);
    this.dispatchEvent(event);
  }

  serverClose(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    const event = new Event('close');
    event.code = code;
    event.reason = reason;
    this.dispatchEvent(event);
  }
}

async function connected() {
  const opening = SignalingConnection.open('ws://sfu.test/ws', { WebSocketImpl: FakeWebSocket });
  const ws = FakeWebSocket.last;
  ws.serverOpen();
  return { connection: await opening, ws };
}

test('answers are matched to requests by requestId, whatever their order', async () => {
  const { connection, ws } = await connected();
  const first = connection.request('rtc:getRouterRtpCapabilities', { meetingId: 'm' });
  const second = connection.request('rtc:leave', { meetingId: 'm' });
  assert.deepEqual(
    ws.sent.map((f) => [f.type, f.requestId, f.data]),
    [
      ['rtc:getRouterRtpCapabilities', '1', { meetingId: 'm' }],
      ['rtc:leave', '2', { meetingId: 'm' }],
    ],
  );
  ws.serverSend({ type: 'rtc:left', requestId: '2', data: {} });
  ws.serverSend({ type: 'rtc:routerRtpCapabilities', requestId: '1', data: { rtpCapabilities: { codecs: [] } } });
  assert.deepEqual(await first, { rtpCapabilities: { codecs: [] } });
  assert.deepEqual(await second, {});
});

test('rtc:error rejects with an SfuError carrying the protocol code', async () => {
  const { connection, ws } = await connected();
  const request = connection.request('rtc:produce', { meetingId: 'm' });
  ws.serverSend({
    type: 'rtc:error',
    requestId: '1',
    request: 'rtc:produce',
    code: 'forbidden',
    error: 'the token does not allow publishing',
  });
  await assert.rejects(request, (error) => {
    assert.ok(error instanceof SfuError);
    assert.equal(error.code, 'forbidden');
    assert.equal(error.request, 'rtc:produce');
    assert.match(error.message, /^forbidden: the token does not allow publishing$/);
    return true;
  });
});

test('notifications are emitted by type and as "notification"; junk frames are ignored', async () => {
  const { connection, ws } = await connected();
  const byType = [];
  const all = [];
  connection.on('rtc:peerLeft', (data) => byType.push(data));
  connection.on('notification', (n) => all.push(n));
  ws.serverSend('not json');
  ws.serverSend('[1, 2]');
  ws.serverSend({ type: 'rtc:left', requestId: '99', data: {} }); // answers nothing pending
  ws.serverSend({ type: 'rtc:peerLeft', data: { peerId: 'p1' } });
  assert.deepEqual(byType, [{ peerId: 'p1' }]);
  assert.deepEqual(all, [{ type: 'rtc:peerLeft', data: { peerId: 'p1' } }]);
});

test('a closed socket rejects pending and later requests with code "closed"', async () => {
  const { connection, ws } = await connected();
  const pending = connection.request('rtc:join', { meetingId: 'm' });
  const closed = connection.once('close');
  ws.serverClose(4001, 'kicked');
  await assert.rejects(pending, { code: 'closed', request: 'rtc:join' });
  assert.deepEqual(await closed, { code: 4001, reason: 'kicked' });
  await assert.rejects(connection.request('rtc:leave', {}), { code: 'closed' });
});

test('no answer in time rejects with code "timeout" and a late answer is dropped', async () => {
  const { connection, ws } = await connected();
  await assert.rejects(connection.request('rtc:getStats', { id: 'x' }, { timeoutMs: 20 }), {
    code: 'timeout',
  });
  ws.serverSend({ type: 'rtc:stats', requestId: '1', data: { id: 'x', stats: [] } }); // no throw
});

test('a socket that never opens rejects with code "closed"', async () => {
  const opening = SignalingConnection.open('ws://sfu.test/ws', { WebSocketImpl: FakeWebSocket });
  FakeWebSocket.last.serverClose(1006, '');
  await assert.rejects(opening, { code: 'closed' });
});

test('the client closes its consumers when the server says so', async () => {
  const { connection, ws } = await connected();
  const client = new SfuClient(connection);
  const closedLocally = [];
  const fakeConsumer = (id, producerId, peerId) => ({
    id,
    producerId,
    appData: { peerId },
    closed: false,
    close() {
      this.closed = true;
      closedLocally.push(id);
    },
  });
  for (const c of [fakeConsumer('c1', 'p1', 'alice'), fakeConsumer('c2', 'p2', 'alice'), fakeConsumer('c3', 'p3', 'bob')]) {
    client.consumers.set(c.id, c);
  }
  const reasons = [];
  client.on('consumerclose', ({ consumer, reason }) => reasons.push([consumer.id, reason]));
  ws.serverSend({ type: 'rtc:consumerClosed', data: { consumerId: 'c1', producerId: 'p1', reason: 'producer_closed' } });
  ws.serverSend({ type: 'rtc:peerLeft', data: { peerId: 'alice' } });
  assert.deepEqual(closedLocally, ['c1', 'c2']);
  assert.deepEqual(reasons, [
    ['c1', 'producer_closed'],
    ['c2', 'peer_left'],
  ]);
  assert.deepEqual([...client.consumers.keys()], ['c3']);
  await assert.rejects(client.consume('p9'), { code: 'invalid_state' }); // not joined
});
