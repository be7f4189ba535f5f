#!/usr/bin/env python3
"""Upper-case echo server in the socket tutorial's style, for comparison.

socketserver.ThreadingTCPServer, one thread per connection, each message
framed as the tutorial fixes the "sticky packet" problem: a 4-byte
struct.pack('i', n) length, then n bytes. The reply is framed the same way
and carries the message upper-cased. No authentication, no encryption:
this is the baseline a tutorial reader would write.

Usage: py_echo_server.py [--host 127.0.0.1] [--port 9999]
Prints "listening on HOST:PORT" once bound (port 0 picks a free port).
"""
import argparse
import socket
import socketserver
import struct
import sys

HEAD = struct.Struct('i')
MAX_MESSAGE = 8 * 1024 * 1024


def recv_exact(conn, n):
    """Reads exactly n bytes, or returns None when the peer closed."""
    chunks = []
    while n:
        data = conn.recv(n)
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b''.join(chunks)


class UpperEcho(socketserver.BaseRequestHandler):
    def handle(self):
        conn = self.request
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            head = recv_exact(conn, HEAD.size)
            if head is None:
                break
            (n,) = HEAD.unpack(head)
            if n < 0 or n > MAX_MESSAGE:
                break
            data = recv_exact(conn, n) if n else b''
            if data is None:
                break
            conn.sendall(HEAD.pack(len(data)) + data.upper())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=9999)
    args = ap.parse_args()
    with Server((args.host, args.port), UpperEcho) as server:
        host, port = server.server_address[:2]
        print(f'listening on {host}:{port}', flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
