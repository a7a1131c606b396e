"""TRUSTED: the perimeter — a coordinator and attested nodes, and the narrow management
operations by which a VM crosses a node boundary (launch, suspend/resume, migrate).

Every module here is measured into the coordinator's and each node's attestation report
(``measure``): coordinator.py, node.py (the node's TEE agent), store.py, identity.py,
channel.py, measure.py, service.py, and the two data-only formats both sides read,
wire.py and checkpoint_file.py.  The untrusted parts live with the other untrusted code:
the node's honest host, a process of its own that the agent starts
(tvmm/host/node_service.py, node_host.py), the operator's client and process launcher in
tvmm/operator/.
"""
