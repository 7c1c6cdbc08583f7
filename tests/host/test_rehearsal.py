"""The spare's rehearsal (plugind.runtime.child.rehearse): it runs the runtime's start-up code on
throwaway objects and must leave the process as it found it, so the plugin handed to the spare later
starts in the same process state as one forked fresh. The one exception is the log levels, which a
start sets before the plugin's import: a rehearsal sets them as the start would. Run in a forked
child, as in a spare."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from plugind.runtime import child


def _state() -> dict[str, object]:
    return {
        "fds": sorted(os.listdir("/proc/self/fd")),
        "handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "path": list(sys.path),
        "modules": sorted(m for m in sys.modules if "rehears" in m),
        "alarm": signal.getsignal(signal.SIGALRM) is signal.SIG_DFL or repr(signal.getsignal(signal.SIGALRM)),
        "timer": signal.getitimer(signal.ITIMER_REAL),
        "cwd": os.getcwd(),
        "bytecode": sys.dont_write_bytecode,
    }


def _in_a_child(run: Callable[[int], object]) -> Any:
    """`run(w)` in a forked child (`w`: the fd of the pipe it reports through, open in it); what it
    returns, through JSON. Asserts that the child exited 0."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            os.write(w, json.dumps(run(w)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_a_rehearsal_leaves_no_trace_in_the_process() -> None:
    def run(w: int) -> object:
        before = _state()
        before["fds"] = [f for f in before["fds"] if f != str(w)]
        levels = [logging.getLogger().level, logging.getLogger("plugin").level]
        child.rehearse()
        child.rehearse()  # twice: a second one finds nothing of the first
        after = _state()
        after["fds"] = [f for f in after["fds"] if f != str(w)]
        levels += [logging.getLogger().level, logging.getLogger("plugin").level]
        return [before, after, levels]

    before, after, levels = _in_a_child(run)
    assert after == before
    # The start's levels (root INFO, `plugin` DEBUG), set while the spare waits; a start then finds
    # them set and leaves them (see test_a_start_sets_the_log_levels_before_the_plugins_import).
    assert levels == [logging.WARNING, logging.NOTSET, logging.INFO, logging.DEBUG]


def test_a_rehearsal_never_raises_even_without_sockets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(child.socket, "socketpair", refuse)
    child.rehearse()  # best effort: nothing to warm, nothing raised


def test_the_rehearsal_imports_a_real_plugin_module_the_way_a_start_does() -> None:
    # rehearse() imports plugind/runtime/_rehearsal_plugin.py with load_plugin, as a start imports a
    # plugin's entrypoint (falling back to compiling its twin source only where the file cannot be
    # seen): the module must be such a plugin, and must not stay importable afterwards.
    def run(_w: int) -> object:
        here = os.path.dirname(child.__file__)
        loaded = child.load_plugin(here, f"{child._REHEARSAL_MODULE}:plugin")
        origin = sys.modules[child._REHEARSAL_MODULE].__file__
        del sys.modules[child._REHEARSAL_MODULE]
        sys.path.remove(here)
        plugin = child._rehearse_import()
        try:
            __import__(child._REHEARSAL_MODULE)
            importable = True
        except ImportError:
            importable = False
        return [loaded.priorities, origin, plugin.priorities, importable]

    loaded, origin, rehearsed, importable = _in_a_child(run)
    assert loaded == rehearsed == {"rehearsal": 0}
    assert origin == os.path.join(os.path.dirname(child.__file__), "_rehearsal_plugin.py")
    assert importable is False


def test_the_fork_server_rehearses_once_before_it_freezes_its_heap() -> None:
    # forkserver.main, run in a forked child that stands in for the fork-server process: the real
    # rehearsal runs once, before gc.freeze() (what it makes is then in the shared, frozen heap of
    # every plugin child), and the levels it sets are in place when the server starts serving.
    def run(_w: int) -> object:
        from plugind.host import forkserver

        rehearsed: list[int] = []
        served: list[object] = []
        real = child.rehearse

        def rehearse() -> None:
            rehearsed.append(gc.get_freeze_count())
            real()

        def serve(self: object) -> None:
            served.append([gc.get_freeze_count() > 0, logging.getLogger().level,
                           logging.getLogger("plugin").level])

        child.rehearse = rehearse  # type: ignore[assignment]
        forkserver.ForkServer.serve = serve  # type: ignore[method-assign,assignment]
        _ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        forkserver.main(["--fd", str(theirs.fileno())])
        return [rehearsed, served]

    rehearsed, served = _in_a_child(run)
    assert rehearsed == [0]  # once, with nothing frozen yet
    assert served == [[True, logging.INFO, logging.DEBUG]]
