"""Hand a thread worker's result to the app's thread, unless the worker is cancelled by then.

A worker that checks ``is_cancelled`` and then calls ``call_from_thread`` leaves a window:
the user quits between the two — Textual cancels every worker, then closes every screen —
and the callback runs while the app is closing.  Once the opening worker's ``_opened``
added its modes in that window and Textual's ``App._close_all`` failed with "dictionary
changed size during iteration" (Textual's pilot even starts closing the screens before
its message loop has cancelled the workers).  ``deliver`` checks again on the app's thread,
the thread that cancels and closes, so there is no window: the result of a cancelled worker,
or one that arrives once the app has stopped running, is dropped there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.worker import Worker


def deliver(app: App, worker: Worker, callback: Callable[..., Any], *args: Any) -> bool:
    """Run ``callback(*args)`` on the app's thread if ``worker`` is not cancelled there;
    True if it ran.  Call from the worker's thread only."""
    if worker.is_cancelled:
        return False

    def run() -> bool:
        if worker.is_cancelled or not app.is_running:
            return False
        callback(*args)
        return True

    return app.call_from_thread(run)
