"""PipeTransport: plain RTP/RTCP between two routers over one UDP socket pair.

mediasoup's PipeTransport: the link that carries a producer from the router where it was
published to another router (maybe in another worker process), so that the other
router's consumers can consume it (:mod:`trio_sfu.engine.pipe`). No ICE, no DTLS, no
SRTP: the two ends are routers on the same host or a trusted network, and each end only
takes datagrams from the address it was connected to. RTP and RTCP share the socket
(rtcp-mux, RFC 5761) and are told apart by the second byte.

Life cycle, as a :class:`~trio_sfu.engine.webrtc_transport.WebRtcTransport`'s::

    transport = PipeTransport(transport_id="p1", listen_ip="127.0.0.1", port_range=(...))
    await nursery.start(transport.run)      # binds the socket: transport.port is known
    transport.connect(remote_ip, remote_port)
    ...
    transport.close()                       # or cancel the owner's scope

It is a :class:`~trio_sfu.engine.plain_transport.PlainTransport` with rtcp-mux, without
comedia and SRTP (one packet path for both); only its ``connect(ip, port)`` differs. The
router drives it through the same small interface as a WebRtcTransport: ``on_rtp`` /
``on_rtcp`` callbacks for what arrives, :meth:`send_rtp_nowait` /
:meth:`send_rtcp_nowait` for what leaves, :meth:`stats`, :meth:`close` and ``on_closed``.
Sending never blocks: a datagram the kernel does not take at once (a full socket buffer)
is dropped and counted; on loopback that means the receiving end cannot keep up anyway.
"""

from __future__ import annotations

from typing import Any, final

from trio_sfu.engine.plain_transport import PlainTransport
from trio_sfu.engine.rtc_sockets import is_unspecified


@final
class PipeTransport(PlainTransport):
    """One end of a router-to-router pipe: a UDP socket, plain RTP and RTCP.

    ``listen_ip`` is where the socket is bound (a port of ``port_range``); the address the
    other end sends to is :attr:`ip` / :attr:`port`, where ``ip`` is ``announced_ip`` when
    ``listen_ip`` is 0.0.0.0 / :: (then required), else ``listen_ip``.
    """

    __slots__ = ()

    kind = "pipe"

    def __init__(
        self,
        *,
        transport_id: str,
        listen_ip: str,
        port_range: tuple[int, int],
        announced_ip: str | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            transport_id=transport_id,
            listen_ip=listen_ip,
            port_range=port_range,
            announced_ip=announced_ip if is_unspecified(listen_ip) else None,
            app_data=app_data,
        )

    def connect(  # type: ignore[override]
        self, ip: str, port: int
    ) -> None:
        """Set the other end's address: media goes there, and only datagrams from there
        are taken. Raises InvalidStateError when connected twice or closed,
        InvalidMessageError for a bad address, UnsupportedError for another IP family."""
        super().connect(ip=ip, port=port)
