"""The lab bench: attack scenarios, the attack matrix and benchmarks.

``tvmm_tools.attacks`` is UNTRUSTED code — malicious hypervisors written against the platform
ABI alone; the architecture contract forbids it any import of tvmm.hw or shim.  The
benchmark scripts beside it are harness code: they assemble a platform to time it."""
