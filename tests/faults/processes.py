"""Which processes of a session are still running (Linux /proc), for the kill -9 tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live (not zombie) processes of session `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[3]) != sid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        out.append((int(entry), cmd))
    return out


def wait_until_gone(sid: int, timeout_s: float) -> list[tuple[int, str]]:
    """Wait up to `timeout_s` for session `sid` to have no live process; returns the survivors (empty: none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = session_members(sid)
        if not left or time.monotonic() > deadline:
            return [(pid, f"{cmd} [{describe(pid)}]") for pid, cmd in left]
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def describe(pid: int) -> str:
    """State, parent and each thread's state and kernel wait channel: why a survivor is still there."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        threads = []
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            state = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()[0]
            wchan = open(f"/proc/{pid}/task/{tid}/wchan").read().strip() or "-"
            threads.append(f"{name}:{state}:{wchan}")
        return f"state {fields[0]}, parent {fields[1]}, threads {' '.join(threads)}"
    except OSError as exc:
        return f"gone while described ({exc.strerror})"


def run_in_session(cmd: list[str], timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in a session of its own, which is killed as a whole
    afterwards: on a timeout, or when the command left helper processes behind, none of them outlives the test
    (subprocess.run's timeout kills the command alone, and its workers would go on using the CPU)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen_kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.returncode is None:
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
