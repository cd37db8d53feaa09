#!/usr/bin/env python3
"""The delay stage of the emulated rural link: holds every IP packet for a fixed time, in userspace.

This kernel has no `netem`, so the one-way delay is done here. link.sh creates a persistent TUN device in the
link's middle namespace and routes every packet arriving from the box or the gateway into it; this program
reads each packet from the TUN device, keeps it for --delay-ms, and writes it back, where the kernel routes it
on towards its destination (then nftables loss and the tbf rate limit apply, see README.md).

The delay is the same for every packet, so a FIFO is enough: packets leave in the order they came, each at
its arrival time plus the delay (no reordering, no jitter). Standard library only: it runs wherever python3
does, nothing to build. It uses one epoll and a deque; at 10 Mbit/s it costs a few percent of one core.

Started and stopped by link.sh; the pid file is written once the TUN device is attached, which is how link.sh
knows the stage is ready. SIGTERM/SIGINT end it; SIGUSR1 prints the counters on stderr (link.sh's log).
"""

import argparse
import collections
import errno
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536
# Packets read in one wake-up before we look at the clock again; bounds the latency a burst adds.
READ_BATCH = 256


def attach(dev):
    """Opens /dev/net/tun and attaches to the (persistent, `ip tuntap add mode tun`) device `dev`."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    ifr = struct.pack("16sH22x", dev.encode(), IFF_TUN | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def write_pidfile(path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.rename(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", required=True, help="TUN device to attach to (must exist)")
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every packet")
    p.add_argument("--pidfile", help="written once the device is attached")
    p.add_argument("--prefix", default="", help="the link's prefix; only so that link.sh can find us")
    p.add_argument(
        "--max-queue-bytes",
        type=int,
        default=8 << 20,
        help="packets arriving while this much is held are dropped (a runaway sender must not eat memory)",
    )
    args = p.parse_args()
    delay_ns = int(args.delay_ms * 1_000_000)

    fd = attach(args.dev)
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)

    stats = {"in": 0, "out": 0, "dropped_full": 0, "write_errors": 0, "max_held": 0}

    class Stop(Exception):
        pass

    def on_stop(_signum, _frame):
        # Raised, not flagged: Python restarts an interrupted epoll wait by itself (PEP 475), so a flag would
        # only be seen after the wait's timeout.
        raise Stop()

    def on_usr1(_signum, _frame):
        print("delayline %s: %s held=%d" % (args.prefix, stats, len(held)), file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_usr1)

    held = collections.deque()  # (release time in ns, packet)
    if args.pidfile:
        write_pidfile(args.pidfile)
    print(
        "delayline %s: attached to %s, delay %.1f ms" % (args.prefix, args.dev, args.delay_ms),
        file=sys.stderr,
        flush=True,
    )

    try:
        relay(fd, ep, held, delay_ns, args.max_queue_bytes, stats)
    except Stop:
        pass
    print("delayline %s: stopping: %s held=%d" % (args.prefix, stats, len(held)), file=sys.stderr, flush=True)
    if args.pidfile:
        try:
            with open(args.pidfile) as f:
                ours = f.read().strip() == str(os.getpid())
            if ours:  # a successor may already have written its own
                os.unlink(args.pidfile)
        except FileNotFoundError:
            pass


def relay(fd, ep, held, delay_ns, max_queue_bytes, stats):
    """Reads packets into `held` and writes them back once their time has come, until a signal stops us."""
    held_bytes = 0
    monotonic_ns = time.monotonic_ns
    read = os.read
    write = os.write
    while True:
        if held:
            timeout = max(0.0, (held[0][0] - monotonic_ns()) / 1e9)
        else:
            timeout = -1  # nothing held: sleep until a packet comes (a signal ends the wait by raising)
        try:
            events = ep.poll(timeout)
        except InterruptedError:
            continue
        if events:
            now = monotonic_ns()
            for _ in range(READ_BATCH):
                try:
                    pkt = read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                stats["in"] += 1
                if held_bytes + len(pkt) > max_queue_bytes:
                    stats["dropped_full"] += 1
                    continue
                held.append((now + delay_ns, pkt))
                held_bytes += len(pkt)
            if len(held) > stats["max_held"]:
                stats["max_held"] = len(held)
        now = monotonic_ns()
        while held and held[0][0] <= now:
            _, pkt = held.popleft()
            held_bytes -= len(pkt)
            try:
                write(fd, pkt)
                stats["out"] += 1
            except OSError as e:
                # EIO when the device is down, EINVAL for a malformed packet, ENOBUFS under memory pressure:
                # the packet is lost, as on a real line; TCP retransmits.
                stats["write_errors"] += 1
                if e.errno not in (errno.EIO, errno.EINVAL, errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM):
                    raise


if __name__ == "__main__":
    main()
