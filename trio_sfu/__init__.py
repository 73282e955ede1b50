"""trio-sfu: a WebRTC selective forwarding unit on Trio."""

__version__ = "0.1.0"
