"""The harness that runs one program inside the sandboxed interpreter (``python -I -c <this source> <config>``).

It is sent as source text, not imported: the child starts with ``-I`` and cannot import adapterlab. Its settings come
as ``key=value`` arguments (lists joined by ``:``): importing json alone would cost 8 ms a program. In order:

1. read the nonce and the program from an inherited file descriptor (already unlinked on disk), close it;
2. in a mount namespace, give the program a private ``/tmp``, ``/var/tmp`` and ``/dev/shm`` and hide the home
   directories (re-exposing, read-only, only the Python installation under them);
3. set the resource limits (address space, CPU, file size, processes, open files, no core files);
4. when started as root, drop to an unprivileged uid of its own, so that the limits hold and nothing can be undone;
5. where there is no network namespace, replace the socket constructors (a speed bump, not a wall);
6. run the code in fresh globals, then the tests (the text after the last TESTS_MARKER) with a copy of the
   builtins taken before the code ran, and write the nonce to the result descriptor only after the tests returned.
   The exit is ``os._exit`` so that atexit hooks, finalisers and stray threads of the program never run after.
"""

import os
import sys

TESTS_MARKER = "\n# --- adapterlab sandbox: tests ---\n"
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 2, 4, 32, 4096, 16384
MS_RDONLY = 1


def _mount(libc, source, target, fstype, flags, data):
    if libc.mount(source, target.encode(), fstype, flags, data) != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), f"mount {target}")


def _private_filesystem(cfg):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    keep = [(os.open(path, os.O_PATH), path) for path in cfg["expose"]]
    for hidden in cfg["hide"]:
        _mount(libc, b"none", hidden, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
    for fd, path in keep:
        os.makedirs(path, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC, None)
        _mount(libc, None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        os.close(fd)
    size = f"size={cfg['tmp_mb']}m,mode=1777".encode()
    for scratch in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(scratch):
            _mount(libc, b"none", scratch, b"tmpfs", MS_NOSUID | MS_NODEV, size)
    os.makedirs("/tmp/work", mode=0o700)
    if cfg["uid"] is not None:
        os.chown("/tmp/work", cfg["uid"], cfg["uid"])
    os.chdir("/tmp/work")


def _limit(cfg):
    import resource

    mb = 1024 * 1024
    for name, value in (
        ("RLIMIT_AS", cfg["memory_mb"] * mb),
        ("RLIMIT_CPU", cfg["cpu_seconds"]),
        ("RLIMIT_FSIZE", cfg["file_size_mb"] * mb),
        ("RLIMIT_NPROC", cfg["processes"]),
        ("RLIMIT_NOFILE", cfg["open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def _drop(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    os.umask(0o077)


def _block_sockets():
    import _socket
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the adapterlab sandbox")

    for module in (socket, _socket):
        for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"):
            if hasattr(module, name):
                setattr(module, name, refuse)


def _one_line(exc, tests_source=None):
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None and tests_source is not None:
        lines = tests_source.splitlines()
        if 0 < line <= len(lines):
            text += f" (test line {line}: {lines[line - 1].strip()[:120]})"
    return " ".join(text.split())[:300]


def _settings(argv):
    cfg = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("hide", "expose"):
            cfg[key] = [p for p in value.split(":") if p]
        else:
            cfg[key] = None if value == "" else int(value)
    return cfg


def _main():
    cfg = _settings(sys.argv[1:])
    write, leave = os.write, os._exit
    with os.fdopen(cfg["input_fd"], "rb") as stream:
        data = stream.read()
    result_fd = cfg["result_fd"]

    def say(kind, text, code):
        try:
            write(result_fd, kind + " ".join(text.split()).encode("utf-8", "replace") + b"\n")
        finally:
            leave(code)

    nonce, _, source = data.partition(b"\n")
    try:
        if cfg["mounts"]:
            _private_filesystem(cfg)
        _limit(cfg)
        if cfg["uid"] is not None:
            _drop(cfg["uid"])
        if cfg["block_sockets"]:
            _block_sockets()
    except BaseException as exc:
        say(b"E", f"harness setup failed: {_one_line(exc)}", 3)

    def passed(token=nonce):
        write(result_fd, token)
        leave(0)

    del nonce, data
    text = source.decode("utf-8", "replace")
    code_text, marker, tests_text = text.rpartition(TESTS_MARKER)
    if not marker:
        code_text, tests_text = text, ""
    try:
        code = compile(code_text, "<program>", "exec", dont_inherit=True)
        tests = compile(tests_text, "<tests>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        say(b"E", _one_line(exc), 2)
    import builtins

    pristine = dict(builtins.__dict__)
    user_globals = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, user_globals)
        sys.settrace(None)
        sys.setprofile(None)
        test_globals = dict(user_globals)
        test_globals["__builtins__"] = dict(pristine)
        exec(tests, test_globals)
    except SystemExit as exc:
        say(b"F", f"SystemExit({exc.code!r}) before the tests finished", 1)
    except BaseException as exc:
        say(b"F", _one_line(exc, tests_text), 1)
    passed()


_main()
