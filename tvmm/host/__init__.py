"""UNTRUSTED: the host — the honest hypervisor, its devices, and a perimeter node's host
(node_service, a process beside the node's agent, with node_host's pumps: runs VMs,
pumps checkpoint streams, stores checkpoint files).

Written against the platform ABI alone (tvmm.abi): it never imports the trusted packages
(tvmm.hw, shim), which the architecture contract in pyproject.toml checks in CI.  Attacks
in tvmm_tools/ are hosts too, and use the same client."""
