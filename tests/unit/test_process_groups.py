"""Process groups as the runtime sees them through /proc: members, liveness."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from runners.process import group_alive, group_members


def _wait(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_group_members_are_a_shell_and_its_child_until_the_group_is_killed():
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        assert _wait(lambda: len(group_members(shell.pid)) == 2)
        pids = sorted(int(p.name) for p in group_members(shell.pid))
        assert shell.pid in pids and all(os.getpgid(p) == shell.pid for p in pids)
        assert group_members(os.getpgid(0)) and shell.pid not in [
            int(p.name) for p in group_members(os.getpgid(0))]
        assert group_alive(shell.pid)
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
    # The shell stays a zombie until it is reaped: not a member, and the group is not alive.
    assert _wait(lambda: not group_members(shell.pid))
    assert not group_alive(shell.pid)
    shell.wait()
    assert not group_alive(shell.pid)
