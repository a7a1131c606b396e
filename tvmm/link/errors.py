"""What a link raises: the peer is gone, or a frame is not one."""

from __future__ import annotations


class LinkError(RuntimeError):
    """The link cannot carry this call (a closed or dead peer, a bad frame)."""


class PeerGone(LinkError):
    """The other process closed its end or died: no answer will come."""


class FrameError(LinkError):
    """A frame over the link's limit, or a length that cannot be one."""
