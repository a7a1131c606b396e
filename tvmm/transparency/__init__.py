"""Code transparency: signed statements about guest images, an append-only log of them,
and receipts that prove a statement is in the log.

The formats and their verification (``claims``, ``statements``, ``merkle``, ``receipts``,
``heads``) are data plus signatures, used by every party: the issuer who signs a build, the
ledger service that registers it (``service``, ``log``), the guest owner's key broker that
releases a secret to any build registered under its policy, and anyone who audits the log.
They import nothing else of tvmm.  Formats: COSE_Sign1 (RFC 9052) for statements, tree
heads and receipts; RFC 9162 SHA-256 Merkle trees; COSE receipts (RFC 9942, vds 1).
"""
