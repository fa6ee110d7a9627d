"""The one user-error type: a problem and its fix, printed as one line.

Anything a user can cause (a bad config value, a missing folder, a corrupt image) raises
:class:`MadmarkError`. The CLI prints ``madmark: error: <problem> — <fix>`` and exits with code 2;
``debug=true`` shows the traceback instead. Layers may subclass it (``loops.errors.LoopError``).
"""
from __future__ import annotations


class MadmarkError(Exception):
    """An error caused by input or configuration, reported as one line.

    Args:
        problem: what is wrong, e.g. ``"data.root '/x' does not exist"``.
        fix: what the user should do, e.g. ``"set data.root=<folder of images>"``.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem} — {fix}")
        self.problem = problem
        self.fix = fix
