#!/usr/bin/env python3
"""The unfinished-frame flood of issue 19, against a running `iolab serve`.

N connections each send the header of a legal 16 MiB echo frame and then 15 MiB of its
payload, and stop: a server that buffers without bound holds N x 15 MiB. The flood sends
without blocking (a connection the server does not read is simply left behind), then holds
the connections open while it samples the server's resident memory; meanwhile a
well-behaved client sends small requests on a fresh connection and must be answered.

    scripts/memory_flood.py --port 7000 --pid PID [--connections 200] [--hold 10]

Prints one JSON object: peak and final RSS, bytes the flood got into the server, and the
well-behaved client's replies and worst round trip.
"""
import argparse
import json
import selectors
import socket
import struct
import time

FRAME = 16 << 20
SENT_OF_IT = 15 << 20


def request_header(req_id, payload_len, reply_echo=True):
    # The 40-byte request header (little-endian): payload_len u32, kind b'Q', version 1, two
    # zero bytes, id u64, send_ns u64, spin_ns u64, reply u32 (u32::MAX = echo), reserved u32.
    reply = 0xFFFFFFFF if reply_echo else 0
    return struct.pack("<IBBxxQQQII", payload_len, ord("Q"), 1, req_id, req_id * 10, 0, reply, 0)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def small_round_trip(sock, req_id):
    """One 64 B echo on the well-behaved connection; returns its round trip in seconds."""
    body = bytes((req_id + i) % 251 for i in range(64))
    began = time.monotonic()
    sock.sendall(request_header(req_id, 64) + body)
    want = 24 + 64
    got = b""
    while len(got) < want:
        chunk = sock.recv(want - len(got))
        if not chunk:
            raise RuntimeError("the server closed the well-behaved connection")
        got += chunk
    return time.monotonic() - began


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (for its RSS)")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--send-for", type=float, default=20.0, help="seconds the flood may take to send")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds to hold the flood open after")
    a = ap.parse_args()

    payload = bytes(i % 251 for i in range(1 << 20))
    sel = selectors.DefaultSelector()
    left = {}
    sent = {}
    for i in range(a.connections):
        s = socket.create_connection((a.host, a.port))
        s.setblocking(False)
        s.send(request_header(1000 + i, FRAME))
        left[s] = SENT_OF_IT
        sent[s] = 0
        sel.register(s, selectors.EVENT_WRITE)
    good = socket.create_connection((a.host, a.port))
    good.settimeout(30)
    rtts = [small_round_trip(good, 1)]
    peak = rss_bytes(a.pid)
    deadline = time.monotonic() + a.send_for
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            off = sent[s] % len(payload)
            try:
                n = s.send(payload[off : off + min(left[s], len(payload) - off)])
            except BlockingIOError:
                continue
            sent[s] += n
            left[s] -= n
            if left[s] == 0:
                sel.unregister(s)
                del left[s]
        peak = max(peak, rss_bytes(a.pid))
    flood_done = time.monotonic()
    while time.monotonic() - flood_done < a.hold:
        rtts.append(small_round_trip(good, 2 + len(rtts)))
        peak = max(peak, rss_bytes(a.pid))
        time.sleep(0.5)
    total = sum(sent.values())
    print(json.dumps({
        "connections": a.connections,
        "flood_bytes_sent": total,
        "flood_connections_fully_sent": sum(1 for v in sent.values() if v == SENT_OF_IT),
        "server_rss_peak_mib": round(peak / (1 << 20), 1),
        "server_rss_final_mib": round(rss_bytes(a.pid) / (1 << 20), 1),
        "well_behaved_replies": len(rtts),
        "well_behaved_worst_rtt_ms": round(max(rtts) * 1e3, 2),
    }))


if __name__ == "__main__":
    main()
