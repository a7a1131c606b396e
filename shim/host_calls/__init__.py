"""The host's calls into the TEE: one module per call, each with its ABI, preconditions
and result codes in its docstring; ``dispatch.py`` holds the one dispatch table and the
one table of which call is legal in which VM state."""
