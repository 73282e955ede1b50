"""RTP: packets, header extensions, RTX, rewriting, codec payloads, statistics and NACK.

Sans-IO: every module in this package takes bytes and values and returns bytes and values;
none imports trio. Import from the submodules (``trio_sfu.rtp.packet``,
``trio_sfu.rtp.extensions``, ``trio_sfu.rtp.rtx``, ...); this package re-exports nothing.
"""
