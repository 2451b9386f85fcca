"""The command runner: exit codes, logs, timeouts that kill the whole process group."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.commands import RunStop, read_tail, run_command, to_argv
from flows.rss import RssSampler
from tests.conftest import wait_for_file, wait_until_gone


def test_shell_string_and_argv(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    shell = run_command("echo $((2+3)); exit 4", cwd=tmp_path, env=os.environ, timeout=10,
                        log_path=log)  # fmt: skip
    argv = run_command(["echo", "$HOME"], cwd=tmp_path, env=os.environ, timeout=10, log_path=log)
    assert shell.exit_code == 4 and not shell.ok
    assert argv.ok
    assert read_tail(log).splitlines() == ["5", "$HOME"]


def test_plain_commands_skip_the_shell_and_mean_the_same() -> None:
    path = os.environ["PATH"]
    assert to_argv("sleep 1", path) == [shutil.which("sleep"), "1"]
    assert to_argv("ruff check --select=E,F backend/app.py", "/nonexistent") == [
        "/bin/sh", "-c", "ruff check --select=E,F backend/app.py"  # not on that path
    ]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    ["echo $HOME", "echo 'a  b'", "ls *.py", "true && false", "cd sub", "pwd",
     "FOO=1 env", "./run.sh", "echo ~", "sleep 1 # why", "exit 3", "echo a\\ b",
     "true\nfalse", "echo -e x", "test -f x"],
)  # fmt: skip
def test_anything_the_shell_would_interpret_runs_through_it(command: str) -> None:
    assert to_argv(command, os.environ["PATH"]) == ["/bin/sh", "-c", command]


def test_relative_path_entries_keep_the_shell() -> None:
    """`sh` looks them up from the command's cwd, `shutil.which` from ours."""
    path = f"node_modules/.bin{os.pathsep}{os.environ['PATH']}"
    assert to_argv("sleep 1", path) == ["/bin/sh", "-c", "sleep 1"]


def test_direct_runs_behave_as_the_shell_would(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "no-shebang"  # sh runs it as a shell script; exec alone cannot
    script.write_text("echo from the script\nexit 5\n")
    script.chmod(0o755)
    crasher = bin_dir / "crasher"
    crasher.write_text(
        f"#!{sys.executable}\nimport os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    crasher.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "out.log"
    ran = run_command("no-shebang arg", cwd=tmp_path, env=env, timeout=10, log_path=log)
    assert ran.exit_code == 5 and "from the script" in log.read_text()
    crashed = run_command("crasher", cwd=tmp_path, env=env, timeout=10, log_path=log)
    assert crashed.exit_code == 128 + 11  # as `sh -c` reports SIGSEGV, not -11


def test_direct_and_shell_runs_give_the_same_output(tmp_path: Path) -> None:
    outputs = []
    for number, command in enumerate(("printf %s-%s a b", "printf '%s-%s' a b")):
        log = tmp_path / f"{number}.log"
        assert run_command(command, cwd=tmp_path, env=os.environ, timeout=10, log_path=log).ok
        outputs.append(log.read_text())
    assert outputs == ["a-b", "a-b"]
    missing = run_command("missing-tool x", cwd=tmp_path, env=os.environ, timeout=10,
                          log_path=tmp_path / "missing.log")  # fmt: skip
    assert missing.exit_code == 127  # the shell's "not found", as before


def test_runs_in_cwd_with_env(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    outcome = run_command("pwd; echo $GREETING", cwd=tmp_path, env={"GREETING": "hi",
                          "PATH": os.environ["PATH"]}, timeout=10, log_path=log)  # fmt: skip
    assert outcome.ok
    assert read_tail(log).splitlines() == [str(tmp_path), "hi"]


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    outcome = run_command(
        f"sleep 300 & echo $! > {pid_file}; wait",
        cwd=tmp_path, env=os.environ, timeout=0.5, log_path=tmp_path / "log",
    )  # fmt: skip
    assert outcome.timed_out and not outcome.ok
    assert time.monotonic() - started < 5
    assert wait_until_gone(int(pid_file.read_text()))
    assert "timed out after 0.5s" in read_tail(tmp_path / "log")


def test_a_huge_timeout_does_not_kill_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    outcome = run_command("sleep 0.2", cwd=tmp_path, env=os.environ, timeout=1e300,
                          log_path=tmp_path / "log")  # fmt: skip
    assert outcome.ok and not errors  # the timer thread is alive, so the timeout holds


def test_term_ignoring_process_is_killed_after_grace(tmp_path: Path) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    started = time.monotonic()
    outcome = run_command([sys.executable, "-c", script], cwd=tmp_path, env=os.environ,
                          timeout=0.3, log_path=tmp_path / "log", kill_grace=0.5)  # fmt: skip
    assert outcome.timed_out
    assert time.monotonic() - started < 5


def test_stragglers_are_killed_when_the_command_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    outcome = run_command(f"sleep 300 & echo $! > {pid_file}", cwd=tmp_path, env=os.environ,
                          timeout=10, log_path=tmp_path / "log")  # fmt: skip
    assert outcome.ok
    assert wait_until_gone(int(pid_file.read_text()))


def test_a_stopped_run_kills_its_running_commands(tmp_path: Path) -> None:
    """The run is interrupted: every command it runs is killed with its whole group at
    once (not at its timeout), and says why in its log."""
    stop = RunStop()
    outcomes = []

    def run(name: str) -> None:
        command = f"sleep 300 & echo $! > {name}.pid; wait"
        outcomes.append(run_command(command, cwd=tmp_path, env=os.environ, timeout=600,
                                    log_path=tmp_path / f"{name}.log", stop=stop))  # fmt: skip

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    grandchildren = [int(wait_for_file(tmp_path / f"{name}.pid")) for name in ("a", "b")]
    started = time.monotonic()
    stop.stop("interrupted (SIGTERM)")
    for thread in threads:
        thread.join(timeout=10)
    assert time.monotonic() - started < 5
    assert len(outcomes) == 2
    assert all(o.interrupted and not o.timed_out and not o.ok for o in outcomes)
    assert all(wait_until_gone(pid) for pid in grandchildren)
    assert "[stopped: interrupted (SIGTERM): process group killed]" in read_tail(tmp_path / "a.log")


def test_a_stopped_command_that_exits_0_is_still_not_ok(tmp_path: Path) -> None:
    """It was cut short, whatever its exit code says."""
    stop = RunStop()
    pid_file = tmp_path / "shell.pid"
    outcomes = []
    command = f"trap 'exit 0' TERM; echo $$ > {pid_file}; sleep 300 & wait"
    runner = threading.Thread(target=lambda: outcomes.append(run_command(
        command, cwd=tmp_path, env=os.environ, timeout=600, log_path=tmp_path / "log",
        stop=stop,
    )))  # fmt: skip
    runner.start()
    wait_for_file(pid_file)
    stop.stop("interrupted (SIGTERM)")
    runner.join(timeout=10)
    (outcome,) = outcomes
    assert outcome.exit_code == 0 and outcome.interrupted and not outcome.ok


def test_a_stopped_run_starts_no_command(tmp_path: Path) -> None:
    stop = RunStop()
    stop.stop("interrupted (SIGINT)")
    started = time.monotonic()
    outcome = run_command("touch ran", cwd=tmp_path, env=os.environ, timeout=5,
                          log_path=tmp_path / "log", stop=stop)  # fmt: skip
    stop.wait(30)  # returns at once: the run is stopped
    assert time.monotonic() - started < 5
    assert outcome.interrupted and outcome.exit_code is None and not outcome.ok
    assert outcome.error == "not started: interrupted (SIGINT)"
    assert not (tmp_path / "ran").exists()


def interrupt_when_started(pid_file: Path, interrupts: int = 1) -> threading.Thread:
    """A thread that sends this process SIGINT (Ctrl-C) once `pid_file` is written, and
    again after 0.3 s for each further interrupt."""

    def interrupt() -> None:
        wait_for_file(pid_file)
        for _ in range(interrupts):
            time.sleep(0.3)  # the runner waits for the command (or its grace) by now
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


# a group that ignores SIGTERM: the shell, and the sleep that inherits the ignore
DEAF_GROUP = "trap '' TERM; sleep 300 & echo $! > {pid_file}; wait"
# a shell that dies of SIGTERM, leaving a child that ignores it
DEAF_CHILD = "(trap '' TERM; exec sleep 300) & echo $! > {pid_file}; wait"


@pytest.mark.parametrize(
    ("command", "interrupts", "grace"),
    [(DEAF_CHILD, 1, 1.0), (DEAF_GROUP, 2, 60.0)],
    ids=["deaf-child", "deaf-group-twice"],
)
def test_an_interrupted_wait_kills_the_command_before_raising(
    tmp_path: Path, command: str, interrupts: int, grace: float
) -> None:
    """Ctrl-C reaches the leader, not the command (it runs in a session of its own): the
    runner kills the command's whole group on the way out, or it would live on, orphaned:
    SIGKILL after the grace period for what ignores SIGTERM, at once on a second Ctrl-C."""
    pid_file = tmp_path / "grandchild.pid"
    interrupter = interrupt_when_started(pid_file, interrupts)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_command(command.format(pid_file=pid_file), cwd=tmp_path, env=os.environ,
                    timeout=600, log_path=tmp_path / "log", kill_grace=grace)  # fmt: skip
    interrupter.join()
    assert time.monotonic() - started < 30
    assert wait_until_gone(int(pid_file.read_text()))


def test_ctrl_c_given_to_another_thread_still_stops_a_command_of_the_main_thread(
    tmp_path: Path,
) -> None:
    """The kernel may hand a process's signal to any thread, and Python runs its handler in
    the main thread only when that thread runs Python: a main thread waiting for its
    command must still get there at once, not when the command ends (a long setup)."""
    pid_file = tmp_path / "command.pid"
    bystander = threading.Thread(target=time.sleep, args=(5,))
    bystander.start()

    def interrupt_the_bystander() -> None:
        wait_for_file(pid_file)
        assert bystander.ident is not None
        signal.pthread_kill(bystander.ident, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_the_bystander)
    interrupter.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_command(f"echo $$ > {pid_file}; exec sleep 60", cwd=tmp_path, env=os.environ,
                    timeout=600, log_path=tmp_path / "log", kill_grace=1)  # fmt: skip
    interrupter.join()
    assert time.monotonic() - started < 10
    assert wait_until_gone(int(pid_file.read_text()))
    bystander.join()


def test_a_run_stopped_again_kills_at_once(tmp_path: Path) -> None:
    """A second stop (a second Ctrl-C) does not wait out the SIGTERM grace period."""
    pid_file = tmp_path / "grandchild.pid"
    stop = RunStop()
    outcomes = []
    runner = threading.Thread(target=lambda: outcomes.append(run_command(
        DEAF_GROUP.format(pid_file=pid_file), cwd=tmp_path, env=os.environ, timeout=600,
        log_path=tmp_path / "log", kill_grace=60, stop=stop,
    )))  # fmt: skip
    runner.start()
    grandchild = int(wait_for_file(pid_file))
    started = time.monotonic()
    stop.stop("interrupted (SIGINT)")
    time.sleep(0.3)
    assert runner.is_alive()  # it ignores SIGTERM: the grace period runs
    stop.stop("interrupted (SIGINT)")
    runner.join(timeout=10)
    assert time.monotonic() - started < 10 and outcomes and outcomes[0].interrupted
    assert wait_until_gone(grandchild)


def test_stop_callbacks_run_on_each_stop_inside_their_block_only() -> None:
    stop = RunStop()
    calls: list[str] = []
    with stop.on_stop(lambda: calls.append("inside")):
        pass
    with stop.on_stop(lambda: calls.append("during")):
        stop.stop("interrupted (SIGINT)")
        stop.stop("interrupted (SIGINT)")  # again: a second Ctrl-C
    stop.stop("interrupted (SIGINT)")  # after the block: not called
    assert calls == ["during", "during"]
    with stop.on_stop(lambda: calls.append("already stopped")):
        assert calls[-1] == "already stopped"  # called on entry


def test_a_block_ends_only_after_its_stop_callback_has_run() -> None:
    """A stop that calls back as the block ends: the block waits for the call, so nothing
    the callback touches (a connection) is handed on while it runs."""
    stop = RunStop()
    called = threading.Event()
    events: list[str] = []

    def slow_callback() -> None:
        called.set()
        time.sleep(0.3)
        events.append("callback done")

    with stop.on_stop(slow_callback):
        stopper = threading.Thread(target=stop.stop, args=("interrupted (SIGTERM)",))
        stopper.start()
        assert called.wait(5)
    events.append("block ended")
    stopper.join()
    stop.stop("interrupted (SIGTERM)")  # again, after the block: no call
    assert events == ["callback done", "block ended"]


def test_a_failing_stop_callback_does_not_stop_the_stop(tmp_path: Path) -> None:
    stop = RunStop()

    def broken() -> None:
        raise RuntimeError("broken callback")

    calls: list[str] = []
    with stop.on_stop(broken), stop.on_stop(lambda: calls.append("next")):
        stop.stop("interrupted (SIGTERM)")
    assert calls == ["next"] and stop.reason == "interrupted (SIGTERM)"


def test_missing_executable_is_reported_not_raised(tmp_path: Path) -> None:
    outcome = run_command(["/nonexistent/tool"], cwd=tmp_path, env=os.environ, timeout=5,
                          log_path=tmp_path / "log")  # fmt: skip
    assert outcome.exit_code is None and not outcome.ok
    assert outcome.error and "cannot start command" in outcome.error


def test_timings_are_real(tmp_path: Path) -> None:
    outcome = run_command("sleep 0.3", cwd=tmp_path, env=os.environ, timeout=5,
                          log_path=tmp_path / "log")  # fmt: skip
    assert 0.29 <= outcome.duration_s < 1.5


def test_peak_rss_of_the_process_tree(tmp_path: Path) -> None:
    grow = "b = bytearray(120 * 1024 * 1024); import time; time.sleep(0.8)"
    outcome = run_command(
        f"{sys.executable} -c '{grow}'", cwd=tmp_path, env=os.environ, timeout=20,
        log_path=tmp_path / "log", rss=RssSampler(interval=0.05),
    )  # fmt: skip
    assert outcome.ok
    assert outcome.peak_rss_mb is not None and 120 <= outcome.peak_rss_mb < 400


def test_read_tail_limits_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_tail(log, max_lines=3).splitlines() == ["line 97", "line 98", "line 99"]
    assert read_tail(tmp_path / "missing") == ""
