"""The trusted perimeter: a coordinator and attested nodes, and the narrow management
operations by which a VM crosses a node boundary (launch, suspend/resume, migrate).

TRUSTED (measured into every node's and the coordinator's attestation report, see
``measure``): coordinator.py, node.py, store.py, identity.py, measure.py, wire.py,
service.py.  UNTRUSTED (host side, never import tvmm.hw or shim — an import-linter
contract): host_side.py (the node's honest host, checkpoint files), client.py (the
operator's client: CLI, attacks), launcher.py (starting processes).
"""
