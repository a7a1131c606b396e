"""Byte pipes between processes: the only way the host reaches the TEE process.

Data only (the standard library, nothing else of ours): a request/reply mailbox in shared
memory both sides spin on briefly before they block (``tvmm.link.mailbox``), a framed
socket with the same interface (``tvmm.link.frames``), the errors both raise, and the
rule that a process at either end dies with the launcher that started it
(``tvmm.link.lifetime``).  Who
holds which end is the harness's business (tvmm/harness); what crosses is the platform
ABI's bytes (tvmm.abi.codec).
"""
