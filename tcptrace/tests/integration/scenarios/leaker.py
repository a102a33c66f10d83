"""Real processes that leak CLOSE_WAIT sockets, for tcptrace's leak tests.

Usage: leaker.py MODE N PORT [HOST]
  client  connect N times to HOST:PORT and never close (the test server closes)
  fork    connect N times, fork; the parent closes its copies, the child keeps them
  scm     fork a receiver, connect N times, pass the sockets over a unix socket
          with SCM_RIGHTS, close our copies: only the receiver holds them
  rlimit  like client, after lowering RLIMIT_NOFILE to N + 10
  server  listen on HOST:0 and accept N connections from ourselves, never closing
          the accepted side (the connecting side closes at once)
  listen-close  listen on HOST:0, accept N connections and close them (the
          peer of a `client` leak; PORT is ignored)
Prints one JSON line {"holder": PID, "others": [PIDS], "port": PORT} once set up,
then waits until stdin closes.
"""
import json
import os
import resource
import socket
import sys

mode, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
family = socket.AF_INET6 if ":" in host else socket.AF_INET


def connect_all():
    socks = []
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.connect((host, port))
        socks.append(s)
    return socks


def ready(holder, others=(), port=port):
    print(json.dumps({"holder": holder, "others": list(others), "port": port}), flush=True)


def wait_stdin():
    sys.stdin.read()


if mode == "client":
    keep = connect_all()
    ready(os.getpid())
    wait_stdin()
elif mode == "rlimit":
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 10, n + 10))
    keep = connect_all()
    ready(os.getpid())
    wait_stdin()
elif mode == "fork":
    keep = connect_all()
    child = os.fork()
    if child == 0:
        wait_stdin()
        os._exit(0)
    for s in keep:
        s.close()
    ready(child, [os.getpid()])
    wait_stdin()
    os.kill(child, 9)
elif mode == "scm":
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        a.close()
        got = []
        while len(got) < n:
            _, fds, _, _ = socket.recv_fds(b, 16, 16)
            got.extend(fds)
        b.sendall(b"k")
        wait_stdin()
        os._exit(0)
    b.close()
    keep = connect_all()
    for s in keep:
        socket.send_fds(a, [b"x"], [s.fileno()])
    a.recv(1)  # the receiver has them all
    for s in keep:
        s.close()
    ready(child, [os.getpid()])
    wait_stdin()
    os.kill(child, 9)
elif mode == "server":
    l = socket.socket(family, socket.SOCK_STREAM)
    l.bind((host, 0))
    l.listen(n + 16)
    lport = l.getsockname()[1]
    keep = []
    for _ in range(n):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect((host, lport))
        s, _ = l.accept()
        keep.append(s)
        c.close()
    ready(os.getpid(), port=lport)
    wait_stdin()
elif mode == "listen-close":
    l = socket.socket(family, socket.SOCK_STREAM)
    l.bind((host, 0))
    l.listen(n + 16)
    ready(os.getpid(), port=l.getsockname()[1])
    for _ in range(n):
        s, _ = l.accept()
        s.close()
    wait_stdin()
else:
    sys.exit("unknown mode " + mode)
