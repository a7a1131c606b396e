"""tvmm: a trusted-VMM and blind-hypervisor shim prototype.

Trust map of the tree (checked by the import-linter contracts in pyproject.toml):

  trusted (the TEE)      tvmm.hw (modeled hardware), shim (the in-TEE shim and firmware)
  untrusted (the host)   tvmm.host (honest hypervisor, devices), tvmm_tools (attacks, benchmarks)
  shared data only       tvmm.abi (the platform ABI), tvmm.trace (trace schema and files)
  the guest owner        tvmm.owner (verifier, key broker)
  assembly and views     tvmm.cli, tvmm.machine, tvmm.tui, tvmm.guestbuild
"""

__version__ = "0.1.0"
