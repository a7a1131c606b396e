"""One error type for everything a transparency check refuses, with a reason word."""

from __future__ import annotations


class TransparencyError(ValueError):
    """A statement, receipt, tree head, log or policy was refused; ``reason`` is one word
    (as tvmm.owner.verify's reasons are) and the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
