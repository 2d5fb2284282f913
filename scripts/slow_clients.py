#!/usr/bin/env python3
"""Slow clients (slowloris): N connections, each sending one byte a second of a request it
never finishes in time, against a running `iolab serve`.

    scripts/slow_clients.py --port P --kind http|frame [--connections 1000] [--seconds 20]

`http` trickles an HTTP/1.1 head (a long one: it never ends within any sane timeout);
`frame` trickles the 40-byte header of a frame. The sends are spread evenly over each second
(N sends a second in all). A connection the server closes is counted and opened again, as a
real attacker would. Prints one JSON object when done: connections held, bytes trickled,
closes by the server, connections refused.
"""
import argparse
import json
import signal
import socket
import struct
import time

HTTP_HEAD = (b"GET /index.html HTTP/1.1\r\nHost: slow\r\n"
             + b"".join(b"X-Slow-%d: %s\r\n" % (i, b"y" * 40) for i in range(40)) + b"\r\n")
FRAME_HEAD = struct.pack("<IBBxxQQQII", 64, ord("Q"), 1, 7, 70, 0, 0xFFFFFFFF, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kind", choices=["http", "frame"], required=True)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--ready-file", help="touched once every connection is open")
    a = ap.parse_args()
    head = HTTP_HEAD if a.kind == "http" else FRAME_HEAD

    def open_one():
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(2)
        s.connect((a.host, a.port))
        s.setblocking(False)
        return s

    conns, offsets = [], []
    refused = 0
    # Connections arrive over one second, as an attacker's would, not all at once.
    opened = time.monotonic()
    for i in range(a.connections):
        delay = opened + i / a.connections - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conns.append(open_one())
        except OSError:
            conns.append(None)
            refused += 1
        offsets.append(0)
    if a.ready_file:
        open(a.ready_file, "w").close()
    closed_by_server = sent = 0
    stop = []
    # SIGTERM ends the run early (a script's background job cannot be stopped with SIGINT).
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    began = time.monotonic()
    n = len(conns)
    tick = 0
    while time.monotonic() - began < a.seconds and not stop:
        # Connection i sends at i/n of every second.
        i = tick % n
        due = began + tick / n
        tick += 1
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s = conns[i]
        if s is None:
            try:
                conns[i], offsets[i] = open_one(), 0
            except OSError:
                refused += 1
            continue
        try:
            # Anything to read means the server answered or closed: a close is what we count.
            try:
                if s.recv(1 << 16) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            s.send(head[offsets[i] % len(head):][:1])
            offsets[i] += 1
            sent += 1
        except OSError:
            closed_by_server += 1
            s.close()
            try:
                conns[i], offsets[i] = open_one(), 0
            except OSError:
                conns[i] = None
                refused += 1
    print(json.dumps({
        "kind": a.kind,
        "connections": a.connections,
        "bytes_trickled": sent,
        "closed_by_server": closed_by_server,
        "refused": refused,
    }))


if __name__ == "__main__":
    main()
