"""Both ends of TCP connections as real processes, for tcptrace's owner tests.

Usage: peers.py server HOST PORT N [--threaded]
         listen on HOST:PORT (0: any port), accept N connections (in a worker
         thread with --threaded); on the stdin line "close", close them all.
       peers.py client HOST PORT N EOF
         connect N times from a worker thread named "peer-worker" (so the
         thread's name is not the process's), then on EOF from the peer:
         EOF=now closes at once (as client libraries do), EOF=5ms after 5 ms,
         EOF=never keeps the socket (a CLOSE_WAIT leak).
HOST may be IPv4, IPv6 or IPv4-mapped IPv6 (::ffff:127.0.0.1, as a JVM uses).
Prints one JSON line once set up: {"pid": PID, "port": PORT, "lports": [...]},
a second {"closed": K} line when K sockets were closed on EOF (client), and
waits until stdin closes.
"""
import ctypes
import json
import os
import selectors
import socket
import sys
import threading
import time

role, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET


def name_thread(name):
    # PR_SET_NAME: the thread's comm, as JVMs name theirs.
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)


def say(**kv):
    print(json.dumps(kv), flush=True)


if role == "server":
    threaded = "--threaded" in sys.argv
    l = socket.socket(family, socket.SOCK_STREAM)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((host, port))
    l.listen(n + 16)
    accepted = []

    def accept_all():
        if threaded:
            name_thread("peer-acceptor")
        for _ in range(n):
            accepted.append(l.accept()[0])

    say(pid=os.getpid(), port=l.getsockname()[1], lports=[])
    if threaded:
        t = threading.Thread(target=accept_all)
        t.start()
        t.join()
    else:
        accept_all()
    for line in sys.stdin:
        if line.strip() == "close":
            for s in accepted:
                s.close()
            say(closed=len(accepted))
    sys.exit(0)

eof = sys.argv[5]
socks = []


def connect_all():
    name_thread("peer-worker")
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.connect((host, port))
        socks.append(s)


t = threading.Thread(target=connect_all)
t.start()
t.join()
say(pid=os.getpid(), port=port, lports=[s.getsockname()[1] for s in socks])


def close_on_eof():
    name_thread("peer-reader")
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    while closed < n:
        for key, _ in sel.select():
            if key.fileobj.recv(4096) == b"":
                sel.unregister(key.fileobj)
                if eof == "5ms":
                    time.sleep(0.005)
                key.fileobj.close()
                closed += 1
    say(closed=closed)


if eof in ("now", "5ms"):
    threading.Thread(target=close_on_eof, daemon=True).start()
sys.stdin.read()
