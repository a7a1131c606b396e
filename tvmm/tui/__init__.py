"""The terminal trace viewer (``tvmm trace view``), built on Textual.

Layout of the package: ``app.py`` is the small App (it opens the trace in a worker and
switches between modes); ``screens/`` holds one screen per module (timeline, overview,
help, error, loading); ``widgets/`` one widget per module; the modules beside them are
plain functions and values the widgets render (event summaries, register diffs, hex
dumps, the guest image for symbols and disassembly, filters, search, the page-access
map), testable without a terminal.  Data flows down as attributes, messages flow up.
"""

from __future__ import annotations


def run_viewer(path: str) -> int:
    """Open the trace at ``path`` in the viewer; return 0, or 1 if it could not be read."""
    from tvmm.tui.app import TraceViewerApp  # Textual is imported only when viewing

    app = TraceViewerApp(path)
    app.run()
    return app.return_code or 0
