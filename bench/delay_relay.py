#!/usr/bin/env python3
"""A TCP relay on loopback that adds a fixed round-trip time.

    delay_relay.py --listen PORT --to HOST:PORT --rtt-ms 50

Every byte is forwarded after RTT/2 in each direction, in order, so a
request-answer exchange through the relay costs at least one RTT. Nothing
is throttled: only latency is added (like `tc netem delay`, without root).
Prints "listening on 127.0.0.1:PORT" once it accepts connections (port 0
picks a free one). Standard library only.
"""

import argparse
import asyncio
import collections
import sys
import time


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk held back until delay has passed."""
    queue = collections.deque()
    ready = asyncio.Event()
    done = False

    async def feed():
        nonlocal done
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                queue.append((time.monotonic() + delay, data))
                ready.set()
        except (ConnectionError, OSError):
            pass
        done = True
        ready.set()

    feeder = asyncio.ensure_future(feed())
    try:
        while True:
            if not queue:
                if done:
                    break
                ready.clear()
                await ready.wait()
                continue
            due, data = queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            # Everything already due goes out in one write.
            now = time.monotonic()
            parts = []
            while queue and queue[0][0] <= now:
                parts.append(queue.popleft()[1])
            writer.write(b"".join(parts))
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        feeder.cancel()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--to", required=True)
    ap.add_argument("--rtt-ms", type=float, default=50.0)
    args = ap.parse_args()
    host, port = args.to.rsplit(":", 1)
    delay = args.rtt_ms / 2000.0

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, int(port))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, sw, delay), pump(sr, cw, delay))
        for w in (cw, sw):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
