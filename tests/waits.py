"""Waiting in tests on state, never on a sleep: a bounded poll of a condition, and the
CPU time of threads (which grows only while they run, whatever the machine's load)."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Callable

_CLK_TCK = os.sysconf("SC_CLK_TCK")


async def until(pred: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.01) -> None:
    """Poll `pred` on the running loop until it is true; fail after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(interval)


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) a thread of this process has used, from /proc."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14 and 15


def instance_threads_cpu_s(component: str) -> float:
    """CPU seconds used by the instance threads of `component` (InstanceBase's executor
    threads, named "wasm-COMPONENT#INDEX_0"): they run guest calls and nothing else."""
    total = 0.0
    for t in threading.enumerate():
        if t.name.startswith(f"wasm-{component}#") and t.native_id is not None:
            try:
                total += thread_cpu_s(t.native_id)
            except FileNotFoundError:  # the thread ended meanwhile
                pass
    return total


def accepted_from(pid: int, client_ports: set[int]) -> int:
    """How many TCP connections from the local `client_ports` the process `pid` has
    accept()ed (a socket in its fd table whose peer is one of them; IPv4, from /proc)."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    n = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            cols = line.split()  # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) in client_ports:
                n += 1
    return n
