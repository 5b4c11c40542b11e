"""ffhquv.supervisor with real (small) processes: restart with backoff and a counter, children
that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ffhquv import metrics
from ffhquv.supervisor import Supervisor
from tests.gateway_stack import pid_alive, wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_dead_child_is_restarted_with_backoff_and_counted():
    ports: list[int] = []

    def start(port: int) -> tuple[subprocess.Popen, str]:
        ports.append(port)
        return subprocess.Popen(SLEEPER), f"127.0.0.1:{port or 40000 + len(ports)}"

    before = metrics.CHILD_RESTARTS.labels("sleeper")._value.get()
    sup = Supervisor(backoff=0.2, max_backoff=1.0, poll_s=0.05)
    try:
        sup.add("sleeper", start)
        sup.start()
        child = sup.children["sleeper"]
        for n in (1, 2):
            old = child.proc
            old.kill()
            wait_until(lambda n=n: child.restarts == n, timeout=60)
            assert child.proc is not old and child.proc.poll() is None
        assert ports == [0, 40001, 40001]  # restarted on the port it had
        assert metrics.CHILD_RESTARTS.labels("sleeper")._value.get() == before + 2
        assert child.failures == 2  # quick failures: the next delay doubles again
        assert [h["exit_code"] for h in child.history] == [-signal.SIGKILL] * 2
        last = child.proc
    finally:
        sup.stop(timeout=5)
    assert last.poll() is not None  # stop ends the children


def test_children_die_with_their_parent(tmp_path):
    """A parent (kill -9'd) whose child armed the parent-death signal: the child goes too, even
    one that would not stop on SIGTERM (a server draining its calls, a long start-up)."""
    pid_file = tmp_path / "child.pid"
    child_code = textwrap.dedent(f"""
        import os, signal, time
        from ffhquv.supervisor import die_with_parent
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert die_with_parent()
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
    """)
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, "FFHQUV_PARENT_PID": str(os.getpid())}}
        p = subprocess.Popen([sys.executable, "-c", {child_code!r}], env=env)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code],
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60)
        child = int(pid_file.read_text())  # written once the signal is armed
        assert pid_alive(child)
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: not pid_alive(child), timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_stop_ends_a_child_still_starting():
    """A restart under way (the new process launched, its start-up not finished): stop ends
    that process too instead of waiting for its start."""
    launched: list[subprocess.Popen] = []
    sup = Supervisor(backoff=0.05, poll_s=0.05)

    def start(port: int) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(SLEEPER)
        launched.append(proc)
        if len(launched) == 1:
            return proc, "127.0.0.1:40000"
        sup.starting(proc)
        try:
            while proc.poll() is None:  # never healthy: waits until someone ends it
                time.sleep(0.05)
            raise RuntimeError("exited before serving")
        finally:
            sup.starting(proc, done=True)

    try:
        sup.add("slow", start)
        sup.start()
        launched[0].kill()
        wait_until(lambda: len(launched) == 2, timeout=60)
    finally:
        sup.stop(timeout=5)
    assert all(p.poll() is not None for p in launched)
    assert sup.children["slow"].restarts == 0


@pytest.mark.parametrize("begin", [True, False], ids=["begin_stop, stop", "stop"])
def test_gateways_stop_first_while_the_services_behind_them_still_serve(begin, tmp_path):
    """``begin_stop`` sends SIGTERM to the ``stop_first`` children (the gateways) at once and
    no other; ``stop`` stops them first too and waits for them before it stops the rest, so a
    gateway's drain finds its services up."""
    seen = tmp_path / "seen"
    service = subprocess.Popen(SLEEPER)
    gateway_code = textwrap.dedent(f"""
        import os, signal, time
        def bye(*_):  # a drain: is the service behind still up?
            time.sleep(0.5)
            try:
                os.kill({service.pid}, 0)
                up = "up"
            except ProcessLookupError:
                up = "down"
            open({str(seen)!r}, "w").write(up)
            os._exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("ready", flush=True)
        time.sleep(600)
    """)
    gateway = subprocess.Popen([sys.executable, "-c", gateway_code], stdout=subprocess.PIPE,
                               text=True)
    assert gateway.stdout.readline().strip() == "ready"  # its SIGTERM handler is in place
    gateway.stdout.close()
    sup = Supervisor(poll_s=0.05)
    try:
        sup.add("service", lambda port: (service, "127.0.0.1:40001"))
        sup.add("gateway", lambda port: (gateway, "127.0.0.1:40002"), stop_first=True)
        if begin:
            sup.begin_stop()
            wait_until(lambda: gateway.poll() is not None, timeout=60)
            assert service.poll() is None  # begin_stop leaves the services alone
    finally:
        sup.stop(timeout=5, drain=30)
    assert seen.read_text() == "up"
    assert service.poll() is not None and gateway.poll() is not None


def test_a_child_of_serve_all_ignores_the_terminals_ctrl_c():
    """``stop_signals`` in a child of ``serve all``: SIGTERM only, SIGINT (a terminal's Ctrl-C
    reaches the whole group) ignored, so ``serve all`` decides the order; SIGINT too outside."""
    code = textwrap.dedent("""
        import signal, sys, time
        from ffhquv.supervisor import stop_signals
        sigs = stop_signals()
        for s in sigs:
            signal.signal(s, lambda n, _: sys.exit(10 + n))
        print(" ".join(str(int(s)) for s in sigs), flush=True)
        time.sleep(600)
    """)
    for parent, want in (("1", [signal.SIGTERM]), (None, [signal.SIGTERM, signal.SIGINT])):
        env = {k: v for k, v in os.environ.items() if k != "FFHQUV_PARENT_PID"}
        if parent:
            env["FFHQUV_PARENT_PID"] = parent
        p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True)
        try:
            assert [int(s) for s in p.stdout.readline().split()] == [int(s) for s in want]
            # SIGINT then SIGTERM: the child's exit code says which one ended it (Python
            # runs pending handlers in signal-number order: SIGINT's first, if it has one)
            p.send_signal(signal.SIGINT)
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 10 + (signal.SIGTERM if parent else signal.SIGINT)
        finally:
            if p.poll() is None:
                p.kill()
            p.stdout.close()
