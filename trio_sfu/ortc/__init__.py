"""ORTC: mediasoup v3's parameter objects and codec negotiation, as pure functions.

* :mod:`trio_sfu.ortc.types`: the parameter objects (their JSON is mediasoup's).
* :mod:`trio_sfu.ortc.negotiation`: router capabilities, producer mapping, consumable and
  consumer parameters, the transport-wide CNAME rule.
* :mod:`trio_sfu.ortc.h264`: H.264 profile-level-id parsing and matching (RFC 6184).
* :mod:`trio_sfu.ortc.plain`: parameters for tools that are not browsers (ffmpeg, a
  recorder) on a PlainTransport.

Sans-IO: no trio import, no clocks, no sockets.
"""
