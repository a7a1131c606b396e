"""TRUSTED: the in-TEE shim — our TDX module.

It serves the host's calls (``host_calls/``, one module per call, one dispatch table,
one table of which call is legal in which VM state), runs the exit path
(``exit_path.py``), serves the guest's hypercalls (``guest_calls.py``), and holds the
policies that only the ``shim`` level switches on: sealed vCPU state, sanitised exits,
step and fault policies, the interrupt filter, hardened bounce buffers.  At the levels
below ``shim`` the same code runs with those features off and models what the hardware
alone gives (``levels.py``).

Never imported by tvmm.host or tvmm_tools (architecture contract in pyproject.toml)."""
