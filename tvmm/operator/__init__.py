"""UNTRUSTED: the cloud operator's side of the perimeter.

``client`` asks the coordinator for management operations (the CLI and the attacks use
it): the operator may ask for anything, the coordinator decides and audits.  ``launcher``
starts and stops the perimeter's processes.  Neither imports the trusted packages
(tvmm.hw, shim) nor the trusted perimeter modules — an import-linter contract checks it
in CI; they share only the data-only formats of tvmm.perimeter (``wire``).
"""
