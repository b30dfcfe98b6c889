#!/usr/bin/env python3
"""vivgate load harness: one command, loopback only, bounded in time, stops what it starts.

    benches/load/run.py [--rounds 3] [--duration 10] [--connections 50]

It builds vivgate and the bare pingora passthrough (examples/passthrough.rs) in release mode,
then, pinned the same way every time (the proxy under test on CPU 0 with one worker; backend and
load generator on CPU 1), measures in interleaved rounds:

  backend      nginx serving a fixed small JSON body, hit directly
  nginx        nginx proxy_pass with an upstream keepalive pool
  passthrough  bare pingora 0.9 proxy, same build profile and allocator as vivgate
  vivgate      every check on: 10,000 keys loaded, load spread over 1,000 of them

with wrk (closed loop: throughput, latency, proxy CPU per request from the process's own CPU
time), then each proxy at a fixed offered load of 70 % of nginx's median rate with oha (open
loop: latency). A run with any non-200 answer or socket error is reported as an error, not a
result. Needs nginx and wrk (apt-get install nginx wrk); oha is installed from crates.io into
benches/load/.tools on first use; the HTTP/2 target needs h2load (apt-get install nghttp2-client).
"""
import argparse, hashlib, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.path.join(ROOT, "benches", "load", ".tools")
CLK_TCK = os.sysconf("SC_CLK_TCK")
OID = "651f0c2ab4e8a90012345678"
PATH = f"/tenant/collectionObjects?collectionId={OID}"
BODY = '{"success":true,"data":[{"_id":"651f0c2ab4e8a90012345678","title":"hello"}],"error":null}'
PROXY_CPU, LOAD_CPU = "0", "1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what, timeout=20):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout}s")


def cpu_ticks(pids, kernel_only=False):
    """CPU time of `pids` in clock ticks: user and kernel, or the kernel's alone."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[12]) + (0 if kernel_only else int(fields[11]))  # stime, utime
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


NGINX_COMMON = """worker_processes 1;
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/{name}-body;
  proxy_temp_path {dir}/{name}-proxy;
  fastcgi_temp_path {dir}/{name}-fcgi;
  uwsgi_temp_path {dir}/{name}-uwsgi;
  scgi_temp_path {dir}/{name}-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
{body}
}}
"""


def nginx_conf(dir, name, body):
    path = os.path.join(dir, f"{name}.conf")
    with open(path, "w") as f:
        f.write(NGINX_COMMON.format(dir=dir, name=name, body=body))
    return path


def parse_wrk(out):
    def num(pattern):
        m = re.search(pattern, out)
        return m.group(1) if m else None

    def ms(v):
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(num(r"Requests/sec:\s+([\d.]+)"))
    requests = int(num(r"(\d+) requests in"))
    p50 = ms(num(r"\n\s+50%\s+(\S+)"))
    p99 = ms(num(r"\n\s+99%\s+(\S+)"))
    non2xx = int(num(r"Non-2xx or 3xx responses: (\d+)") or 0)
    sock = num(r"Socket errors: (.*)")
    errors = non2xx + (sum(int(x) for x in re.findall(r"\d+", sock)) if sock else 0)
    return dict(rps=rps, requests=requests, p50=p50, p99=p99, errors=errors, raw=out)


def run_wrk(port, script, duration, conns, scheme="http"):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           "-s", script, f"{scheme}://127.0.0.1:{port}"]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout)


def run_h2load(port, duration, conns, key):
    """HTTP/2 with prior knowledge (h2c), one stream at a time per connection like wrk's HTTP/1,
    one key. h2load reports no percentiles: p50 holds its mean, p99 is not a number."""
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-t1", f"-c{conns}", "-m1", f"-D{duration}",
           "-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    req = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not (m and req and codes):
        return dict(rps=0.0, requests=0, p50=float("nan"), p99=float("nan"), errors=1, raw=out)
    errors = sum(int(x) for x in req.groups()[1:]) + sum(int(x) for x in codes.groups()[1:])
    p50 = float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)] if mean else float("nan")
    return dict(rps=float(m.group(1)), requests=int(req.group(1)), p50=p50, p99=float("nan"),
                errors=errors, raw=out)


def ensure_oha():
    oha = shutil.which("oha") or os.path.join(TOOLS, "bin", "oha")
    if os.path.exists(oha):
        return oha
    print("installing oha from crates.io into benches/load/.tools (once) ...", flush=True)
    r = subprocess.run(["cargo", "install", "oha", "--locked", "--root", TOOLS], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-2000:])
        return None
    return oha


def run_oha(oha, port, rate, duration, conns, key):
    cmd = ["taskset", "-c", LOAD_CPU, oha, "--no-tui", "--output-format", "json", "-z", f"{duration}s",
           "--wait-ongoing-requests-after-deadline", "--latency-correction",
           "-c", str(conns), "-q", str(rate), "-H", f"Authorization: Bearer {key}",
           f"http://127.0.0.1:{port}{PATH}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    try:
        j = json.loads(r.stdout)
    except json.JSONDecodeError:
        return dict(error=(r.stdout + r.stderr)[-500:])
    codes = j.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if k != "200") + sum(j.get("errorDistribution", {}).values())
    pct = j.get("latencyPercentiles", {})
    return dict(rps=j["summary"]["requestsPerSec"], p50=pct["p50"] * 1000, p99=pct["p99"] * 1000, errors=bad)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--active-keys", type=int, default=1_000)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--no-fixed-rate", action="store_true", help="skip the oha fixed-rate latency runs")
    ap.add_argument("--no-redis", action="store_true",
                    help="skip vivgate with store = \"redis\" (run when redis-server is installed)")
    ap.add_argument("--no-tls", action="store_true",
                    help="skip vivgate over HTTPS (run when openssl is installed)")
    ap.add_argument("--reload-keys", type=int, default=0,
                    help="also measure p99 while reloading a compact tenants file of this many keys "
                         "(e.g. 1000000), against a steady run with the same keys")
    ap.add_argument("--reload-seconds", type=int, default=40,
                    help="length of the first reload run, which times the reload")
    ap.add_argument("--vivgate-bin", help="the vivgate binary to measure (default: the release build), "
                                          "e.g. an older build to compare with")
    ap.add_argument("--no-lua", action="store_true",
                    help="skip the nginx + Lua gateway peer (../shared/bench-peer; run when Debian's "
                         "libnginx-mod-http-lua is installed)")
    ap.add_argument("--no-h2", action="store_true",
                    help="skip the HTTP/2 target (vivgate with h2c, loaded by h2load from nghttp2-client)")
    ap.add_argument("--prototypes", action="store_true",
                    help="also measure issue 16's prototype HTTP/1 loops (examples/lean_core.rs, lean_raw.rs)")
    ap.add_argument("--baseline-bin", help="another vivgate binary (an older build) measured as the target "
                                           "vivgate-base in the same interleaved rounds, with the same config: "
                                           "the report gives vivgate's CPU per request against it, round by round")
    a = ap.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs (proxy on CPU 0, backend and load on CPU 1)")
    for tool in ("nginx", "wrk", "taskset", "pgrep"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: apt-get install nginx wrk")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not a.skip_build:
        print("building release: vivgate and examples/passthrough ...", flush=True)
        extra = ["--example", "lean_raw", "--example", "lean_core"] if a.prototypes else []
        subprocess.run(["cargo", "build", "--release", "--bin", "vivgate", "--example", "passthrough"] + extra,
                       cwd=ROOT, check=True)
    vivgate = a.vivgate_bin or os.path.join(ROOT, "target", "release", "vivgate")
    passthrough = os.path.join(ROOT, "target", "release", "examples", "passthrough")
    oha = None if a.no_fixed_rate else ensure_oha()

    dir = tempfile.mkdtemp(prefix="vivgate-load-")
    procs = []

    def start(cmd, cpu, env=None):
        log = os.path.join(dir, f"{os.path.basename(cmd[0])}-{len(procs)}.log")
        p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
        p.log_path = log
        procs.append(p)
        return p

    def stop_all(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(dir, ignore_errors=True)

    signal.signal(signal.SIGINT, lambda *_: (stop_all(), sys.exit(130)))
    try:
        use_redis = not a.no_redis and shutil.which("redis-server") is not None
        ports = {t: free_port() for t in ("backend", "nginx", "nginx-lua", "passthrough", "lean-core", "lean-raw", "vivgate", "vivgate-base", "vivgate-redis", "redis",
                                          "vivgate-log", "vivgate-tls", "vivgate-tls-plain", "vivgate-h2c")}
        # vivgate-tls: the same gateway answering HTTPS (HTTP/1.1 over TLS 1.3, keep-alive) with a
        # self-signed certificate made by openssl, when openssl is installed
        use_tls = not a.no_tls and shutil.which("openssl") is not None
        b = ports["backend"]
        body = BODY.replace("'", "\\'")
        backend_conf = nginx_conf(dir, "backend", f"""  server {{ listen 127.0.0.1:{b};
    location / {{ default_type application/json; return 200 '{body}'; }} }}""")
        proxy_conf = nginx_conf(dir, "proxy", f"""  upstream backend {{ server 127.0.0.1:{b}; keepalive 128; }}
  server {{ listen 127.0.0.1:{ports['nginx']};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")

        keys = [f"vk_load_{i:06d}" for i in range(a.keys)]
        with open(os.path.join(dir, "tenants.toml"), "w") as f:
            for i, k in enumerate(keys):
                f.write(f'[[groups]]\nid = "{i:024x}"\ntier = "load"\nstatus = "active"\n'
                        f'keys = ["sha256:{hashlib.sha256(k.encode()).hexdigest()}"]\n\n')
        with open(os.path.join(dir, "vivgate.toml"), "w") as f:
            f.write(f"""tenants = "tenants.toml"
[server]
listen = "127.0.0.1:{ports['vivgate']}"
threads = 1
[tiers.load]
api_calls = 1_000_000_000_000
cdn_bytes = 1_000_000_000_000
[upstreams.api]
servers = ["127.0.0.1:{b}"]
[[routes]]
path = "/tenant/collectionObjects"
methods = ["GET"]
upstream = "api"
required_query = ["collectionId"]
id_query = ["collectionId"]
meter = "calls"
""")
        # the same vivgate with its access log on (a file on the same disk)
        conf = open(os.path.join(dir, "vivgate.toml")).read()
        conf = conf.replace(f"listen = \"127.0.0.1:{ports['vivgate']}\"",
                            f"listen = \"127.0.0.1:{ports['vivgate-log']}\"")
        conf += '[usage]\npath = "state/usage-log.redb"\n[access_log]\npath = "access.log"\n'
        with open(os.path.join(dir, "vivgate-log.toml"), "w") as f:
            f.write(conf)
        use_h2 = not a.no_h2 and shutil.which("h2load") is not None
        if use_h2:
            conf = open(os.path.join(dir, "vivgate.toml")).read()
            conf = conf.replace(f"listen = \"127.0.0.1:{ports['vivgate']}\"",
                                f"listen = \"127.0.0.1:{ports['vivgate-h2c']}\"").replace(
                "threads = 1", "threads = 1\nh2c = true")
            with open(os.path.join(dir, "vivgate-h2c.toml"), "w") as f:
                f.write(conf + '[usage]\npath = "state/usage-h2c.redb"\n')
        if use_tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout",
                            os.path.join(dir, "tls.key"), "-out", os.path.join(dir, "tls.pem")],
                           check=True, capture_output=True)
            conf = open(os.path.join(dir, "vivgate.toml")).read()
            conf = conf.replace(f"listen = \"127.0.0.1:{ports['vivgate']}\"",
                                f"listen = \"127.0.0.1:{ports['vivgate-tls-plain']}\"")
            conf += ('[usage]\npath = "state/usage-tls.redb"\n[[server.tls]]\n'
                     f'listen = "127.0.0.1:{ports["vivgate-tls"]}"\ncert = "tls.pem"\nkey = "tls.key"\n')
            with open(os.path.join(dir, "vivgate-tls.toml"), "w") as f:
                f.write(conf)
        if use_redis:
            conf = open(os.path.join(dir, "vivgate.toml")).read()
            conf = conf.replace(f"listen = \"127.0.0.1:{ports['vivgate']}\"",
                                f"listen = \"127.0.0.1:{ports['vivgate-redis']}\"")
            conf += f'[usage]\nstore = "redis"\nredis_url = "redis://127.0.0.1:{ports["redis"]}/0"\n'
            with open(os.path.join(dir, "vivgate-redis.toml"), "w") as f:
                f.write(conf)
        step = a.keys // a.active_keys
        active = keys[::step][: a.active_keys]
        script = os.path.join(dir, "keys.lua")
        with open(script, "w") as f:
            f.write("local keys = {" + ",".join(f'"{k}"' for k in active) + "}\n")
            f.write(f'local reqs = {{}}\nfor i, k in ipairs(keys) do reqs[i] = wrk.format("GET", "{PATH}", '
                    '{["Host"] = "api.vivreal.test", ["Authorization"] = "Bearer " .. k}) end\n'
                    "local i = 0\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n")

        bp = start([nginx, "-c", backend_conf], LOAD_CPU)
        wait_port(b, bp, "backend nginx")
        np = start([nginx, "-c", proxy_conf], PROXY_CPU)
        wait_port(ports["nginx"], np, "nginx proxy")
        pp = start([passthrough, f"127.0.0.1:{ports['passthrough']}", f"127.0.0.1:{b}", "1"], PROXY_CPU)
        wait_port(ports["passthrough"], pp, "passthrough")
        env = dict(os.environ, RUST_LOG="warn")
        t0 = time.time()
        vp = start([vivgate, "--config", os.path.join(dir, "vivgate.toml")], PROXY_CPU, env)
        wait_port(ports["vivgate"], vp, "vivgate")
        load_s = time.time() - t0

        pids = {"backend": [bp.pid] + children(bp.pid), "nginx": [np.pid] + children(np.pid),
                "passthrough": [pp.pid], "vivgate": [vp.pid]}
        targets = ["backend", "nginx", "passthrough", "vivgate"]
        lua_conf = None if a.no_lua else lua_peer(dir, ports["nginx-lua"], b, keys)
        if lua_conf:
            lp = start([nginx, "-p", os.path.dirname(os.path.dirname(lua_conf)) + "/", "-c", lua_conf,
                        "-g", "daemon off;"], PROXY_CPU)
            wait_port(ports["nginx-lua"], lp, "nginx + Lua gateway")
            pids["nginx-lua"] = [lp.pid] + children(lp.pid)
            targets.insert(2, "nginx-lua")
        if a.prototypes:
            # issue 16's prototypes, no checks: (a) a loop over pingora-core's v1 sessions,
            # (b) a raw HTTP/1 loop; the floor of each design
            for i, (t, ex) in enumerate((("lean-core", "lean_core"), ("lean-raw", "lean_raw"))):
                lp2 = start([os.path.join(ROOT, "target", "release", "examples", ex),
                             f"127.0.0.1:{ports[t]}", f"127.0.0.1:{b}"], PROXY_CPU)
                wait_port(ports[t], lp2, f"{ex} prototype")
                pids[t] = [lp2.pid]
                targets.insert(targets.index("passthrough") + 1 + i, t)
        if a.baseline_bin:
            conf = open(os.path.join(dir, "vivgate.toml")).read().replace(
                f"listen = \"127.0.0.1:{ports['vivgate']}\"", f"listen = \"127.0.0.1:{ports['vivgate-base']}\"")
            with open(os.path.join(dir, "vivgate-base.toml"), "w") as f:
                f.write(conf + '[usage]\npath = "state/usage-base.redb"\n')
            vb = start([a.baseline_bin, "--config", os.path.join(dir, "vivgate-base.toml")], PROXY_CPU, env)
            wait_port(ports["vivgate-base"], vb, "vivgate (baseline build)")
            pids["vivgate-base"] = [vb.pid]
            targets.append("vivgate-base")
        vl = start([vivgate, "--config", os.path.join(dir, "vivgate-log.toml")], PROXY_CPU, env)
        wait_port(ports["vivgate-log"], vl, "vivgate (access log)")
        pids["vivgate-log"] = [vl.pid]
        targets.append("vivgate-log")
        if use_tls:
            vt = start([vivgate, "--config", os.path.join(dir, "vivgate-tls.toml")], PROXY_CPU, env)
            wait_port(ports["vivgate-tls"], vt, "vivgate (TLS)")
            pids["vivgate-tls"] = [vt.pid]
            # the same process on its plain listener: TLS's own cost, without instance effects
            pids["vivgate-tls-plain"] = [vt.pid]
            targets += ["vivgate-tls-plain", "vivgate-tls"]
        if use_h2:
            vh = start([vivgate, "--config", os.path.join(dir, "vivgate-h2c.toml")], PROXY_CPU, env)
            wait_port(ports["vivgate-h2c"], vh, "vivgate (h2c)")
            pids["vivgate-h2c"] = [vh.pid]
            targets.append("vivgate-h2c")
        if use_redis:
            # Redis on the load generator's CPU: the proxy's CPU counts only the gateway
            rp = start(["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", dir], LOAD_CPU)
            wait_port(ports["redis"], rp, "redis-server")
            vr = start([vivgate, "--config", os.path.join(dir, "vivgate-redis.toml")], PROXY_CPU, env)
            wait_port(ports["vivgate-redis"], vr, "vivgate (redis store)")
            pids["vivgate-redis"] = [vr.pid]
            targets.append("vivgate-redis")
        scheme = lambda t: "https" if t == "vivgate-tls" else "http"
        def load(t, seconds):
            if t == "vivgate-h2c":
                return run_h2load(ports[t], seconds, a.connections, keys[0])
            return run_wrk(ports[t], script, seconds, a.connections, scheme(t))

        for t in targets:  # warm-up: connections, pools, caches
            load(t, 2)
        results = {t: [] for t in targets}
        for r in range(a.rounds):
            for t in targets:
                before, before_sys = cpu_ticks(pids[t]), cpu_ticks(pids[t], True)
                res = load(t, a.duration)
                res["cpu_us"] = (cpu_ticks(pids[t]) - before) / CLK_TCK * 1e6 / max(res["requests"], 1)
                res["sys_us"] = (cpu_ticks(pids[t], True) - before_sys) / CLK_TCK * 1e6 / max(res["requests"], 1)
                # the access log's dirty pages are written back now, not during the next target
                os.sync()
                results[t].append(res)
                print(f"round {r + 1}/{a.rounds} {t:<12} {res['rps']:>10.0f} req/s  p50 {res['p50']:.2f} ms  "
                      f"p99 {res['p99']:.2f} ms  cpu {res['cpu_us']:.1f} us/req  errors {res['errors']}", flush=True)

        # open-loop latency at 70 % of nginx's maximum (the target), at 70 % of the
        # passthrough's maximum (a rate every pingora-based proxy can sustain), and at 70 % of
        # the nginx + Lua gateway's (issue 16: vivgate's p99 there ≤ the Lua gateway's)
        fixed = {}
        if oha:
            lua = ["nginx-lua"] if results.get("nginx-lua") else []
            for base in ["nginx", "passthrough"] + lua:
                rate = int(0.7 * statistics.median(x["rps"] for x in results[base]))
                for t in ["nginx", "passthrough"] + lua + ["vivgate"]:
                    fixed[(base, rate, t)] = run_oha(oha, ports[t], rate, a.duration, a.connections, active[0])
                    print(f"fixed rate {rate}/s {t:<12} {fixed[(base, rate, t)]}", flush=True)

        vrss = int(open(f"/proc/{vp.pid}/status").read().split("VmRSS:")[1].split()[0])
        reload_lines = reload_under_load(a, dir, ports, b, vivgate, start, script) if a.reload_keys else []
        print()
        print(report(results, fixed, a, load_s, vrss))
        if reload_lines:
            print()
            print("\n".join(reload_lines))
    finally:
        stop_all()


def lua_peer(dir, port, backend_port, keys):
    """The nginx + Lua gateway of ../shared/bench-peer (OpenResty/Kong architecture: key SHA-256,
    group status, the required 24-hex collectionId, a monthly counter, identity and RateLimit
    headers), unchanged but for its ports, over the same keys as vivgate (one group each).
    Returns its config path, or None when Debian's lua module or the peer is missing."""
    peer = os.path.join(ROOT, "..", "shared", "bench-peer")
    if not (os.path.exists("/usr/lib/nginx/modules/ngx_http_lua_module.so")
            and os.path.exists(os.path.join(peer, "proxy_lua.conf"))):
        print("nginx + Lua peer skipped: apt-get install libnginx-mod-http-lua", flush=True)
        return None
    root = os.path.join(dir, "lua-peer")
    for d in ("conf", "lua", "data", "run", "logs"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    conf = open(os.path.join(peer, "proxy_lua.conf")).read()
    conf = conf.replace("127.0.0.1:8081", f"127.0.0.1:{backend_port}").replace(
        "127.0.0.1:8083", f"127.0.0.1:{port}")
    path = os.path.join(root, "conf", "proxy_lua.conf")
    with open(path, "w") as f:
        f.write(conf)
    shutil.copy(os.path.join(peer, "gateway.lua"), os.path.join(root, "lua", "gateway.lua"))
    with open(os.path.join(root, "data", "keys.tsv"), "w") as f:
        f.writelines(f"{hashlib.sha256(k.encode()).hexdigest()}\t{i:024x}\n" for i, k in enumerate(keys))
    with open(os.path.join(root, "data", "groups.tsv"), "w") as f:
        f.writelines(f"{i:024x}\tactive\t1000000000000\n" for i in range(len(keys)))
    return path


def reload_under_load(a, dir, ports, backend_port, vivgate, start, script):
    """p99 of a wrk run during which a compact tenants file of --reload-keys keys is reloaded
    (SIGHUP) from start to finish, against a steady run of the same length with the same keys
    loaded. The reload must end (its audit log line) inside the run, or it is not a result."""
    n = a.reload_keys
    print(f"writing a compact tenants file of {n} keys ...", flush=True)
    with open(os.path.join(dir, "big.tsv"), "w") as f:
        f.write("# id tier status overage keys\n")
        for i in range(n):
            k = f"vk_load_{i:06d}"
            f.write(f"{i:024x} load active false sha256:{hashlib.sha256(k.encode()).hexdigest()}\n")
    port = free_port()
    conf = open(os.path.join(dir, "vivgate.toml")).read()
    conf = conf.replace('tenants = "tenants.toml"', 'tenants = "big.tsv"').replace(
        f"listen = \"127.0.0.1:{ports['vivgate']}\"", f"listen = \"127.0.0.1:{port}\"")
    with open(os.path.join(dir, "big.toml"), "w") as f:
        f.write(conf + '\n[usage]\npath = "state/big.redb"\n')
    t0 = time.time()
    vp = start([vivgate, "--config", os.path.join(dir, "big.toml")], PROXY_CPU,
               dict(os.environ, RUST_LOG="warn,vivgate::audit=info"))
    wait_port(port, vp, "vivgate with the big key set", timeout=60)
    load_s = time.time() - t0
    run_wrk(port, script, 2, a.connections)
    import threading

    def reload_during(secs, hup_at):
        """A wrk run with a SIGHUP `hup_at` seconds in; also the reload's duration (its audit
        line), waited for up to two minutes."""
        took = []

        def hup():
            time.sleep(hup_at)
            t = time.time()
            vp.send_signal(signal.SIGHUP)
            while time.time() < t + 120:
                if open(vp.log_path).read().count("configuration reloaded") > len(done):
                    took.append(time.time() - t)
                    done.append(1)
                    return
                time.sleep(0.05)

        th = threading.Thread(target=hup)
        th.start()
        res = run_wrk(port, script, secs, a.connections)
        th.join()
        return res, (took[0] if took else None)

    rss = lambda: int(open(f"/proc/{vp.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
    rss_before = rss()
    done = []
    # first a long run to learn how long the reload takes under this load, then a run sized to
    # it (the SIGHUP 1 s in) beside a steady run of the same length: the reload's p99 is then
    # taken over a run the reload fills, not diluted by seconds without one
    calib, t1 = reload_during(a.reload_seconds, 3)
    if t1 is None:
        return [f"Reload under load: the reload of {n} keys did not finish within 2 minutes: not a result"]
    secs = max(5, int(t1) + 1)
    steady = run_wrk(port, script, secs, a.connections)
    during, t2 = reload_during(secs, 1)
    covered = min(t2 or secs, secs - 1) / secs
    rss_after = rss()
    errors = steady["errors"] + during["errors"] + calib["errors"]
    row = lambda name, r: (f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                           f"{r['p99'] / steady['p99']:.2f}× | {r['errors']} |")
    return [
        f"Reload under load: {n} keys from a compact .tsv file (listening {load_s:.1f} s after start). "
        f"A first reload, 3 s into a {a.reload_seconds} s run, took {t1:.1f} s; then wrk -t1 -c{a.connections} "
        f"-d{secs}s steady, and the same with a SIGHUP 1 s in (that reload took "
        + (f"{t2:.1f} s" if t2 else "longer than the run") + f": it covered {covered:.0%} of the run):",
        "",
        "| run | req/s | p50 ms | p99 ms | p99 vs steady | errors |",
        "|---|---|---|---|---|---|",
        row(f"steady, {secs} s", steady),
        row(f"a reload in {secs} s", during),
        row(f"a reload in {a.reload_seconds} s (the first)", calib),
        "",
        f"RSS: {rss_before} MiB before the reloads, {rss_after} MiB after two (freed memory is given back "
        "lazily: it stays counted until the kernel needs it).",
        "" if errors == 0 else "ERRORS during the reload runs: not a result.",
    ]


def report(results, fixed, a, load_s, vrss_kib):
    med = {t: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50", "p99", "cpu_us", "sys_us")}
           for t, rs in results.items()}
    errs = {t: sum(x["errors"] for x in rs) for t, rs in results.items()}
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip()
    lines = [f"Machine: {os.cpu_count()} CPUs ({cpu}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"Load: wrk -t1 -c{a.connections} -d{a.duration}s, {a.rounds} interleaved rounds, medians; "
             f"proxy on CPU {PROXY_CPU} (1 worker), backend and wrk on CPU {LOAD_CPU}; "
             f"vivgate with {a.keys} keys, load over {a.active_keys}",
             "",
             "| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | of it kernel | req/s vs nginx | req/s vs passthrough | CPU vs nginx | CPU vs passthrough | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in results:
        m = med[t]
        vs = lambda base, k: f"{m[k] / med[base][k]:.2f}×" if t != "backend" else "—"
        lines.append(f"| {t} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_us']:.1f} | {m['sys_us']:.1f} | "
                     f"{vs('nginx', 'rps')} | {vs('passthrough', 'rps')} | {vs('nginx', 'cpu_us')} | "
                     f"{vs('passthrough', 'cpu_us')} | {errs[t]} |")
    # the machine drifts between rounds more than the 5 % being measured: each round's own ratio
    # (both measured within seconds of each other) is steadier than the ratio of the medians
    lines += ["", "Per round, req/s against the passthrough in the same round (median of the rounds):", ""]
    for t in results:
        if t.startswith("vivgate"):
            rs = [x["rps"] / p["rps"] for x, p in zip(results[t], results["passthrough"])]
            lines.append(f"- {t}: " + ", ".join(f"{r:.2f}" for r in rs) + f" (median {statistics.median(rs):.2f}×)")
    if "vivgate-h2c" in med:
        cpu = [x["cpu_us"] / v["cpu_us"] for x, v in zip(results["vivgate-h2c"], results["vivgate"])]
        lines += ["", "vivgate over HTTP/2 (h2c, h2load -m1, one key; its p50 column is h2load's mean) against "
                  "HTTP/1 (wrk), CPU per request per round: " + ", ".join(f"{r:.2f}" for r in cpu)
                  + f" (median **{statistics.median(cpu):.2f}×**)"]
    if "vivgate" in med and "nginx" in med:
        ksys = [x["sys_us"] / n["sys_us"] for x, n in zip(results["vivgate"], results["nginx"]) if n["sys_us"]]
        if ksys:
            lines += ["", "vivgate's kernel CPU per request against nginx's, per round: "
                      + ", ".join(f"{r:.2f}" for r in ksys) + f" (median **{statistics.median(ksys):.2f}×**)"]
    if "nginx-lua" in med:
        cpu = [x["cpu_us"] / l["cpu_us"] for x, l in zip(results["vivgate"], results["nginx-lua"])]
        lines += ["", "vivgate's CPU per request against the nginx + Lua gateway (the closest job, not the same: "
                  "see ../shared/bench-peer/README.md), per round: " + ", ".join(f"{r:.2f}" for r in cpu)
                  + f" (median **{statistics.median(cpu):.2f}×**; ratio of medians "
                  f"{med['vivgate']['cpu_us'] / med['nginx-lua']['cpu_us']:.2f}×)"]
    if "vivgate-base" in med:
        cpu = [x["cpu_us"] / b["cpu_us"] for x, b in zip(results["vivgate"], results["vivgate-base"])]
        rps = [x["rps"] / b["rps"] for x, b in zip(results["vivgate"], results["vivgate-base"])]
        lines += ["", "this build vs the baseline build (--baseline-bin), per round: CPU per request "
                  + ", ".join(f"{r:.3f}" for r in cpu) + f" (median **{statistics.median(cpu):.3f}×**); req/s "
                  + ", ".join(f"{r:.3f}" for r in rps) + f" (median {statistics.median(rps):.3f}×)"]
    if "vivgate-log" in med:
        lines += ["", f"access log on vs off, same run: "
                  f"{med['vivgate-log']['rps'] / med['vivgate']['rps']:.2f}× req/s, "
                  f"{med['vivgate-log']['cpu_us'] / med['vivgate']['cpu_us']:.2f}× CPU per request"]
    if "vivgate-tls" in med:
        lines += ["", f"HTTPS (HTTP/1.1 over TLS 1.3, keep-alive connections) vs plain HTTP on the same process "
                  f"(vivgate-tls-plain), same run: "
                  f"{med['vivgate-tls']['rps'] / med['vivgate-tls-plain']['rps']:.2f}× req/s, "
                  f"{med['vivgate-tls']['cpu_us'] / med['vivgate-tls-plain']['cpu_us']:.2f}× CPU per request"]
    if "vivgate-redis" in med:
        lines += ["", f"store = \"redis\" vs the embedded store, same run: "
                  f"{med['vivgate-redis']['rps'] / med['vivgate']['rps']:.2f}× req/s, "
                  f"{med['vivgate-redis']['cpu_us'] / med['vivgate']['cpu_us']:.2f}× CPU per request"]
    if fixed:
        lines += ["", f"Fixed offered load (oha -q RATE --latency-correction, -c{a.connections}, {a.duration}s, one key), "
                  "at 70 % of the median maximum rate of nginx, of the passthrough and of the nginx + Lua "
                  "gateway; the p99 is compared with that of the target whose rate it is:", "",
                  "| rate | target | achieved req/s | p50 ms | p99 ms | p99 vs the rate's target | errors |",
                  "|---|---|---|---|---|---|---|"]
        for (base, rate, t), f in fixed.items():
            if "error" in f:
                lines.append(f"| {rate} | {t} | oha failed: {f['error']!r} | | | | |")
                continue
            n = fixed.get((base, rate, base), {})
            ratio = f"{f['p99'] / n['p99']:.2f}×" if "p99" in n else "—"
            lines.append(f"| {rate} (70 % of {base}) | {t} | {f['rps']:.0f} | {f['p50']:.2f} | {f['p99']:.2f} | "
                         f"{ratio} | {f['errors']} |")
    lines += ["", f"vivgate: {a.keys} keys loaded and listening in {load_s:.2f} s (process start included); "
              f"RSS after the run {vrss_kib / 1024:.1f} MiB"]
    ok = all(v == 0 for v in errs.values()) and all(f.get("errors", 1) == 0 for f in fixed.values())
    lines.append("All answers were 200." if ok else "ERRORS: a run with errors is not a result.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
