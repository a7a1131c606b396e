"""TRUSTED: the modeled hardware — vCPU, guest memory and its page states, memory
encryption, root of trust, measurement, attestation reports.

Never imported by tvmm.host or tvmm_tools (architecture contract in pyproject.toml)."""
