#!/usr/bin/env python3
"""Load client for py_echo_server.py: many connections doing framed
round trips (4-byte struct.pack('i', n) length + n bytes), like
`skiff bench ping`.

The client runs in several processes (default: one per CPU) with threads
inside, so the client's own GIL is not what limits the figure: the server
under test is. Prints requests/s and latency percentiles; --json prints one
JSON object with the same field names as `skiff bench ping --json`.

Usage: py_echo_client.py [--host H] --port P -c CONNECTIONS -d SECONDS
                         [--size BYTES] [--procs N] [--json]
"""
import argparse
import json
import multiprocessing
import os
import socket
import struct
import sys
import threading
import time

HEAD = struct.Struct('i')


def recv_exact(conn, n):
    chunks = []
    while n:
        data = conn.recv(n)
        if not data:
            raise ConnectionError('server closed the connection')
        chunks.append(data)
        n -= len(data)
    return b''.join(chunks)


def connection_loop(host, port, payload, start_at, deadline, out):
    lat = []
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = HEAD.pack(len(payload)) + payload
    expect = payload.upper()
    while time.monotonic() < start_at:
        time.sleep(0.001)
    try:
        while True:
            t0 = time.monotonic()
            if t0 >= deadline:
                break
            s.sendall(request)
            (n,) = HEAD.unpack(recv_exact(s, HEAD.size))
            data = recv_exact(s, n) if n else b''
            lat.append(time.monotonic() - t0)
            if data != expect:
                raise ValueError('echo did not match')
    finally:
        s.close()
    out.extend(lat)


def process_main(host, port, conns, size, start_at, deadline, queue):
    payload = bytes(i % 26 + 97 for i in range(size))
    results = []
    threads = [threading.Thread(target=connection_loop,
                                args=(host, port, payload, start_at, deadline, results))
               for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 15))
    queue.put(results)


def quantile(sorted_values, q):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('-c', '--connections', type=int, default=16)
    ap.add_argument('-d', '--duration', type=float, default=10.0)
    ap.add_argument('--size', type=int, default=0)
    ap.add_argument('--procs', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args()
    if not (0 < args.duration <= 3600) or args.connections < 1:
        ap.error('need -c >= 1 and 0 < -d <= 3600')
    procs = max(1, min(args.procs, args.connections))
    # Everyone starts together, after every process had time to connect.
    start_at = time.monotonic() + 1.0
    deadline = start_at + args.duration
    queue = multiprocessing.Queue()
    workers = []
    for i in range(procs):
        conns = args.connections // procs + (1 if i < args.connections % procs else 0)
        p = multiprocessing.Process(target=process_main,
                                    args=(args.host, args.port, conns, args.size,
                                          start_at, deadline, queue))
        p.start()
        workers.append(p)
    lat = []
    for _ in workers:
        lat.extend(queue.get(timeout=args.duration + 30))
    for p in workers:
        p.join(timeout=5)
    lat.sort()
    report = {
        'connections': args.connections,
        'pipeline': 1,
        'size': args.size,
        'requests': len(lat),
        'seconds': args.duration,
        'requests_per_sec': len(lat) / args.duration,
        'latency': {
            'p50_ms': quantile(lat, 0.5) * 1000,
            'p99_ms': quantile(lat, 0.99) * 1000,
            'p999_ms': quantile(lat, 0.999) * 1000,
            'max_ms': (lat[-1] * 1000) if lat else 0.0,
        },
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['requests_per_sec']:.0f} requests/s over {args.connections} connections; "
              f"latency ms p50 {report['latency']['p50_ms']:.3f} p99 {report['latency']['p99_ms']:.3f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
