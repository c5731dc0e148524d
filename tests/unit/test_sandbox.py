"""The sandbox: pass@k by hand, program text, and a suite of hostile programs that must each be contained, scored
as a failure, and leave the host as it was (no stray process, no file outside the program's scratch space)."""

import math
import os
import secrets
import signal
import socket
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from adapterlab.sandbox import (
    TESTS_MARKER,
    Limits,
    Sandbox,
    SandboxError,
    check_program,
    pass_at_k,
    pass_at_k_table,
    syntax_valid,
)
from adapterlab.sandbox.core import machine_isolation
from adapterlab.sandbox.isolation import slot_uid

TOKEN = secrets.token_hex(6)
MARKER = f"adapterlab-hostile-{TOKEN}"  # in the command line of every process a hostile program tries to leave behind


# ---- pass@k -------------------------------------------------------------------------------------------------------


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every draw of 3 holds a correct one
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    with pytest.raises(ValueError, match="at least 6 samples"):
        pass_at_k(5, 1, 6)


def test_pass_at_k_table_skips_k_beyond_the_smallest_problem():
    correct = {"a": [True, False, False, False, False], "b": [True, True, False]}
    table = pass_at_k_table(correct, [1, 3, 5])
    assert set(table) == {1, 3}  # b has 3 samples: no pass@5
    assert table[1] == pytest.approx((0.2 + 2 / 3) / 2)
    assert table[3] == pytest.approx((pass_at_k(5, 1, 3) + 1.0) / 2)
    assert pass_at_k_table({}, [1]) == {}


def test_check_program_and_syntax():
    program = check_program("def f(x):\n    return x", "def check(candidate):\n    assert candidate(2) == 2", "f")
    assert program.index("def f") < program.index(TESTS_MARKER) < program.index("def check")
    assert program.rstrip().endswith("check(f)")
    assert "check(" not in check_program("x = 1", "assert x == 1", "f").split(TESTS_MARKER)[1].replace("assert", "")
    assert syntax_valid("def f():\n    return 1\n") and not syntax_valid("def f(:\n") and not syntax_valid("\0")


# ---- running programs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(Limits(timeout=3.0), workers=2)


def test_verdicts_keep_order_and_say_why(sandbox):
    good = check_program("def f(x):\n    return x + 1", "def check(c):\n    assert c(1) == 2", "f")
    wrong = check_program("def f(x):\n    return x", "def check(c):\n    assert c(1) == 2", "f")
    verdicts = sandbox.run([good, wrong, "def f(:\n", "while True:\n    pass\n"], label=None)
    assert [v.status for v in verdicts] == ["passed", "failed", "error", "timeout"]
    assert verdicts[0].passed and not any(v.passed for v in verdicts[1:])
    assert verdicts[1].detail.startswith("AssertionError") and "assert c(1) == 2" in verdicts[1].detail
    assert "SyntaxError" in verdicts[2].detail and verdicts[3].detail == "timed out after 3.0 s"
    assert sandbox.isolation


def test_calibrate_sets_the_timeout_and_names_a_failing_reference():
    box = Sandbox(Limits(timeout=5.0), workers=2)
    assert box.calibrate(["assert 1 + 1 == 2"] * 2, floor=1.5) == 1.5 == box.limits.timeout
    with pytest.raises(SandboxError, match="HumanEval/7: .*does not pass.*AssertionError"):
        box.calibrate(["assert True", "assert False"], names=["HumanEval/0", "HumanEval/7"])


def test_writes_to_tmp_stay_in_the_programs_scratch_space(sandbox):
    host = Path("/tmp") / f"{MARKER}.txt"
    verdict = sandbox.run([f"open({str(host)!r}, 'w').write('x')\n"], label=None)[0]
    assert not host.exists()
    if not machine_isolation().mounts:
        host.unlink(missing_ok=True)
        pytest.skip(f"no private /tmp here ({sandbox.isolation}); the program wrote to the host's /tmp: {verdict}")


# ---- hostile programs: each would pass if its attack worked ------------------------------------------------------


def hostile_programs(tmp: Path, port: int) -> dict[str, str]:
    escaped, secret = tmp / "escaped.txt", tmp / "secret.txt"
    home, ssh = str(Path.home()), str(Path.home() / ".ssh")
    me = os.getpid()
    sleeper = f"import sys, time; time.sleep(30)  # {MARKER}"
    failing_tests = "def check(candidate):\n    assert candidate(1) == 99\n"
    programs = {
        "fork_bomb": """
            import os
            for _ in range(300):
                if os.fork() == 0:
                    import time
                    time.sleep(30)
                    os._exit(0)
            """,
        "fork_bomb_spinning": """
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """,
        "thread_bomb": """
            import threading, time
            for _ in range(2000):
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
            """,
        "memory_bomb": "block = bytearray(8 * 1024 ** 3)\nblock[-1] = 1\n",
        "infinite_loop": "while True:\n    pass\n",
        "deep_recursion": """
            import sys
            sys.setrecursionlimit(10 ** 8)
            def down(n):
                return down(n + 1) + 1
            down(0)
            """,
        "write_outside": f"open({str(escaped)!r}, 'w').write('escaped')\n",
        "huge_file": "open('big.bin', 'wb').write(b'0' * (64 * 1024 * 1024))\n",
        "read_secret_file": f"assert open({str(secret)!r}).read() == 'hunter2'\n",
        "list_home_ssh": f"import os\nassert os.listdir({home!r}) and os.path.isdir({ssh!r})\n",
        "read_env_secret": "import os\nassert os.environ['ADAPTERLAB_TEST_SECRET'] == 'hunter2'\n",
        "connect_out": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n",
        "bind_listen": """
            import socket
            server = socket.socket()
            server.bind(('127.0.0.1', 0))
            server.listen()
            socket.create_connection(server.getsockname(), timeout=2)
            server.accept()
            """,
        "kill_parent": f"import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill({me}, signal.SIGKILL)\n",
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)\n"
        + failing_tests,
        "os_exit_zero": "import os\nos._exit(0)\n" + failing_tests,
        "sys_exit_zero": "import sys\nsys.exit(0)\n",
        "atexit_exit_zero": "import atexit, os\natexit.register(lambda: os._exit(0))\n" + failing_tests,
        "atexit_system_exit": """
            import atexit
            def leave():
                raise SystemExit(0)
            atexit.register(leave)
            raise SystemExit(0)
            """,
        "patch_builtins": """
            import builtins
            builtins.abs = lambda x: 0
            builtins.AssertionError = type('Quiet', (Exception,), {})
            def abs_check(candidate):
                pass
            """,
        "redefine_check": "def check(candidate):\n    return True\ncheck = check\n",
        "print_marker_close_stdout": "import os\nprint('passed')\nprint('{\"passed\": 1}')\nos.close(1)\nos.close(2)\n"
        + failing_tests,
        "write_every_fd": """
            import os
            for fd in range(3, 64):
                for guess in (b'0' * 32, b'passed', b'P'):
                    try:
                        os.write(fd, guess)
                    except OSError:
                        pass
            os._exit(0)
            """,
        "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "detached_child": f"""
            import os, sys
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, '-c', {sleeper!r}])
                os._exit(0)
            os.wait()
            os._exit(0)
            """,
        "ignore_sigterm": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "loop_in_del": textwrap.dedent(
            """
            class Stubborn:
                def __del__(self):
                    while True:
                        pass
            keep = Stubborn()
            """
        )
        + failing_tests,
        "loop_in_finally": "try:\n    assert False\nfinally:\n    while True:\n        pass\n",
        "swallow_tests_in_string": 'text = """\n',
        "settrace_skip": """
            import sys
            def tracer(frame, event, arg):
                return None
            sys.settrace(tracer)
            sys.setprofile(tracer)
            """,
        "unremovable_dir": "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').close()\n"
        + "os.chmod('a/b', 0)\nos.chmod('a', 0)\n"
        + failing_tests,
    }
    tests = {
        "patch_builtins": "def check(candidate):\n    assert abs(candidate(2) - 5) < 1e-9\n",
        "redefine_check": failing_tests,
        "sys_exit_zero": failing_tests,
        "settrace_skip": failing_tests,
        "swallow_tests_in_string": failing_tests,
    }
    candidate = "\ndef candidate(x):\n    return x\n"
    out = {}
    for name, code in programs.items():
        code = textwrap.dedent(code)
        test_text = tests.get(name, "")
        if test_text or "def check(" in code:
            code = code.replace(failing_tests, "") + candidate
            test_text = test_text or failing_tests
        out[name] = check_program(code, test_text, "candidate" if test_text else None)
    return out


def stray_processes(uids: set[int]) -> list[str]:
    """Processes whose command line carries this test's marker, or that run under this process's slot uids."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            owner = entry.stat().st_uid
        except OSError:
            continue
        if MARKER.encode() in cmdline or owner in uids:
            found.append(f"{entry.name}: {cmdline[:80]!r}")
    return found


def assert_no_strays(uids: set[int], within: float = 2.0) -> None:
    """No leftover after ``within`` seconds: a SIGKILLed process (or a killed pid namespace) stays in /proc until
    the kernel has torn it down, which takes a moment on a loaded machine."""
    deadline = time.monotonic() + within
    while stray_processes(uids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stray_processes(uids) == []


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "secret.txt").write_text("hunter2")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    programs = hostile_programs(tmp, listener.getsockname()[1])
    os.environ["ADAPTERLAB_TEST_SECRET"] = "hunter2"
    try:
        box = Sandbox(Limits(timeout=2.0, memory_mb=512, cpu_seconds=5), workers=2)
        verdicts = dict(zip(programs, box.run(list(programs.values()), label=None), strict=True))
        with pytest.raises(BlockingIOError):
            listener.setblocking(False)
            listener.accept()  # nobody connected from inside
    finally:
        os.environ.pop("ADAPTERLAB_TEST_SECRET", None)
        listener.close()
    return {"verdicts": verdicts, "tmp": tmp, "sandbox": box}


HOSTILE_NAMES = list(hostile_programs(Path("/x"), 1))


def test_the_hostile_suite_has_at_least_twenty_programs():
    assert len(HOSTILE_NAMES) >= 20


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_program_is_contained_and_fails(hostile, name):
    verdict = hostile["verdicts"][name]
    assert not verdict.passed, f"{name} passed: {verdict}"
    assert verdict.status in {"failed", "timeout", "error"}
    assert verdict.seconds < 2.0 + 1.5


def test_hostile_suite_leaves_the_host_unchanged(hostile):
    verdicts = hostile["verdicts"]
    assert verdicts["infinite_loop"].status == verdicts["ignore_sigterm"].status == "timeout"
    assert verdicts["huge_output"].detail.startswith("output over")
    assert verdicts["swallow_tests_in_string"].status == "error"
    assert not (hostile["tmp"] / "escaped.txt").exists()
    assert os.getpid() > 0 and os.getppid() > 1  # we are alive and still have our parent
    uids = {slot_uid(i) for i in range(hostile["sandbox"].workers)} if hostile["sandbox"].config.drop_uid else set()
    assert_no_strays(uids)
    # This process's sandbox folders (another test process may be running programs beside it) are all gone.
    assert list(Path(tempfile.gettempdir()).glob(f"adapterlab-sandbox-{os.getpid()}-*")) == []


def test_without_namespaces_sockets_are_disabled_and_leftovers_swept():
    from adapterlab.sandbox.isolation import candidates

    fallback = next(c for c in candidates() if not c.namespaces)
    box = Sandbox(Limits(timeout=2.0), workers=2, config=fallback)
    assert "sockets disabled" in box.isolation
    programs = hostile_programs(Path("/nonexistent"), 9)
    verdicts = box.run([programs["bind_listen"], programs["connect_out"], programs["detached_child"]], label=None)
    assert not any(v.passed for v in verdicts)
    assert "network access is disabled" in verdicts[0].detail
    uids = {slot_uid(i) for i in range(2)} if fallback.drop_uid else set()
    assert_no_strays(uids)


def test_a_program_cannot_signal_the_test_process(sandbox):
    before = signal.getsignal(signal.SIGUSR1)
    received = []
    signal.signal(signal.SIGUSR1, lambda *a: received.append(a))
    try:
        sandbox.run([f"import os, signal\nos.kill({os.getpid()}, signal.SIGUSR1)\n"], label=None)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    if not machine_isolation().namespaces and not machine_isolation().drop_uid:
        pytest.skip("no pid namespace and no own uid here: a program can signal its caller")
    assert received == []
