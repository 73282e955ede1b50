"""The signaling server: WebSocket sessions, rooms and peers, auth, admin API, metrics.

Signaling reaches media only through :class:`trio_sfu.engine.api.MediaEngine`; it holds
ids, never engine objects. The wire protocol is ``PROTOCOL.md`` (version 1).
"""
