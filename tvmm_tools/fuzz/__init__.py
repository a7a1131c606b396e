"""tvmm's own fuzzers: every parser of untrusted bytes, the platform ABI driven by a
malicious host with oracles, and a guest that issues random hypercalls.

``python -m tvmm_tools.fuzz list`` names the targets; ``python -m tvmm_tools.fuzz <target> --seconds N
--seed S`` runs one (or ``all``) in a child process, coverage-guided by atheris when it is
installed and by a seeded random mutator otherwise.  Findings are saved (input bytes and
traceback) for ``--replay``; those matching a known, being-fixed signature (tvmm_tools.fuzz.known)
are reported apart.  docs/security.md says what each boundary promises.
"""
