"""A WebRTC transport's DTLS parameters (mediasoup's ``DtlsParameters``): ours, from the
worker's certificate, and the remote ones that ``connect()`` checks. Sans-IO."""

from __future__ import annotations

from typing import Final, cast

from trio_sfu.dtls import DtlsCertificate, Fingerprint
from trio_sfu.errors import UnsupportedError
from trio_sfu.ortc.types import DtlsFingerprint, DtlsParameters, FingerprintAlgorithm

__all__ = [
    "FINGERPRINT_ALGORITHMS",
    "SERVER_FINGERPRINT_ALGORITHMS",
    "local_dtls_parameters",
    "remote_fingerprints",
]

#: The fingerprints of our certificate that a transport announces.
SERVER_FINGERPRINT_ALGORITHMS: Final = ("sha-256", "sha-384", "sha-512")
#: The hash algorithms of a remote fingerprint that we can check.
FINGERPRINT_ALGORITHMS: Final = frozenset({"sha-1", "sha-224", "sha-256", "sha-384", "sha-512"})


def local_dtls_parameters(certificate: DtlsCertificate) -> DtlsParameters:
    """Our DTLS parameters: role ``auto``, the certificate's strong fingerprints."""
    return DtlsParameters(
        fingerprints=[
            DtlsFingerprint(algorithm=cast(FingerprintAlgorithm, fp.algorithm), value=fp.value)
            for fp in certificate.fingerprints()
            if fp.algorithm in SERVER_FINGERPRINT_ALGORITHMS
        ],
        role="auto",
    )


def remote_fingerprints(dtls_parameters: DtlsParameters) -> list[Fingerprint]:
    """The remote certificate's fingerprints; UnsupportedError when none uses an algorithm
    we can check."""
    fingerprints = [Fingerprint(fp.algorithm, fp.value) for fp in dtls_parameters.fingerprints]
    if not any(fp.algorithm.lower() in FINGERPRINT_ALGORITHMS for fp in fingerprints):
        raise UnsupportedError("no DTLS fingerprint with a supported hash algorithm")
    return fingerprints
