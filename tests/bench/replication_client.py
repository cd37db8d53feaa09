#!/usr/bin/env python3
"""Helpers of tests/bench/replication.sh (Python 3 standard library only).

Data sets (written on the host, read by both relais and rsync):
  gen-day DIR --scale S         the school day: 300 files, some identical (prints JSON: files, bytes, unique)
  gen-home DIR --scale S        100 documents a teacher adds from home (prints JSON)
  gen-edits DIR --files N --mb M   N files of M MB (prints JSON)
  edit DIR                      edits inside each file of gen-edits, in place (prints JSON: bytes changed)
  gen-big FILE --bytes N        one incompressible file
  unique DIR                    JSON: files, bytes, unique (bytes of distinct contents)

HTTP (run inside the box's or the gateway's namespace, through `link.sh exec`):
  user   --url U --admin-password P --login L --password W --classe C    creates a teacher (idempotent)
  upload --url U --login L --password W --src DIR --dest VIEW/          PUT every file of DIR under VIEW/
  listing --url U --login L --password W --dest VIEW/ [--ca PEM]        JSON {path: etag} of what is there
  wait   --url U --ca PEM --login L --password W --dest VIEW/ --expect JSON [--admin-password P] [--timeout S]
         polls until the gateway lists exactly the expected files and ETags; prints JSON with the seconds
         it took, and with --admin-password the gateway's chunk bytes received and when the first arrived
  wait-user --url U --ca PEM --admin-password P --login L [--timeout S]   until the account reached the gateway

Exit status: 0 done; 1 failed (message on stderr).
"""

import argparse
import hashlib
import http.client
import json
import math
import os
import random
import ssl
import sys
import time
import urllib.parse


def die(msg):
    print("replication_client.py: " + msg, file=sys.stderr)
    sys.exit(1)


# --- data sets ------------------------------------------------------------------------------------------------


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def tree(root):
    """Relative path -> absolute path of every file under root, sorted."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = full
    return dict(sorted(out.items()))


def summary(root):
    files, total, seen = 0, 0, {}
    for _, full in tree(root).items():
        h = hashlib.sha256()
        size = 0
        with open(full, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                h.update(block)
                size += len(block)
        files += 1
        total += size
        seen[h.hexdigest()] = size
    return {"files": files, "bytes": total, "unique": sum(seen.values())}


def gen_day(root, scale, seed=2026):
    """A school day of 300 files, sizes divided by `scale`: 4 videos of 50 MB (one also handed in by a pupil),
    251 documents of 50 KB-2 MB (log-uniform), and 4 worksheets the teacher hands out that 10 pupils each hand
    back unchanged (4 + 1 + 251 + 4 + 40)."""
    rng = random.Random(seed)
    mb = 1_000_000
    videos = [rng.randbytes(int(50 * mb / scale)) for _ in range(4)]
    for i, v in enumerate(videos):
        write(os.path.join(root, "cours", f"video-{i}.mp4"), v)
    write(os.path.join(root, "eleves", "eleve-07", "expose-video.mp4"), videos[2])
    lo, hi = math.log(50_000 / scale), math.log(2 * mb / scale)
    for i in range(251):
        size = int(math.exp(rng.uniform(lo, hi)))
        kind = ("pdf", "odt", "docx", "jpg", "ods")[i % 5]
        where = "cours" if i < 51 else os.path.join("eleves", f"eleve-{i % 25:02d}")
        write(os.path.join(root, where, f"doc-{i:03d}.{kind}"), rng.randbytes(size))
    for w in range(4):
        sheet = rng.randbytes(int(math.exp(rng.uniform(lo, hi))))
        write(os.path.join(root, "cours", f"fiche-{w}.pdf"), sheet)
        for p in range(10):
            write(os.path.join(root, "eleves", f"eleve-{(p * 2 + w) % 25:02d}", f"fiche-{w}-rendue.pdf"), sheet)


def gen_home(root, scale, seed=2027):
    """What a teacher puts in from home for the class: 100 documents of 50 KB-2 MB (log-uniform), sizes divided
    by `scale`."""
    rng = random.Random(seed)
    lo, hi = math.log(50_000 / scale), math.log(2_000_000 / scale)
    for i in range(100):
        size = int(math.exp(rng.uniform(lo, hi)))
        write(os.path.join(root, f"seance-{i // 10}", f"ressource-{i:03d}.pdf"), rng.randbytes(size))


def gen_edits(root, files, mb, seed=77):
    rng = random.Random(seed)
    for i in range(files):
        write(os.path.join(root, f"grand-{i}.bin"), rng.randbytes(int(mb * 1_000_000)))


def edit(root, seed=78):
    """In each file: 4 KiB overwritten at 20 %, 1 KiB inserted at 50 %, 2 KiB deleted at 80 %."""
    rng = random.Random(seed)
    changed = 0
    for _, full in tree(root).items():
        with open(full, "rb") as f:
            data = bytearray(f.read())
        n = len(data)
        at = n // 5
        data[at : at + 4096] = rng.randbytes(4096)
        at = n // 2
        data[at:at] = rng.randbytes(1024)
        at = n * 4 // 5
        del data[at : at + 2048]
        with open(full, "wb") as f:
            f.write(data)
        changed += 4096 + 1024
    return {"files": len(tree(root)), "changed": changed}


# --- HTTP -----------------------------------------------------------------------------------------------------


class Http:
    """One keep-alive connection with a session cookie; reconnects when the server closed it."""

    def __init__(self, url, ca=None):
        u = urllib.parse.urlsplit(url)
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.https else 80)
        self.ctx = ssl.create_default_context(cafile=ca) if self.https else None
        self.conn = None
        self.cookie = None

    def _connect(self):
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=120)
        return http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookie:
            headers["Cookie"] = self.cookie
        for attempt in range(2):
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, resp, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def login(self, login, password):
        status, resp, data = self.request(
            "POST",
            "/api/login",
            json.dumps({"login": login, "password": password}),
            {"Content-Type": "application/json"},
        )
        if status != 200:
            die(f"login {login} at {self.host}:{self.port}: {status} {data[:200]!r}")
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie" and value.startswith("relais_session="):
                self.cookie = value.split(";", 1)[0]
        return self


def files_path(view):
    return "/api/files/" + urllib.parse.quote(view, safe="/")


def listing(client, dest):
    """path relative to dest -> etag of every file under dest (empty if dest does not exist yet)."""
    out, todo = {}, [""]
    while todo:
        sub = todo.pop()
        status, _, data = client.request("GET", files_path(dest + sub))
        if status == 404:
            continue
        if status != 200:
            die(f"listing {dest + sub}: {status} {data[:200]!r}")
        for e in json.loads(data):
            if e["dir"]:
                todo.append(sub + e["name"] + "/")
            else:
                out[sub + e["name"]] = e["etag"]
    return dict(sorted(out.items()))


def chunk_bytes_in(admin):
    status, _, data = admin.request("GET", "/metrics")
    if status != 200:
        die(f"/metrics: {status}")
    for line in data.decode().splitlines():
        if line.startswith('relais_sync_chunk_bytes_total{direction="in"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def cmd_user(a):
    admin = Http(a.url, a.ca).login("admin", a.admin_password)
    body = {
        "login": a.login,
        "display_name": a.login,
        "role": "teacher",
        "password": a.password,
        "classes": [a.classe],
        "children": [],
    }
    status, _, data = admin.request(
        "POST", "/api/admin/users", json.dumps(body), {"Content-Type": "application/json"}
    )
    if status not in (201, 409):
        die(f"creating {a.login}: {status} {data[:200]!r}")


def cmd_metrics(a):
    """The box's replication counters (from its loopback: no login needed), as JSON."""
    client = Http(a.url, a.ca)
    status, _, data = client.request("GET", "/metrics")
    if status != 200:
        die(f"/metrics: {status}")
    out = {}
    for line in data.decode().splitlines():
        for name in ("relais_uplink_bytes_total", "relais_sync_chunk_bytes_total", "relais_sync_sessions_total"):
            if line.startswith(name + "{"):
                series, value = line.rsplit(" ", 1)
                out[series[len("relais_"):].replace('"', "")] = int(float(value))
    print(json.dumps(out))


def cmd_upload(a):
    client = Http(a.url, a.ca).login(a.login, a.password)
    for rel, full in tree(a.src).items():
        with open(full, "rb") as f:
            data = f.read()
        status, _, body = client.request(
            "PUT", files_path(a.dest + rel), data, {"Content-Type": "application/octet-stream"}
        )
        if status not in (201, 204):
            die(f"PUT {a.dest + rel}: {status} {body[:200]!r}")


def cmd_listing(a):
    client = Http(a.url, a.ca).login(a.login, a.password)
    print(json.dumps(listing(client, a.dest)))


def cmd_wait(a):
    with open(a.expect) as f:
        expected = json.load(f)
    admin = Http(a.url, a.ca).login("admin", a.admin_password) if a.admin_password else None
    before = chunk_bytes_in(admin) if admin else 0
    client = Http(a.url, a.ca).login(a.login, a.password)
    start = time.monotonic()
    first = None
    while True:
        now = time.monotonic()
        if admin and first is None and chunk_bytes_in(admin) > before:
            first = now - start
        got = listing(client, a.dest)
        if got == expected:
            done = time.monotonic() - start
            result = {"seconds": round(done, 3)}
            if admin:
                result["chunk_bytes_in"] = chunk_bytes_in(admin) - before
                result["first_chunk"] = round(first if first is not None else done, 3)
            print(json.dumps(result))
            return
        if now - start > a.timeout:
            missing = [p for p in expected if got.get(p) != expected[p]]
            extra = [p for p in got if p not in expected]
            die(f"after {a.timeout} s the gateway lacks {len(missing)} files {missing[:5]} and has {len(extra)} more {extra[:5]}")
        time.sleep(0.2)


def cmd_wait_user(a):
    admin = Http(a.url, a.ca).login("admin", a.admin_password)
    start = time.monotonic()
    while time.monotonic() - start < a.timeout:
        status, _, data = admin.request("GET", "/api/admin/users")
        if status == 200 and any(u.get("login") == a.login for u in json.loads(data)):
            return
        time.sleep(0.5)
    die(f"{a.login} did not reach the gateway within {a.timeout} s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("gen-day")
    s.add_argument("dir")
    s.add_argument("--scale", type=float, default=10)
    s = sub.add_parser("gen-home")
    s.add_argument("dir")
    s.add_argument("--scale", type=float, default=10)
    s = sub.add_parser("gen-edits")
    s.add_argument("dir")
    s.add_argument("--files", type=int, default=10)
    s.add_argument("--mb", type=float, default=100)
    s = sub.add_parser("edit")
    s.add_argument("dir")
    s = sub.add_parser("gen-big")
    s.add_argument("file")
    s.add_argument("--bytes", type=int, required=True)
    s = sub.add_parser("unique")
    s.add_argument("dir")
    s = sub.add_parser("metrics")
    s.add_argument("--url", required=True)
    s.add_argument("--ca")
    for name in ("user", "upload", "listing", "wait", "wait-user"):
        s = sub.add_parser(name)
        s.add_argument("--url", required=True)
        s.add_argument("--ca")
        s.add_argument("--login", required=True)
        s.add_argument("--password")
        s.add_argument("--admin-password")
        s.add_argument("--dest")
        s.add_argument("--src")
        s.add_argument("--expect")
        s.add_argument("--classe", default="CM2")
        s.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args()
    if a.cmd == "gen-day":
        gen_day(a.dir, a.scale)
        print(json.dumps(summary(a.dir)))
    elif a.cmd == "gen-home":
        gen_home(a.dir, a.scale)
        print(json.dumps(summary(a.dir)))
    elif a.cmd == "gen-edits":
        gen_edits(a.dir, a.files, a.mb)
        print(json.dumps(summary(a.dir)))
    elif a.cmd == "edit":
        print(json.dumps(edit(a.dir)))
    elif a.cmd == "gen-big":
        write(a.file, random.Random(99).randbytes(a.bytes))
    elif a.cmd == "unique":
        print(json.dumps(summary(a.dir)))
    elif a.cmd == "metrics":
        cmd_metrics(a)
    else:
        {"user": cmd_user, "upload": cmd_upload, "listing": cmd_listing, "wait": cmd_wait, "wait-user": cmd_wait_user}[
            a.cmd
        ](a)


if __name__ == "__main__":
    main()
