"""The ABIs and formats: the only package both sides of the trust boundary import.

Data only: enums for calls, exits, fields and result codes, frozen request/reply
dataclasses and one bytes codec (the platform ABI); the guest ABI (``guest``); and the
formats the TEE shares with the owner and the trace viewer, each with the cryptography
that defines it — the SNP report (``report``), the VCEK's extensions (``vcek``), wrapped
launch and released secrets (``launch_secret``, ``key_release``), trace events
(``trace_events``).  No keys live here.  It imports nothing else of tvmm (checked in CI),
and all of it is measured with the TEE's code.
"""
