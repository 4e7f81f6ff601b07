"""The zk layer's exceptions: one base class, one subclass per kind of failure."""


class ZkError(Exception):
    """Base class of every error raised by the zk package."""


class EncodingError(ZkError):
    """Bytes that are not the canonical encoding of a point, scalar or proof."""


class ProofError(ZkError):
    """A proof that is malformed or does not verify against its statement."""


class EnvelopeError(ZkError):
    """An envelope that cannot be opened: wrong key, wrong context, or tampered bytes."""
