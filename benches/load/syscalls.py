#!/usr/bin/env python3
"""System calls per request, vivgate against nginx proxy_pass (issue 16 asks for ≤ nginx's).

    benches/load/syscalls.py [--requests 5000] [--vivgate-bin target/release/vivgate]

Each proxy runs under `strace -f -c` in front of the harness's nginx backend and gets the same
GET over one keep-alive connection, one request at a time, rotating over 1,000 keys (vivgate has
10,000 loaded and runs every check). It runs twice per proxy, with a few requests and with
`--requests` more, and reports the difference per request, so start-up and shutdown calls do not
count. Sequential requests make every wait an `epoll_wait`; under wrk's 50 connections a wait
serves several requests, so these figures are an upper bound of the loaded ones. Loopback only;
stops what it starts. Needs strace and nginx.
"""
import argparse, hashlib, os, re, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BODY, OID, ROOT, children, free_port, nginx_conf, wait_port  # noqa: E402

FEW = 200


def requests(port, n):
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    for i in range(n):
        key = f"vk_load_{(i * 10) % 10000:06d}"
        s.sendall(f"GET /tenant/collectionObjects?collectionId={OID} HTTP/1.1\r\n"
                  f"Host: api.vivreal.test\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].decode()
                if not head.startswith("HTTP/1.1 200"):
                    sys.exit(f"not a 200: {head}")
                length = int(re.search(r"(?i)content-length:\s*(\d+)", head).group(1))
                if len(buf) >= end + 4 + length:
                    buf = buf[end + 4 + length:]
                    break
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("the proxy closed the connection")
            buf += chunk
    s.close()


def calls(cmd, port, n, out):
    """Total calls by name of `cmd` under strace after `n` requests."""
    p = subprocess.Popen(["strace", "-f", "-c", "-o", out] + cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, p, cmd[0])
        requests(port, n)
    finally:
        # stop the traced process (strace's child), then strace ends with it
        for child in children(p.pid):
            os.kill(child, signal.SIGTERM)
        p.wait(timeout=60)
    totals = {}
    for line in open(out):
        f = line.split()
        if len(f) >= 5 and f[-1] != "total" and f[3].isdigit():
            totals[f[-1]] = int(f[3])
    return totals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--vivgate-bin", default=os.path.join(ROOT, "target", "release", "vivgate"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vivgate-syscalls-") as dir:
        b, nport, vport = free_port(), free_port(), free_port()
        body = BODY.replace("'", "\\'")
        backend = nginx_conf(dir, "backend", f"""  server {{ listen 127.0.0.1:{b};
    location / {{ default_type application/json; return 200 '{body}'; }} }}""")
        proxy = nginx_conf(dir, "proxy", f"""  upstream backend {{ server 127.0.0.1:{b}; keepalive 128; }}
  server {{ listen 127.0.0.1:{nport};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")
        with open(os.path.join(dir, "tenants.toml"), "w") as f:
            for i in range(10_000):
                h = hashlib.sha256(f"vk_load_{i:06d}".encode()).hexdigest()
                f.write(f'[[groups]]\nid = "{i:024x}"\ntier = "load"\nstatus = "active"\n'
                        f'keys = ["sha256:{h}"]\n\n')
        with open(os.path.join(dir, "vivgate.toml"), "w") as f:
            f.write(f"""tenants = "tenants.toml"
[server]
listen = "127.0.0.1:{vport}"
threads = 1
grace_period_seconds = 0
[tiers.load]
api_calls = 1_000_000_000_000
cdn_bytes = 1_000_000_000_000
[upstreams.api]
servers = ["127.0.0.1:{b}"]
health_check_interval_ms = 0
[[routes]]
path = "/tenant/collectionObjects"
methods = ["GET"]
upstream = "api"
required_query = ["collectionId"]
id_query = ["collectionId"]
meter = "calls"
[usage]
store = "memory"
""")
        nginx = subprocess.Popen(["nginx", "-c", backend], stderr=subprocess.DEVNULL)
        try:
            wait_port(b, nginx, "nginx backend")
            targets = {
                "nginx": (["nginx", "-c", proxy], nport),
                "vivgate": ([a.vivgate_bin, "--config", os.path.join(dir, "vivgate.toml")], vport),
            }
            print(f"| target | system calls per request | of which |\n|---|---|---|")
            for name, (cmd, port) in targets.items():
                few = calls(cmd, port, FEW, os.path.join(dir, f"{name}-few.txt"))
                many = calls(cmd, port, FEW + a.requests, os.path.join(dir, f"{name}-many.txt"))
                per = {k: (many.get(k, 0) - few.get(k, 0)) / a.requests for k in many}
                per = {k: v for k, v in per.items() if v >= 0.05}
                detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda x: -x[1]))
                print(f"| {name} | {sum(per.values()):.2f} | {detail} |", flush=True)
        finally:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)


if __name__ == "__main__":
    main()
