#!/usr/bin/env python3
"""Client side of tests/bench/http.sh: the parts of the benchmark that wrk cannot do.

Subcommands (all talk to 127.0.0.1 only and are bounded in count):
  login PORT LOGIN PASSWORD                    print the relais_session token of one login
  mkusers PORT TOKEN PREFIX COUNT PASSWORD     create COUNT teachers PREFIX001.. through the admin API
  logins PORT PREFIX COUNT PASSWORD            COUNT simultaneous logins of COUNT different users
  sessions PORT PID PREFIX USERS COUNT PASSWORD LIMIT_MIB
                                               COUNT logins (round-robin over USERS users), each keeping its
                                               keep-alive connection open after one authenticated GET /api/me,
                                               then read the server's memory from /proc/PID/status; stops
                                               logging in early if the server's RSS passes LIMIT_MIB

Results go to stdout as `key=value` lines for the shell to read; progress and errors go to stderr. Any
unexpected answer from the server is an error (exit 1) naming the request and the status.
"""

import http.client
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HOST = "127.0.0.1"
TIMEOUT = 120  # seconds for any one request; every loop below is bounded in count


class BenchError(Exception):
    pass


def login_on(conn, login, password):
    """Logs in on an open connection; returns the session token."""
    body = json.dumps({"login": login, "password": password})
    conn.request("POST", "/api/login", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise BenchError(f"POST /api/login as {login}: HTTP {resp.status} {data[:200]!r}")
    for name, value in resp.getheaders():
        if name.lower() == "set-cookie":
            pair = value.split(";", 1)[0].strip()
            if pair.startswith("relais_session="):
                return pair[len("relais_session="):]
    raise BenchError(f"POST /api/login as {login}: 200 but no relais_session cookie")


def cmd_login(port, login, password):
    conn = http.client.HTTPConnection(HOST, int(port), timeout=TIMEOUT)
    print(login_on(conn, login, password))
    conn.close()


def user_login(prefix, i):
    return f"{prefix}{i + 1:03d}"


def cmd_mkusers(port, token, prefix, count, password):
    conn = http.client.HTTPConnection(HOST, int(port), timeout=TIMEOUT)
    for i in range(int(count)):
        login = user_login(prefix, i)
        body = json.dumps({
            "login": login,
            "display_name": f"Bench {i + 1}",
            "role": "teacher",
            "password": password,
            "classes": [],
        })
        conn.request("POST", "/api/admin/users", body=body, headers={
            "Content-Type": "application/json",
            "Cookie": f"relais_session={token}",
        })
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 201:
            raise BenchError(f"POST /api/admin/users {login}: HTTP {resp.status} {data[:200]!r}")
        if resp.will_close:
            conn.close()
            conn = http.client.HTTPConnection(HOST, int(port), timeout=TIMEOUT)
    conn.close()
    print(f"created={count}")


def cmd_logins(port, prefix, count, password):
    count = int(count)
    # One login alone first, for context: the concurrent figure is about count x this / cores.
    solo = []
    for i in range(3):
        conn = http.client.HTTPConnection(HOST, int(port), timeout=TIMEOUT)
        conn.connect()
        t0 = time.perf_counter()
        login_on(conn, user_login(prefix, i), password)
        solo.append(time.perf_counter() - t0)
        conn.close()

    # Connections are opened before the start line so that only the logins themselves are timed.
    conns = [http.client.HTTPConnection(HOST, int(port), timeout=TIMEOUT) for _ in range(count)]
    for c in conns:
        c.connect()
    barrier = threading.Barrier(count)
    starts, ends, errors = [0.0] * count, [0.0] * count, []

    def one(i):
        try:
            barrier.wait(timeout=30)
            starts[i] = time.perf_counter()
            login_on(conns[i], user_login(prefix, i), password)
            ends[i] = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            errors.append(f"{user_login(prefix, i)}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    for c in conns:
        c.close()
    if errors:
        raise BenchError(f"{len(errors)} of {count} concurrent logins failed; first: {errors[0]}")
    each = sorted(e - s for s, e in zip(starts, ends))
    print(f"wall_ms={(max(ends) - min(starts)) * 1000:.0f}")
    print(f"solo_ms={statistics.median(solo) * 1000:.0f}")
    print(f"first_ms={each[0] * 1000:.0f}")
    print(f"median_ms={statistics.median(each) * 1000:.0f}")


def proc_status(pid):
    """The memory lines of /proc/PID/status, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def open_fds(pid):
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


def cmd_sessions(port, pid, prefix, users, count, password, limit_mib):
    users, count, limit_kib = int(users), int(count), int(limit_mib) * 1024
    before = proc_status(pid)
    stop = threading.Event()  # set when the server's memory passes the limit: protects the machine

    def one(i):
        if stop.is_set():
            return None
        if proc_status(pid)["VmRSS"] > limit_kib:
            stop.set()
            return None
        conn = http.client.HTTPConnection(HOST, int(port), timeout=TIMEOUT)
        token = login_on(conn, user_login(prefix, i % users), password)
        conn.request("GET", "/api/me", headers={"Cookie": f"relais_session={token}"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BenchError(f"GET /api/me as {user_login(prefix, i % users)}: HTTP {resp.status} {data[:200]!r}")
        if resp.will_close:
            raise BenchError("the server closed the connection after GET /api/me (no keep-alive)")
        return conn, token

    t0 = time.perf_counter()
    # A few client threads keep the server's CPUs busy with logins without measuring the client.
    with ThreadPoolExecutor(max_workers=4) as pool:
        held = [h for h in pool.map(one, range(count)) if h is not None]
    login_s = time.perf_counter() - t0
    time.sleep(1.0)  # let the server settle (freed buffers, idle tasks) before reading its memory
    during = proc_status(pid)
    fds = open_fds(pid)

    # Check that the connections really were held: one more authenticated request on each.
    alive = 0
    for conn, token in held:
        try:
            conn.request("GET", "/api/me", headers={"Cookie": f"relais_session={token}"})
            resp = conn.getresponse()
            resp.read()
            alive += resp.status == 200
        except (OSError, http.client.HTTPException):
            pass
    for conn, _ in held:
        conn.close()

    print(f"rss_before_kib={before['VmRSS']}")
    print(f"rss_kib={during['VmRSS']}")
    print(f"hwm_kib={during['VmHWM']}")
    print(f"anon_kib={during.get('RssAnon', 0)}")
    print(f"file_kib={during.get('RssFile', 0)}")
    print(f"threads={during.get('Threads', 0)}")
    print(f"fds={fds}")
    print(f"held={len(held)}")
    print(f"alive={alive}")
    print(f"login_s={login_s:.1f}")


COMMANDS = {
    "login": cmd_login,
    "mkusers": cmd_mkusers,
    "logins": cmd_logins,
    "sessions": cmd_sessions,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except (BenchError, OSError, http.client.HTTPException, TypeError) as e:
        print(f"http_client.py {sys.argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
