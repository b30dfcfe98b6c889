#!/usr/bin/env python3
"""vivgate soak run: a fixed offered load for a long time, with the operations an operator does.

    benches/soak/run.py [--minutes 30] [--rate N] [--fleet] [--skip-build] [--out benches/soak]

Loopback only, bounded in time, stops what it starts. Pinned like the load harness (vivgate on
CPU 0 with one worker; the nginx backend and the load generator on CPU 1):

  1. the release build of vivgate in front of an nginx backend that logs the group id of every
     request it serves (the backend's own count); 1,000 load groups and 10 side groups;
  2. vivgate's maximum on this machine (wrk, 10 s, closed loop), then the soak at half of it:
     oha at a fixed rate in back-to-back 10 s windows, each on the next load group's key;
  3. every minute: a reload (SIGHUP, the tenants file changed in turn), a key revoked and a group
     frozen through the admin API (overrides in the embedded store), both checked from outside,
     then both overrides removed and checked again. With --fleet: usage and tenants in a
     redis-server started by the run (on CPU 1); the tenants file is pushed with `vivgate tenants
     push` instead of the SIGHUP's re-read, and the revocation and the freeze change the fleet's
     table (undone by a status PUT and the next push);
  4. the month rolls over part-way: vivgate runs under libfaketime, its wall clock started so
     that December ends at --rollover minutes (FAKETIME_DONT_FAKE_MONOTONIC=1: tokio's timers,
     which use the monotonic clock, do not jump);
  5. every 10 s: RSS minus LazyFree, open descriptors, p50/p99 and errors of the window;
  6. at the end: the calls vivgate stored for each group over both months against the requests
     the backend logged for it (after a graceful stop and a restart, read from the store file).

Writes soak.csv, soak.png (python3-matplotlib; with pyenv, run it with /usr/bin/python3) and
soak.md (the summary table) to --out. Needs nginx, wrk, faketime (apt-get install nginx wrk
faketime python3-matplotlib); oha comes from benches/load/.tools as in the load harness.
"""
import argparse, collections, csv, hashlib, json, os, signal, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
import run as load  # noqa: E402  (the load harness: ports, nginx, oha)

ROOT = load.ROOT
PATH = load.PATH
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def key_hash(k):
    return "sha256:" + hashlib.sha256(k.encode()).hexdigest()


def load_key(i):
    return f"vk_soak_{i:06d}"


def side_keys(i):
    return f"vk_side_{i:03d}_a", f"vk_side_{i:03d}_b"


def side_id(i):
    return f"{0xe0000 + i:024x}"


def tenants_text(groups, extra):
    out = []
    for i in range(groups):
        out.append(f'[[groups]]\nid = "{i:024x}"\ntier = "soak"\nstatus = "active"\n'
                   f'keys = ["{key_hash(load_key(i))}"]\n')
    for i in range(10):
        a, b = side_keys(i)
        out.append(f'[[groups]]\nid = "{side_id(i)}"\ntier = "soak"\nstatus = "active"\n'
                   f'keys = ["{key_hash(a)}", "{key_hash(b)}"]\n')
    if extra:
        out.append(f'[[groups]]\nid = "{0xf0000:024x}"\ntier = "soak"\nstatus = "active"\n'
                   f'keys = ["{key_hash("vk_extra")}"]\n')
    return "\n".join(out)


def rss_and_fds(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return fields.get("Rss", 0) - fields.get("LazyFree", 0), fds


def http(port, method, path, key=None, body=None, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body is not None else None)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rollover", type=float, default=None, help="minute of the month's end (default: half-way)")
    ap.add_argument("--rate", type=int, default=0, help="offered load, requests/s (default: half the measured maximum)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--fleet", action="store_true", help="usage and tenants in Redis (started by the run)")
    ap.add_argument("--ops", choices=("all", "reload", "overrides", "none"), default="all",
                    help="the operator's actions to run (to find what moves the latency)")
    ap.add_argument("--ops-every", type=float, default=60, help="seconds between the operator's rounds")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "soak"))
    a = ap.parse_args()
    rollover = a.minutes / 2 if a.rollover is None else a.rollover
    for tool in ("nginx", "wrk", "taskset"):
        if not load.shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"needs {tool}")
    if not os.path.exists(FAKETIME_LIB):
        sys.exit("needs libfaketime (apt-get install faketime)")
    if not a.skip_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    vivgate = os.path.join(ROOT, "target", "release", "vivgate")
    nginx = load.shutil.which("nginx") or "/usr/sbin/nginx"
    oha = load.ensure_oha()
    dir = tempfile.mkdtemp(prefix="vivgate-soak-")
    procs = []

    def start(cmd, cpu, env=None, log=None):
        p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL,
                             stderr=open(log or os.devnull, "a"), env=env)
        procs.append(p)
        return p

    def stop_all(*_):
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGINT, lambda *_: (stop_all(), sys.exit(130)))
    try:
        return soak(a, rollover, dir, vivgate, nginx, oha, start)
    finally:
        stop_all()


def soak(a, rollover, dir, vivgate, nginx, oha, start):
    ports = {t: load.free_port() for t in ("backend", "vivgate", "admin", "redis")}
    b = ports["backend"]
    body = load.BODY.replace("'", "\\'")
    backend_log = os.path.join(dir, "served.log")
    conf = load.nginx_conf(dir, "backend", f"""  log_format g '$http_x_vivreal_group_id';
  server {{ listen 127.0.0.1:{b};
    access_log {backend_log} g buffer=256k flush=1s;
    location / {{ default_type application/json; return 200 '{body}'; }} }}""")
    groups = 1000
    tenants = os.path.join(dir, "tenants.toml")
    with open(tenants, "w") as f:
        f.write(tenants_text(groups, False))
    config = os.path.join(dir, "vivgate.toml")
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    usage = (f'store = "redis"\nredis_url = "{redis_url}"' if a.fleet else "flush_interval_ms = 1000")
    with open(config, "w") as f:
        f.write(f"""tenants = "{redis_url if a.fleet else 'tenants.toml'}"
[server]
listen = "127.0.0.1:{ports['vivgate']}"
threads = 1
grace_period_seconds = 1
[tiers.soak]
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
[usage]
{usage}
[admin]
listen = "127.0.0.1:{ports['admin']}"
""")
    bp = start([nginx, "-c", conf], load.LOAD_CPU)
    load.wait_port(b, bp, "backend nginx")

    def push():
        r = subprocess.run([vivgate, "tenants", "push", "--config", config, "--file", tenants],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"tenants push: {r.stderr}")

    if a.fleet:
        rp = start(["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "yes", "--appendfsync", "everysec", "--dir", dir], load.LOAD_CPU)
        load.wait_port(ports["redis"], rp, "redis-server")
        push()
    # December ends `rollover` minutes after the start
    t_start = time.time()
    end_of_month = 1798761600  # 2027-01-01T00:00:00Z
    fake_start = end_of_month - int(rollover * 60)
    env = dict(os.environ, RUST_LOG="warn", TZ="UTC", LD_PRELOAD=FAKETIME_LIB,
               FAKETIME="@" + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(fake_start)),
               FAKETIME_DONT_FAKE_MONOTONIC="1")
    vlog = os.path.join(dir, "vivgate.log")
    vp = start([vivgate, "--config", config], load.PROXY_CPU, env, vlog)
    load.wait_port(ports["vivgate"], vp, "vivgate")
    pid = vp.pid
    # taskset execs vivgate in place: the pid is vivgate's
    print(f"vivgate pid {pid}, clock starts at {env['FAKETIME'][1:]} UTC, month ends at minute {rollover:g}", flush=True)

    # the maximum, then half of it
    script = os.path.join(dir, "key.lua")
    with open(script, "w") as f:
        f.write(f'wrk.headers["Authorization"] = "Bearer {load_key(0)}"\nwrk.path = "{PATH}"\n')
    max_rps = load.run_wrk(ports["vivgate"], script, 10, a.connections)["rps"]
    rate = a.rate or int(max_rps / 2)
    print(f"maximum {max_rps:.0f} requests/s; soak at {rate}/s for {a.minutes:g} minutes", flush=True)

    stop = threading.Event()
    op_errors = []
    ops = collections.Counter()

    def operator():
        minute = 0
        while not stop.wait(a.ops_every):
            minute += 1
            try:
                if a.ops in ("all", "reload"):
                    reload_op(minute)
                if a.ops in ("all", "overrides"):
                    overrides_op(minute)
            except Exception as e:  # noqa: BLE001  (reported, not fatal)
                op_errors.append(f"minute {minute}: {e!r}")

    def reload_op(minute):
        # a reload with the tenants file changed in turn (a group added, then removed)
        with open(tenants + ".tmp", "w") as f:
            f.write(tenants_text(groups, minute % 2 == 1))
        os.rename(tenants + ".tmp", tenants)
        if a.fleet:
            push()
        os.kill(pid, signal.SIGHUP)
        ops["reloads"] += 1
        time.sleep(2)
        s, _ = http(ports["vivgate"], "GET", PATH, "vk_extra")
        if s != (200 if minute % 2 == 1 else 401):
            op_errors.append(f"minute {minute}: the reloaded extra key answered {s}")

    def overrides_op(minute):
        # revoke a key and freeze a group (overrides), check, then remove both
        i = minute % 10
        ka, kb = side_keys(i)
        gid = side_id(i)
        s, t = http(ports["admin"], "DELETE", f"/groups/{gid}/keys/{key_hash(kb)}")
        if s != 200:
            op_errors.append(f"minute {minute}: revoke {s} {t}")
        s, t = http(ports["admin"], "PUT", f"/groups/{gid}/status", body='{"status": "frozen"}')
        if s != 200:
            op_errors.append(f"minute {minute}: freeze {s} {t}")
        checks = [(kb, 401), (ka, 400)]
        for k, want in checks:
            s, _ = http(ports["vivgate"], "GET", PATH, k)
            if s != want:
                op_errors.append(f"minute {minute}: {k} answered {s}, not {want}")
        if a.fleet:
            # the fleet's table: active again, and the file pushed again restores the key
            s, t = http(ports["admin"], "PUT", f"/groups/{gid}/status", body='{"status": "active"}')
            if s != 200:
                op_errors.append(f"minute {minute}: unfreeze {s} {t}")
            push()
            time.sleep(1)
        for o in () if a.fleet else (gid, key_hash(kb)):
            s, t = http(ports["admin"], "DELETE", f"/overrides/{o}")
            if s != 200:
                op_errors.append(f"minute {minute}: remove override {o}: {s} {t}")
        for k in (ka, kb):
            s, _ = http(ports["vivgate"], "GET", PATH, k)
            if s != 200:
                op_errors.append(f"minute {minute}: {k} answered {s} after the overrides went")
        ops["revocations"] += 1
        ops["status changes"] += 1

    op_thread = threading.Thread(target=operator, daemon=True)
    op_thread.start()
    rows = []
    windows = int(a.minutes * 6)
    for w in range(windows):
        key = load_key(w % groups)
        res = load.run_oha(oha, ports["vivgate"], rate, 10, a.connections, key)
        rss, fds = rss_and_fds(pid)
        t = time.time() - t_start
        row = dict(t=round(t), rss_mib=round(rss / 1024, 1), fds=fds,
                   rps=round(res.get("rps", 0)), p50_ms=round(res.get("p50", 0), 3),
                   p99_ms=round(res.get("p99", 0), 3), errors=res.get("errors", -1))
        if "error" in res:
            row["errors"] = -1
            print(f"oha failed: {res['error']}", flush=True)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    stop.set()
    op_thread.join(timeout=90)

    # usage: what vivgate counted, both months, against what the backend logged
    months = ("2026-12", "2027-01")
    counted = collections.Counter()
    per_month = {}
    for m in months:
        s, t = http(ports["admin"], "GET", f"/usage?month={m}")
        data = json.loads(t)["data"]["groups"]
        per_month[m] = sum(g["calls"] for g in data)
        for g in data:
            counted[g["id"]] += g["calls"]
    vp.send_signal(signal.SIGTERM)
    vp.wait(timeout=60)
    bp.send_signal(signal.SIGQUIT)  # nginx: flush the log buffer and stop
    bp.wait(timeout=60)
    served = collections.Counter()
    with open(backend_log) as f:
        for line in f:
            served[line.strip()] += 1
    served.pop("-", None)
    # the store file, read by a restarted vivgate, its clock where the first one's had got to
    fake_now = fake_start + int(time.time() - t_start)
    env2 = dict(env, FAKETIME="@" + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(fake_now)))
    vp2 = start([vivgate, "--config", config], load.PROXY_CPU, env2, vlog)
    load.wait_port(ports["admin"], vp2, "vivgate again")
    stored = collections.Counter()
    for m in months:
        s, t = http(ports["admin"], "GET", f"/usage?month={m}")
        for g in json.loads(t)["data"]["groups"]:
            stored[g["id"]] += g["calls"]
    vp2.terminate()
    vp2.wait(timeout=60)
    mismatched = {g: (served[g], counted[g], stored[g]) for g in set(served) | set(counted) | set(stored)
                  if not served[g] == counted[g] == stored[g]}

    report(a, rows, rate, max_rps, rollover, ops, op_errors, per_month, served, mismatched)


def where(a):
    return ("usage and tenants in Redis: the freezes and revocations change the fleet's table"
            if a.fleet else "overrides in the embedded store")


def flatness(values):
    lo, hi = min(values), max(values)
    return hi / lo if lo else float("inf")


def report(a, rows, rate, max_rps, rollover, ops, op_errors, per_month, served, mismatched):
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "soak.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    warm = [r for r in rows if r["t"] >= 120] or rows
    errors = sum(max(r["errors"], 0) for r in rows) + sum(1 for r in rows if r["errors"] < 0)
    minute_p99 = []
    for i in range(0, len(warm) - 5, 6):
        ps = sorted(r["p99_ms"] for r in warm[i:i + 6])
        minute_p99.append((ps[2] + ps[3]) / 2)
    lines = [
        f"Soak: {a.minutes:g} minutes at {rate} requests/s (half of the measured maximum, {max_rps:.0f}/s), "
        f"vivgate on one core, {sum(r['rps'] for r in rows) * 10:,} requests in all; the month rolled over at "
        f"minute {rollover:g} (libfaketime); {ops['reloads']} reloads, {ops['revocations']} key revocations and "
        f"{ops['status changes']} status changes ({where(a)}), each checked and undone.",
        "",
        "| measure (after the 2-minute warm-up) | min | max | max / min | target |",
        "|---|---|---|---|---|",
    ]
    for name, key, target in (("RSS − LazyFree, MiB", "rss_mib", "≤ 1.10"), ("open descriptors", "fds", "≤ 1.10"),
                              ("p50 per 10 s, ms", "p50_ms", ""), ("p99 per 10 s, ms", "p99_ms", "")):
        vals = [r[key] for r in warm]
        lines.append(f"| {name} | {min(vals)} | {max(vals)} | {flatness(vals):.2f} | {target} |")
    if minute_p99:
        lines.append(f"| p99, median of each minute's windows, ms | {min(minute_p99):.3f} | {max(minute_p99):.3f} | "
                     f"{flatness(minute_p99):.2f} | ≤ 1.20 |")
    blocks = [statistics.median(r["p99_ms"] for r in warm[i:i + 30]) for i in range(0, len(warm) - 15, 30)]
    if len(blocks) > 1:
        lines.append(f"| p99, median of each 5 minutes' windows, ms | {min(blocks):.3f} | {max(blocks):.3f} | "
                     f"{flatness(blocks):.2f} | ≤ 1.20 |")
    half = len(warm) // 2
    if half:
        h1 = statistics.median(r["p99_ms"] for r in warm[:half])
        h2 = statistics.median(r["p99_ms"] for r in warm[half:])
        lines.append(f"| p99, median of the first and of the second half, ms | {min(h1, h2):.3f} | {max(h1, h2):.3f} | "
                     f"{flatness([h1, h2]):.2f} | ≤ 1.20 |")
    lines += [
        "",
        f"Errors (answers other than 200, socket errors, failed windows): {errors}. Operator checks that failed: "
        f"{len(op_errors)}{': ' + '; '.join(op_errors[:5]) if op_errors else ''}.",
        f"Usage: calls stored in 2026-12 {per_month['2026-12']:,}, in 2027-01 {per_month['2027-01']:,}; "
        f"the backend served {sum(served.values()):,}; groups whose backend count, live count and stored count "
        f"differ: {len(mismatched)}{' ' + str(dict(list(mismatched.items())[:5])) if mismatched else ''}.",
    ]
    text = "\n".join(lines)
    with open(os.path.join(a.out, "soak.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: the chart is not drawn (apt-get install python3-matplotlib; run with /usr/bin/python3)")
        return
    t = [r["t"] / 60 for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    ax[0].plot(t, [r["rss_mib"] for r in rows], label="RSS − LazyFree (MiB)")
    ax[0].plot(t, [r["fds"] for r in rows], label="open descriptors")
    ax[0].legend(loc="upper left", fontsize=8)
    ax[1].plot(t, [r["p50_ms"] for r in rows], label="p50 (ms)")
    ax[1].plot(t, [r["p99_ms"] for r in rows], label="p99 (ms)")
    ax[1].legend(loc="upper left", fontsize=8)
    ax[2].plot(t, [r["rps"] for r in rows], label="requests/s")
    ax[2].plot(t, [max(r["errors"], 0) for r in rows], label="errors")
    ax[2].legend(loc="upper left", fontsize=8)
    for x in ax:
        x.axvline(rollover, color="grey", linestyle=":", linewidth=1)
        x.grid(alpha=0.3)
    ax[2].set_xlabel(f"minutes (every 10 s; dotted: the month's end; a reload and overrides every minute)")
    fig.suptitle(f"vivgate soak{' (fleet: Redis)' if a.fleet else ''}: {rate} requests/s for {a.minutes:g} minutes on one core")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "soak.png"), dpi=100)
    print(f"chart: {os.path.join(a.out, 'soak.png')}")


if __name__ == "__main__":
    main()
