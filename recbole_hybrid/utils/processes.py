"""Process ownership: a child process never outlives the command that started it, and SIGTERM
stops work the way Ctrl-C does.

- `start_worker(parent_pid, threads)`, called first thing in a child (a compare cell, a DDP
  worker, a Ray trial): with `parent_pid`, the kernel sends the child SIGTERM when that
  parent dies (`die_with_parent`: Linux `PR_SET_PDEATHSIG`; elsewhere a watchdog thread
  notices the new parent id), so `kill -9` of the parent stops the child too, and Ctrl-C is
  left to the parent, which stops its children; `threads` sets torch's threads.
- `sigterm_as_interrupt()`: inside it, SIGTERM does what Ctrl-C does (it runs the current
  SIGINT handler: Python's KeyboardInterrupt, or Ray Tune's graceful stop), so every
  command's Ctrl-C path (stop the children, keep what finished, print how to go on) also
  runs for `kill <pid>`. Libraries that install their own SIGTERM handler (Ray's core
  worker does, and aborts) are overruled by calling `handle_sigterm_as_sigint()` again.
- `signals_held()`: inside it, Ctrl-C and SIGTERM wait (blocked) and arrive when it ends; for
  the heavy imports, since a KeyboardInterrupt raised inside torch's import while C++ runs
  Python code aborts the whole process (pybind11 `std::terminate`, exit -6, a core dump).
"""

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def start_worker(parent_pid=None, threads=None):
    """What every child process does first: die with `parent_pid` (and leave Ctrl-C to it)
    when given, and run torch on `threads` threads (children share the cores) when given."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and stops us
    if threads:
        import torch

        torch.set_num_threads(threads)


def die_with_parent(parent_pid=None):
    """Ask to receive SIGTERM when the parent process dies; if it is already gone, exit."""
    parent_pid = parent_pid or os.getppid()
    if not _set_parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(128 + signal.SIGTERM)


def _set_parent_death_signal(signum):
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid, interval=1.0):
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGTERM)


def _as_sigint(signum, frame):
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def handle_sigterm_as_sigint():
    """From now on SIGTERM runs the SIGINT handler (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_sigint)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM does what Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    handle_sigterm_as_sigint()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held():
    """Within the block (main thread), Ctrl-C and SIGTERM are held; those that came arrive
    as it ends, at the handlers installed then."""
    if (threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "pthread_sigmask")):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop(process, timeout=10.0):
    """Terminate a multiprocessing child and wait for it; kill it if it does not stop."""
    if process.is_alive():
        process.terminate()
        process.join(timeout)
    if process.is_alive():
        process.kill()
    process.join()
