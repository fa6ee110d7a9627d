"""Write audit for tests/madmark/test_ddp_run.py (imported at start-up when this folder is on
PYTHONPATH; inert unless ``MADMARK_AUDIT_ROOT`` is set).

Every process launched by torchrun with a ``RANK`` records, through a ``sys.addaudithook`` hook,
each path under ``MADMARK_AUDIT_ROOT`` that it opens for writing, creates, renames, replaces or
removes (a ``mkdir`` of an existing folder, e.g. Hydra's ``mkdir(exist_ok=True)``, changes nothing
and is not counted), and at exit writes the list to ``MADMARK_AUDIT_LOG/rank<r>.json``.
"""
import atexit
import json
import os
import sys
import threading

_ROOT = os.environ.get("MADMARK_AUDIT_ROOT")
_RANK = os.environ.get("RANK")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
#: audit events (os.replace raises os.rename) and the positions of their path arguments
_PATH_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "shutil.rmtree": (0,),
                "os.rename": (0, 1), "os.symlink": (1,), "os.link": (1,),
                "os.truncate": (0,), "os.utime": (0,), "os.chmod": (0,)}

if _ROOT and _RANK is not None:
    _root = os.path.realpath(_ROOT)
    _seen: list = []
    _state = threading.local()            # busy: inside the hook (no recursion)
    _done = [False]

    def _under_root(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False                      # a file descriptor
        path = os.fsdecode(path)
        full = os.path.realpath(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
        return full == _root or full.startswith(_root + os.sep)

    def _hook(event: str, args: tuple) -> None:
        if _done[0] or getattr(_state, "busy", False) or (event != "open"
                                                          and event not in _PATH_EVENTS):
            return
        _state.busy = True
        try:
            _record(event, args)
        except Exception:                     # an audit hook must not break the process
            pass
        finally:
            _state.busy = False

    def _record(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                      else bool(flags & _WRITE_FLAGS))
            targets = (path,) if writes else ()
        elif event == "os.mkdir" and os.path.isdir(args[0]):
            targets = ()                      # fails with FileExistsError: changes nothing
        else:
            targets = tuple(args[i] for i in _PATH_EVENTS[event])
        for target in targets:
            if _under_root(target):
                _seen.append([event, os.fsdecode(target)])

    def _dump() -> None:
        _done[0] = True
        log = os.environ["MADMARK_AUDIT_LOG"]
        with open(os.path.join(log, f"rank{_RANK}.json"), "w") as f:
            json.dump(_seen, f)

    sys.addaudithook(_hook)
    atexit.register(_dump)
