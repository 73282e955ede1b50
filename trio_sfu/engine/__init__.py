"""The media engine: Worker, Router, WebRtcTransport, Producer, Consumer (trio)."""
