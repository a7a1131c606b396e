"""The one place that drives both sides: it starts the TEE's process and the host's, holds
the guest owner, and (for an attack) judges.

    tee_server.py the TEE's process: the Platform (shim, tvmm.hw) behind a byte link
    launcher.py  the processes and what crosses between them: a byte link host ↔ TEE
                 (shared-memory mailbox, or a socket), a message link host ↔ launcher
                 (owner relay, console, the result), the attack's note pipe to the TEE, and
                 the judge-only control link to the TEE (its records, trace events)
    boot.py      ``tvmm boot`` across the boundary
    judge.py     ``tvmm attack`` / ``tvmm matrix``: the attack in its own process, scored
                 here against the secret only this process holds

tvmm.machine and tvmm.judge keep the in-process assembly for unit tests; a scored result
never comes from there.  See docs/architecture.md, "Processes".
"""
