"""Bounded closed-loop HTTP load generator (run as its own process by bench/cloud_bench.py).

`--procs` processes x `--threads` threads, each thread one keep-alive connection sending requests back to
back for `--duration` seconds (closed loop: at most procs x threads requests in flight). The requests come
from a body file (length-prefixed bodies, cycled; each thread starts at its own offset). Prints one JSON
object: requests, errors, status counts, req/s, latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import struct
import threading
import time
from urllib.parse import urlsplit

import numpy as np


def read_bodies(path: str | None) -> list[bytes]:
    if path is None:
        return [b""]
    data = open(path, "rb").read()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<I", data, i)
        out.append(data[i + 4: i + 4 + n])
        i += 4 + n
    return out


def write_bodies(path: str, bodies: list[bytes]) -> None:
    with open(path, "wb") as f:
        for b in bodies:
            f.write(struct.pack("<I", len(b)) + b)


def _proc(args: dict, start_at: float, q) -> None:
    u = urlsplit(args["url"])
    bodies = read_bodies(args["bodies"])
    headers = {"Content-Type": args["content_type"], "Accept": "application/x-protobuf"} if args["method"] == "POST" \
        else {}
    lat: list[list[float]] = []
    errors = [0]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def run(tid: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        mine: list[float] = []
        k = (args["proc_index"] * args["threads"] + tid) * 7919
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + args["duration"]
        while True:
            t0 = time.perf_counter()
            if time.time() >= end:
                break
            body = bodies[k % len(bodies)]
            k += 1
            try:
                conn.request(args["method"], u.path, body=body if args["method"] == "POST" else None, headers=headers)
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                conn.close()
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - t0)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()
        with lock:
            lat.append(mine)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(args["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.put({"lat": [x for m in lat for x in m], "errors": errors[0], "statuses": statuses})


def run_load(url: str, *, method: str = "GET", bodies: str | None = None, content_type: str = "",
             duration: float = 5.0, procs: int = 1, threads: int = 8) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 1.0 + 0.3 * procs
    base = {"url": url, "method": method, "bodies": bodies, "content_type": content_type, "duration": duration,
            "threads": threads}
    ps = [ctx.Process(target=_proc, args=({**base, "proc_index": i}, start_at, q)) for i in range(procs)]
    for p in ps:
        p.start()
    parts = [q.get() for _ in ps]
    for p in ps:
        p.join()
    lat = np.array([x for p in parts for x in p["lat"]], dtype=np.float64) * 1e3
    statuses: dict[str, int] = {}
    for p in parts:
        for s, n in p["statuses"].items():
            statuses[str(s)] = statuses.get(str(s), 0) + n
    ok = statuses.get("200", 0)
    pct = (lambda q_: float(np.percentile(lat, q_))) if lat.size else (lambda q_: float("nan"))
    return {"url": url, "method": method, "client": "python", "duration_s": duration, "concurrency": procs * threads,
            "requests": int(lat.size), "ok": ok, "errors": sum(p["errors"] for p in parts), "statuses": statuses,
            "rps": ok / duration, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": float(lat.max()) if lat.size else float("nan")}


_WRK_LUA = r"""
local bodies, n, i = {}, 0, 0
local path_, method_, ctype_ = "%(path)s", "%(method)s", "%(ctype)s"
function init(args)
  if "%(bodies)s" ~= "" then
    local f = assert(io.open("%(bodies)s", "rb"))
    local data = f:read("*a")
    f:close()
    local pos = 1
    while pos <= #data do
      local b1, b2, b3, b4 = data:byte(pos, pos + 3)
      local len = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
      n = n + 1
      bodies[n] = data:sub(pos + 4, pos + 3 + len)
      pos = pos + 4 + len
    end
  end
  i = math.random(1, math.max(n, 1))
end
function request()
  if n == 0 then return wrk.format(method_, path_) end
  i = i %% n + 1
  return wrk.format(method_, path_, {["Content-Type"] = ctype_, ["Accept"] = "application/x-protobuf"}, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, '
    .. '"read": %%d, "write": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def run_wrk(url: str, *, method: str = "GET", bodies: str | None = None, content_type: str = "",
            duration: float = 5.0, threads: int = 1, connections: int = 8) -> dict:
    """The same measurement with wrk (C, epoll): less client CPU than Python on a shared machine."""
    import os
    import shutil
    import subprocess
    import tempfile

    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    u = urlsplit(url)
    with tempfile.TemporaryDirectory() as tmp:
        hexfile = os.path.abspath(bodies) if bodies else ""
        script = os.path.join(tmp, "load.lua")
        with open(script, "w") as f:
            f.write(_WRK_LUA % {"path": u.path, "method": method, "ctype": content_type, "bodies": hexfile})
        r = subprocess.run([wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "-s", script,
                            "--timeout", "10s", f"{u.scheme}://{u.netloc}"], capture_output=True, text=True,
                           timeout=duration + 60)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    ok = w["requests"] - w["non2xx"]
    errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    return {"url": url, "method": method, "client": "wrk", "duration_s": secs, "concurrency": connections,
            "requests": w["requests"], "ok": ok, "errors": errors, "statuses": {"200": ok, "other": w["non2xx"]},
            "rps": ok / secs, "p50_ms": w["p50_us"] / 1e3, "p90_ms": w["p90_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3,
            "max_ms": w["max_us"] / 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--method", default="GET", choices=["GET", "POST"])
    p.add_argument("--bodies", help="length-prefixed request bodies (see write_bodies)")
    p.add_argument("--content-type", default="application/x-protobuf")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    a = p.parse_args()
    print(json.dumps(run_load(a.url, method=a.method, bodies=a.bodies, content_type=a.content_type,
                              duration=a.duration, procs=a.procs, threads=a.threads)))


if __name__ == "__main__":
    main()
