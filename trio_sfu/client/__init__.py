"""A Trio WebRTC client: the client side of ICE, DTLS and SRTP, for tests, bots and load.

:func:`open_client_transport` connects to a server transport described by mediasoup v3
``iceParameters`` / ``iceCandidates`` / ``dtlsParameters`` (this server's or any ICE-lite
server's) and sends and receives RTP and RTCP over it.
"""

from __future__ import annotations

from trio_sfu.client.transport import (
    ClientTransport,
    ClientTransportError,
    open_client_transport,
    pick_candidate,
)

__all__ = ["ClientTransport", "ClientTransportError", "open_client_transport", "pick_candidate"]
