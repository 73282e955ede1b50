// trio-sfu's browser client: mediasoup-client's Device and Transports over the trio-sfu
// WebSocket signaling protocol (PROTOCOL.md, version 1).
//
//   const client = await SfuClient.connect('ws://127.0.0.1:8080/ws');
//   client.on('rtc:newProducer', ({ producerId }) => client.consume(producerId));
//   const joined = await client.join({ meetingId, token, displayName });
//   const producer = await client.produce({ track, encodings, codec });
//   await client.pauseProducer(producer);          // local pause + rtc:pauseProducer
//   const consumer = await client.consume(producerId); // consume, then rtc:resumeConsumer
//
// Every request carries a fresh requestId and its promise settles with the answer that
// echoes it: the answer's `data` on success, an SfuError (`code` from PROTOCOL.md, or
// 'timeout' / 'closed' for local failures) otherwise. Notifications (frames without
// requestId) are emitted under their type ('rtc:peerJoined', ...) and as 'notification'.
// The client keeps its own books in step with the server: on rtc:consumerClosed,
// rtc:producerClosed and rtc:peerLeft the matching local consumers are closed and
// 'consumerclose' is emitted. 'close' is emitted once, when the WebSocket closes.

import { Device } from 'mediasoup-client';

/** An rtc:error answer, or a local failure ('timeout', 'closed', 'bad_answer'). */
export class SfuError extends Error {
  constructor(code, message, request = undefined) {
    super(`${code}: ${message}`);
    this.name = 'SfuError';
    this.code = code;
    this.request = request;
  }
}

/** A tiny event emitter: on() returns the function that removes the listener. */
export class Emitter {
  #listeners = new Map();

  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) {
      set = new Set();
      this.#listeners.set(type, set);
    }
    set.add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /** The next event of this type, as a promise (optionally only one that `filter` accepts). */
  once(type, filter = () => true) {
    return new Promise((resolve) => {
      const off = this.on(type, (data) => {
        if (filter(data)) {
          off();
          resolve(data);
        }
      });
    });
  }

  emit(type, data) {
    for (const listener of [...(this.#listeners.get(type) ?? [])]) {
      try {
        listener(data);
      } catch (error) {
        console.error(`listener of ${type} failed`, error);
      }
    }
  }
}

const DEFAULT_TIMEOUT_MS = 15000;

/**
 * One signaling WebSocket: requests matched to answers by requestId, notifications emitted.
 * Events: every notification type, 'notification' ({type, data}), 'close' ({code, reason}).
 */
export class SignalingConnection extends Emitter {
  #ws;
  #nextId = 1;
  #pending = new Map();
  closed = null;

  constructor(ws) {
    super();
    this.#ws = ws;
    ws.addEventListener('message', (event) => this.#onMessage(event.data));
    ws.addEventListener('close', (event) => this.#onClose(event.code, event.reason));
  }

  /** Open a connection; rejects with SfuError('closed') if the socket does not open. */
  static open(url, { timeoutMs = 10000, WebSocketImpl = globalThis.WebSocket } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocketImpl(url);
      const timer = setTimeout(() => {
        ws.close();
        reject(new SfuError('timeout', `no WebSocket connection to ${url} in ${timeoutMs} ms`));
      }, timeoutMs);
      const onClose = (event) => {
        clearTimeout(timer);
        reject(new SfuError('closed', `WebSocket ${url} closed (${event.code} ${event.reason})`));
      };
      ws.addEventListener('close', onClose);
      ws.addEventListener('open', () => {
        clearTimeout(timer);
        ws.removeEventListener('close', onClose);
        resolve(new SignalingConnection(ws));
      });
    });
  }

  /** Send a request; resolves with the answer's data, rejects with SfuError. */
  request(type, data = {}, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    if (this.closed) {
      return Promise.reject(new SfuError('closed', `signaling is closed (${this.closed.code})`, type));
    }
    const requestId = String(this.#nextId++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(requestId);
        reject(new SfuError('timeout', `no answer to ${type} in ${timeoutMs} ms`, type));
      }, timeoutMs);
      this.#pending.set(requestId, { type, resolve, reject, timer });
      this.#ws.send(JSON.stringify({ type, requestId, data }));
    });
  }

  close(code = 1000, reason = 'bye') {
    if (this.#ws.readyState <= 1) this.#ws.close(code, reason);
  }

  #onMessage(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.warn('signaling: a frame that is not JSON', text);
      return;
    }
    if (frame === null || typeof frame !== 'object' || typeof frame.type !== 'string') {
      console.warn('signaling: a frame that is not a message', frame);
      return;
    }
    if (typeof frame.requestId === 'string') {
      const pending = this.#pending.get(frame.requestId);
      if (!pending) return; // timed out earlier
      this.#pending.delete(frame.requestId);
      clearTimeout(pending.timer);
      if (frame.type === 'rtc:error') {
        pending.reject(new SfuError(frame.code ?? 'internal', frame.error ?? '', frame.request ?? pending.type));
      } else {
        pending.resolve(frame.data ?? {});
      }
      return;
    }
    if (frame.type === 'rtc:error') {
      console.warn('signaling: error without requestId', frame);
      this.emit('error', new SfuError(frame.code ?? 'internal', frame.error ?? '', frame.request));
      return;
    }
    const data = frame.data ?? {};
    this.emit(frame.type, data);
    this.emit('notification', { type: frame.type, data });
  }

  #onClose(code, reason) {
    if (this.closed) return;
    this.closed = { code, reason };
    for (const [, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(new SfuError('closed', `signaling closed (${code} ${reason})`, pending.type));
    }
    this.#pending.clear();
    this.emit('close', this.closed);
  }
}

/**
 * A peer in one meeting: the signaling connection, a loaded Device, one send and one recv
 * transport. Emits what the connection emits, plus 'consumerclose' ({consumer, reason}) and
 * 'transportstate' ({direction, state}).
 */
export class SfuClient extends Emitter {
  signaling;
  device = null;
  meetingId = null;
  peerId = null;
  joined = null;
  sendTransport = null;
  recvTransport = null;
  /** producerId -> local Producer (ours) */
  producers = new Map();
  /** consumerId -> local Consumer */
  consumers = new Map();
  /** producerId -> peerId, for the producers of others that we know of */
  producerOwners = new Map();
  #ready = null;

  constructor(signaling) {
    super();
    this.signaling = signaling;
    signaling.on('notification', ({ type, data }) => this.#onNotification(type, data));
    signaling.on('close', (closed) => {
      for (const consumer of this.consumers.values()) consumer.close();
      this.consumers.clear();
      this.sendTransport?.close();
      this.recvTransport?.close();
      this.emit('close', closed);
    });
  }

  static async connect(url, options = {}) {
    return new SfuClient(await SignalingConnection.open(url, options));
  }

  request(type, data = {}, options = {}) {
    return this.signaling.request(type, data, options);
  }

  #meeting(data = {}) {
    if (this.meetingId === null) throw new SfuError('not_joined', 'join a meeting first');
    return { meetingId: this.meetingId, ...data };
  }

  /**
   * rtc:join, then load the Device with the router's capabilities and create the transports
   * (`send` / `recv` false to skip one). Resolves with the rtc:joined data.
   */
  async join({ meetingId, token, displayName, send = true, recv = true }) {
    const data = { meetingId };
    if (token) data.token = token;
    if (displayName) data.displayName = displayName;
    const joined = await this.request('rtc:join', data);
    this.meetingId = meetingId;
    this.peerId = joined.peerId;
    this.joined = joined;
    for (const peer of joined.peers ?? []) {
      for (const producer of peer.producers ?? []) {
        this.producerOwners.set(producer.producerId, peer.peerId);
      }
    }
    this.#ready = this.#setUp(joined.iceServers ?? [], send, recv);
    await this.#ready;
    return joined;
  }

  async #setUp(iceServers, send, recv) {
    const { rtpCapabilities } = await this.request('rtc:getRouterRtpCapabilities', this.#meeting());
    this.device = typeof Device.factory === 'function' ? await Device.factory() : new Device();
    await this.device.load({ routerRtpCapabilities: rtpCapabilities });
    if (send) this.sendTransport = await this.#createTransport('send', iceServers);
    if (recv) this.recvTransport = await this.#createTransport('recv', iceServers);
  }

  async #createTransport(direction, iceServers) {
    const info = await this.request('rtc:createTransport', this.#meeting({ direction }));
    const options = {
      id: info.transportId,
      iceParameters: info.iceParameters,
      iceCandidates: info.iceCandidates,
      dtlsParameters: info.dtlsParameters,
      iceServers,
    };
    if (info.sctpParameters) options.sctpParameters = info.sctpParameters;
    const transport =
      direction === 'send'
        ? this.device.createSendTransport(options)
        : this.device.createRecvTransport(options);
    transport.on('connect', ({ dtlsParameters }, callback, errback) => {
      this.request(
        'rtc:connectTransport',
        this.#meeting({ transportId: transport.id, dtlsParameters }),
      ).then(() => callback(), errback);
    });
    if (direction === 'send') {
      transport.on('produce', ({ kind, rtpParameters, appData }, callback, errback) => {
        this.request(
          'rtc:produce',
          this.#meeting({ transportId: transport.id, kind, rtpParameters, appData }),
        ).then(({ producerId }) => callback({ id: producerId }), errback);
      });
    }
    transport.on('connectionstatechange', (state) => {
      this.emit('transportstate', { direction, state, transportId: transport.id });
    });
    return transport;
  }

  /** Publish a track: mediasoup-client's produce() options (track, encodings, codec, ...). */
  async produce(options) {
    await this.#ready;
    if (!this.sendTransport) throw new SfuError('invalid_state', 'joined without a send transport');
    const producer = await this.sendTransport.produce(options);
    this.producers.set(producer.id, producer);
    producer.observer.on('close', () => this.producers.delete(producer.id));
    return producer;
  }

  /** Pause locally (the track stops being sent) and on the server (rtc:pauseProducer). */
  async pauseProducer(producer) {
    producer.pause();
    await this.request('rtc:pauseProducer', this.#meeting({ producerId: producer.id }));
  }

  async resumeProducer(producer) {
    producer.resume();
    await this.request('rtc:resumeProducer', this.#meeting({ producerId: producer.id }));
  }

  async closeProducer(producer) {
    producer.close();
    await this.request('rtc:closeProducer', this.#meeting({ producerId: producer.id }));
  }

  /**
   * Subscribe to a producer: rtc:consume (paused), the local Consumer, then
   * rtc:resumeConsumer unless `paused`. The consumer's appData holds peerId and
   * producerPaused.
   */
  async consume(producerId, { paused = false, appData = {} } = {}) {
    await this.#ready;
    if (!this.recvTransport) throw new SfuError('invalid_state', 'joined without a recv transport');
    const answer = await this.request(
      'rtc:consume',
      this.#meeting({ producerId, rtpCapabilities: this.device.recvRtpCapabilities, paused: true }),
    );
    const consumer = await this.recvTransport.consume({
      id: answer.consumerId,
      producerId: answer.producerId,
      kind: answer.kind,
      rtpParameters: answer.rtpParameters,
      appData: {
        ...appData,
        peerId: this.producerOwners.get(producerId) ?? null,
        type: answer.type,
        producerPaused: answer.producerPaused,
      },
    });
    this.consumers.set(consumer.id, consumer);
    consumer.observer.on('close', () => this.consumers.delete(consumer.id));
    if (!paused) {
      await this.request('rtc:resumeConsumer', this.#meeting({ consumerId: consumer.id }));
    }
    return consumer;
  }

  async pauseConsumer(consumer) {
    consumer.pause();
    await this.request('rtc:pauseConsumer', this.#meeting({ consumerId: consumer.id }));
  }

  async resumeConsumer(consumer) {
    await this.request('rtc:resumeConsumer', this.#meeting({ consumerId: consumer.id }));
    consumer.resume();
  }

  async closeConsumer(consumer) {
    this.#closeConsumer(consumer, 'closed_by_client');
    await this.request('rtc:closeConsumer', this.#meeting({ consumerId: consumer.id }));
  }

  /** rtc:setPreferredLayers; resolves with {spatialLayer, temporalLayer} now in force. */
  async setPreferredLayers(consumerId, spatialLayer, temporalLayer = undefined) {
    const data = { consumerId, spatialLayer };
    if (temporalLayer !== undefined && temporalLayer !== null) data.temporalLayer = temporalLayer;
    const answer = await this.request('rtc:setPreferredLayers', this.#meeting(data));
    return answer.preferredLayers;
  }

  /** The server's stats of one of our transports, producers or consumers. */
  async getServerStats(id) {
    const answer = await this.request('rtc:getStats', this.#meeting({ id }));
    return answer.stats;
  }

  async restartIce(transport) {
    const { iceParameters } = await this.request(
      'rtc:restartIce',
      this.#meeting({ transportId: transport.id }),
    );
    await transport.restartIce({ iceParameters });
  }

  /** rtc:leave, then close everything local; the WebSocket stays open for another join. */
  async leave() {
    if (this.meetingId === null) return;
    try {
      await this.request('rtc:leave', this.#meeting());
    } finally {
      this.#closeLocal();
    }
  }

  /** Close the WebSocket (the server treats it as rtc:leave) and everything local. */
  close() {
    this.#closeLocal();
    this.signaling.close();
  }

  #closeLocal() {
    for (const consumer of [...this.consumers.values()]) this.#closeConsumer(consumer, 'left');
    for (const producer of [...this.producers.values()]) producer.close();
    this.sendTransport?.close();
    this.recvTransport?.close();
    this.sendTransport = this.recvTransport = null;
    this.meetingId = this.peerId = this.joined = null;
    this.#ready = null;
    this.producerOwners.clear();
  }

  #closeConsumer(consumer, reason) {
    if (!consumer.closed) consumer.close();
    if (this.consumers.delete(consumer.id)) this.emit('consumerclose', { consumer, reason });
  }

  #onNotification(type, data) {
    switch (type) {
      case 'rtc:newProducer':
        this.producerOwners.set(data.producerId, data.peerId);
        break;
      case 'rtc:peerJoined':
        for (const producer of data.producers ?? []) {
          this.producerOwners.set(producer.producerId, data.peerId);
        }
        break;
      case 'rtc:consumerClosed': {
        const consumer = this.consumers.get(data.consumerId);
        if (consumer) this.#closeConsumer(consumer, data.reason ?? 'closed');
        break;
      }
      case 'rtc:producerClosed':
        this.#closeConsumersOf((c) => c.producerId === data.producerId, 'producer_closed');
        this.producerOwners.delete(data.producerId);
        break;
      case 'rtc:peerLeft':
        this.#closeConsumersOf((c) => c.appData.peerId === data.peerId, 'peer_left');
        for (const [producerId, peerId] of this.producerOwners) {
          if (peerId === data.peerId) this.producerOwners.delete(producerId);
        }
        break;
      case 'rtc:producerPaused':
      case 'rtc:producerResumed':
        for (const consumer of this.consumers.values()) {
          if (consumer.producerId === data.producerId) {
            consumer.appData.producerPaused = type === 'rtc:producerPaused';
          }
        }
        break;
      case 'rtc:roomClosed':
        this.#closeLocal();
        break;
      default:
        break;
    }
    this.emit(type, data);
    this.emit('notification', { type, data });
  }

  #closeConsumersOf(predicate, reason) {
    for (const consumer of [...this.consumers.values()]) {
      if (predicate(consumer)) this.#closeConsumer(consumer, reason);
    }
  }
}

/** The signaling URL of the page's own server: ws(s)://<host>/ws. */
export function signalingUrlFor(location = globalThis.location) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}
