"""What the single-node HTTP front (``orchestrator/serving/front.py``) adds per request on a kept-alive connection.

A stand-in upstream answers at once, so the figures are the front's own hop: one ``http.client`` connection
kept alive, requests one at a time, to the upstream directly and through the front, interleaved in rounds.
The front's replies go out as headers then body in two sends; with Nagle on, the client's delayed ACK held the
body about 40 ms (the cluster front door's record found it), which ``TCP_NODELAY`` on the front's sockets ends.

    python3 bench/http_front.py --out bench/results/http-front.json
"""
from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.serving.front import HttpFront  # noqa: E402

BODY = json.dumps({"inputs": [{"name": "INPUT", "shape": [1, 1, 16], "datatype": "FP32", "data": [0.0] * 16}]})


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Answers every request at once with a small JSON body, in one send."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"outputs": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _round(conn: http.client.HTTPConnection, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", "/v2/models/app/infer", body=BODY, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        out.append((time.perf_counter() - t) * 1000)
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="per path, in rounds of 100")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = _free_port()
    front = HttpFront(("127.0.0.1", port), upstream.server_address, "bench-key").start()
    load = [os.getloadavg()[0]]
    try:
        conns = {"direct": http.client.HTTPConnection(*upstream.server_address),
                 "through the front": http.client.HTTPConnection("127.0.0.1", port)}
        times: dict[str, list[float]] = {k: [] for k in conns}
        for _ in range(args.requests // 100):
            for name, conn in conns.items():
                times[name] += _round(conn, 100)
    finally:
        front.stop()
        upstream.shutdown()
    load.append(os.getloadavg()[0])
    rows = {k: {"p50_ms": _pct(v, 0.5), "p99_ms": _pct(v, 0.99), "requests": len(v)} for k, v in times.items()}
    added = rows["through the front"]["p50_ms"] - rows["direct"]["p50_ms"]
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python3 bench/http_front.py " + " ".join(sys.argv[1:]), "load_avg_1min": load,
              "paths": rows, "added_p50_ms": added}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"{record['date']}, {record['machine']}, load average {load[0]:.2f} -> {load[1]:.2f}:", "",
             f"    {record['command']}", "", "| path (one kept-alive connection) | requests | p50 (ms) | p99 (ms) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {k} | {r['requests']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |" for k, r in rows.items()]
    lines += ["", f"Added by the front, p50: {added:.3f} ms."]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
