"""ORTC: mediasoup v3's parameter objects and codec negotiation, as pure functions.

:mod:`trio_sfu.ortc.types` holds the parameter objects (their JSON is mediasoup's).

Sans-IO: no trio import, no clocks, no sockets.
"""
