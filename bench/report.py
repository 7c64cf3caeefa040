#!/usr/bin/env python3
"""Prints the scripts/bench table (markdown) from a results directory.

    python3 bench/report.py /tmp/wfp-bench.XXXXXX/results

Every figure is the median over the repetitions; ratio = workflow-proxy / nginx.
"""
import glob
import json
import os
import statistics
import sys

res = sys.argv[1]


def kv_file(path):
    """key=value pairs, whitespace separated, possibly over several lines."""
    d = {}
    try:
        text = open(path).read()
    except OSError:
        return d
    for tok in text.split():
        k, sep, v = tok.partition("=")
        if not sep:
            continue
        try:
            d[k] = float(v)
        except ValueError:
            d[k] = v
    return d


def env_file(path):
    d = {}
    for line in open(path):
        k, _, v = line.rstrip("\n").partition("=")
        d[k] = v
    return d


def reps(prefix):
    """Result dicts of prefix.1, prefix.2, ... (numeric suffix only)."""
    out = []
    for p in sorted(glob.glob(prefix + ".*")):
        suffix = p[len(prefix) + 1:]
        if suffix.isdigit():
            out.append(kv_file(p))
    return out


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def med_key(rows, key):
    return med([r.get(key) for r in rows if isinstance(r.get(key), float)])


def fmt(v, unit="", digits=0):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if digits == 0:
        s = f"{v:,.0f}"
    else:
        s = f"{v:,.{digits}f}"
    return s + unit


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def met(ok):
    if ok is None:
        return "—"
    return "yes" if ok else "**no**"


env = env_file(os.path.join(res, "env"))
rows = []
notes = []


def row(figure, proxy, nginx, rat, target, ok):
    rows.append((figure, proxy, nginx, rat, target, met(ok)))


# ---------------------------------------------------------------- cache-hit throughput
pm, pr = reps(f"{res}/hit.proxy-mem"), reps(f"{res}/hit.proxy-redis")
nc, nr = reps(f"{res}/hit.nginx-cache"), reps(f"{res}/hit.nginx-return")
if pm:
    pm_rps, nc_rps, nr_rps, pr_rps = (med_key(x, "rps") for x in (pm, nc, nr, pr))
    row("cache-hit throughput, memory backend (req/s)", fmt(pm_rps), fmt(nc_rps) + " (proxy_cache)",
        ratio(pm_rps, nc_rps), "≥ nginx proxy_cache", pm_rps is not None and nc_rps and pm_rps >= nc_rps)
    for q in ("p50", "p99"):
        a, b = med_key(pm, f"{q}_us"), med_key(nc, f"{q}_us")
        row(f"cache-hit latency {q}, memory backend (µs, {env.get('wrk_conns')} conns)", fmt(a), fmt(b),
            ratio(a, b), "—", None)
    row("ceiling: nginx `return 200` (req/s)", fmt(pm_rps) + " (memory hit)", fmt(nr_rps), ratio(pm_rps, nr_rps),
        "—", None)
    rr = (pr_rps / pm_rps) if pr_rps and pm_rps else None
    row("cache-hit throughput, Redis backend, L1 off (req/s)", fmt(pr_rps), fmt(nc_rps) + " (proxy_cache)",
        ratio(pr_rps, nc_rps), f"≥ 0.7 × memory backend (here {rr:.2f} ×)" if rr else "≥ 0.7 × memory",
        rr is not None and rr >= 0.7)
    for q in ("p50", "p99"):
        a, b = med_key(pr, f"{q}_us"), med_key(nc, f"{q}_us")
        row(f"cache-hit latency {q}, Redis backend (µs)", fmt(a), fmt(b), ratio(a, b), "—", None)
    errs = sum(int(r.get("non2xx", 0) + r.get("errors", 0)) for r in pm + pr + nc + nr)
    if errs:
        notes.append(f"wrk saw {errs} non-2xx answers or socket errors in the hit runs (see hit.*.full).")

# ---------------------------------------------------------------- cache-hit throughput over TLS
pt, nt = reps(f"{res}/hit.proxy-tls"), reps(f"{res}/hit.nginx-tls")


def negotiated(side):
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' from openssl s_client -brief, or None."""
    got = {}
    try:
        for line in open(f"{res}/tls.{side}.handshake"):
            k, sep, v = line.partition(":")
            if sep and k.strip() in ("Protocol version", "Ciphersuite"):
                got[k.strip()] = v.strip()
    except OSError:
        return None
    return " ".join(got.get(k, "?") for k in ("Protocol version", "Ciphersuite")) if got else None


if pt:
    pt_rps, nt_rps = med_key(pt, "rps"), med_key(nt, "rps")
    row("cache-hit throughput over TLS, memory backend (req/s)", fmt(pt_rps), fmt(nt_rps) + " (proxy_cache, ssl)",
        ratio(pt_rps, nt_rps), "≥ nginx with ssl, same certificate", pt_rps is not None and nt_rps and pt_rps >= nt_rps)
    for q in ("p50", "p99"):
        a, b = med_key(pt, f"{q}_us"), med_key(nt, f"{q}_us")
        row(f"cache-hit latency {q} over TLS (µs, {env.get('wrk_conns')} conns)", fmt(a), fmt(b), ratio(a, b), "—",
            None)
    errs = sum(int(r.get("non2xx", 0) + r.get("errors", 0)) for r in pt + nt)
    if errs:
        notes.append(f"wrk saw {errs} non-2xx answers or socket errors in the TLS hit runs (see hit.*-tls.*.full).")
    p_neg, n_neg = negotiated("proxy"), negotiated("nginx")
    if p_neg or n_neg:
        notes.append(f"TLS negotiated with an OpenSSL client: proxy {p_neg or '?'}, nginx {n_neg or '?'}.")
# ---------------------------------------------------------------- distinct-input misses
dp, dn = reps(f"{res}/distinct.proxy"), reps(f"{res}/distinct.nginx")
if dp:
    p_rps, n_rps = med_key(dp, "rps"), med_key(dn, "rps")
    p_cpu, n_cpu = med_key(dp, "cpu_us_per_req"), med_key(dn, "cpu_us_per_req")
    tr = p_rps / n_rps if p_rps and n_rps else None
    cr = p_cpu / n_cpu if p_cpu and n_cpu else None
    row("miss, a distinct input per request: throughput (req/s)", fmt(p_rps), fmt(n_rps) + " (proxy_pass)",
        ratio(p_rps, n_rps), "≥ 0.8 × nginx proxy_pass", tr is not None and tr >= 0.8)
    row("miss, a distinct input per request: CPU per request (µs)", fmt(p_cpu, digits=1),
        fmt(n_cpu, digits=1) + " (proxy_pass)", ratio(p_cpu, n_cpu), "≤ 1.3 × nginx proxy_pass",
        cr is not None and cr <= 1.3)
    for q in ("p50", "p99"):
        a, b = med_key(dp, f"{q}_us"), med_key(dn, f"{q}_us")
        row(f"miss, a distinct input per request: latency {q} (µs)", fmt(a), fmt(b), ratio(a, b), "—", None)
    fl = med_key(reps(f"{res}/distinct.floor"), "cpu_us_per_transfer")
    if fl is not None:
        row("… libcurl floor (https:// upstreams; http:// ones use the own client): a bare libcurl multi loop, "
            "CPU per transfer (µs)", fmt(fl, digits=1),
            fmt(n_cpu, digits=1) + " (proxy_pass, per request)", ratio(fl, n_cpu), "—", None)
    errs = sum(int(r.get("non2xx", 0) + r.get("errors", 0)) for r in dp + dn)
    notes.append(
        "distinct-input misses: wrk with bench/distinct.lua (a new JSON body per request), the proxy with "
        "cache.backend off and a budget far above the load, nginx proxy_pass with a keep-alive upstream, "
        "repetitions interleaved; CPU per request = utime + stime of the proxy / of nginx's worker over the run "
        "(/proc/PID/stat) divided by the requests answered. Per repetition (req/s, µs CPU): proxy %s; nginx %s. "
        "The simulator's own CPU per request: %s µs behind the proxy, %s µs behind nginx. Non-2xx or errors: %d." % (
            ", ".join(f"{fmt(r.get('rps'))} / {fmt(r.get('cpu_us_per_req'), digits=1)}" for r in dp),
            ", ".join(f"{fmt(r.get('rps'))} / {fmt(r.get('cpu_us_per_req'), digits=1)}" for r in dn),
            fmt(med_key(dp, "sim_cpu_us_per_req"), digits=1), fmt(med_key(dn, "sim_cpu_us_per_req"), digits=1),
            errs))

# ---------------------------------------------------------------- miss latency
md, mp, mn = reps(f"{res}/miss.direct"), reps(f"{res}/miss.proxy"), reps(f"{res}/miss.nginx")


def pooled(target):
    """p50/p99 over every request of every round (µs), from the .lat files."""
    lat = []
    for p in glob.glob(f"{res}/miss.{target}.*.lat"):
        for line in open(p):
            parts = line.split()
            if len(parts) == 3 and parts[2] == "200":
                lat.append(float(parts[1]))
    if not lat:
        return None, None
    lat.sort()
    return lat[int(0.5 * (len(lat) - 1))], lat[int(0.99 * (len(lat) - 1))]


def overhead_us(path):
    """Mean of workflow_proxy_overhead_seconds (the proxy's own cost per request) from a /metrics dump."""
    total = count = None
    try:
        for line in open(path):
            if line.startswith("workflow_proxy_overhead_seconds_sum"):
                total = float(line.split()[-1])
            elif line.startswith("workflow_proxy_overhead_seconds_count"):
                count = float(line.split()[-1])
    except OSError:
        return None
    return total / count * 1e6 if total is not None and count else None


if md and mp:
    oh = overhead_us(f"{res}/proxy-off.metrics")
    if oh is not None:
        notes.append(f"the proxy's own workflow_proxy_overhead_seconds (mean over the miss rounds): {oh:.0f} µs per request.")
    for q, target in (("p50", 100), ("p99", 500)):
        pa = med([p[f"{q}_us"] - d[f"{q}_us"] for p, d in zip(mp, md)])
        na = med([n[f"{q}_us"] - d[f"{q}_us"] for n, d in zip(mn, md)]) if mn else None
        ok = pa is not None and pa <= target
        noisy = q == "p99" and (any(v < 0 for v in (pa, na) if v is not None)
                                or (med_key(md, "p99_us") or 0) > 5 * (med_key(md, "p50_us") or 1))
        rows.append((f"added latency of a miss at 1 000 req/s, {q} (µs over direct)", fmt(pa, digits=0),
                     fmt(na, digits=0), ratio(pa, na), f"≤ {target} µs",
                     ("yes" if ok else "**no**") + (" (unreliable: the direct call's p99 is noise)" if noisy else "")))
    pd_, pp_, pn_ = pooled("direct"), pooled("proxy"), pooled("nginx")
    notes.append(
        "miss latency: %d rounds of 1 000 distinct requests at 1 000/s per target, targets interleaved round by "
        "round (open loop, latency from the due time, cache off); the rows are medians over the rounds of "
        "(target − direct) of the same round. Medians of the rounds' p50/p99: direct %s/%s µs, proxy %s/%s µs, "
        "nginx proxy_pass %s/%s µs; all requests pooled: direct %s/%s, proxy %s/%s, nginx %s/%s µs. "
        "Non-200, errors or unanswered: direct %d, proxy %d, nginx %d." % (
            len(md),
            fmt(med_key(md, "p50_us")), fmt(med_key(md, "p99_us")),
            fmt(med_key(mp, "p50_us")), fmt(med_key(mp, "p99_us")),
            fmt(med_key(mn, "p50_us")), fmt(med_key(mn, "p99_us")),
            fmt(pd_[0]), fmt(pd_[1]), fmt(pp_[0]), fmt(pp_[1]), fmt(pn_[0]), fmt(pn_[1]),
            sum(int(r.get("non200", 0) + r.get("errors", 0) + r.get("unanswered", 0)) for r in md),
            sum(int(r.get("non200", 0) + r.get("errors", 0) + r.get("unanswered", 0)) for r in mp),
            sum(int(r.get("non200", 0) + r.get("errors", 0) + r.get("unanswered", 0)) for r in mn)))

# ---------------------------------------------------------------- coalescing
cp, cn, cf = reps(f"{res}/coalesce.proxy"), reps(f"{res}/coalesce.nginx"), reps(f"{res}/coalesce.fleet")
if cp:
    def runs(rs):
        return ", ".join(str(int(r.get("upstream_runs", -1))) for r in rs)

    def all_ok(rs):
        return all(int(r.get("ok", 0)) == 1000 for r in rs)

    pr_ = [int(r.get("upstream_runs", -1)) for r in cp]
    fr_ = [int(r.get("upstream_runs", -1)) for r in cf]
    row("1 000 concurrent identical requests: upstream runs (each repetition)", runs(cp), runs(cn) + " (proxy_cache_lock)",
        "—", "exactly 1", all(x == 1 for x in pr_) and all_ok(cp))
    row("… across 3 proxy instances on one Redis", runs(cf), "—", "—", "exactly 1",
        all(x == 1 for x in fr_) and all_ok(cf))
    notes.append("coalescing: answers 200 / 1 000: proxy %s; nginx %s; 3 instances %s. Median time to the last answer: "
                 "proxy %s ms, nginx %s ms (workflow latency 500 ms)." % (
                     ", ".join(str(int(r.get("ok", 0))) for r in cp),
                     ", ".join(str(int(r.get("ok", 0))) for r in cn),
                     ", ".join(str(int(r.get("ok", 0))) for r in cf),
                     fmt(med_key(cp, "max_us") / 1000 if cp else None),
                     fmt(med_key(cn, "max_us") / 1000 if cn and med_key(cn, "max_us") else None)))

# ---------------------------------------------------------------- overload
secs = float(env.get("overload_secs", 60))


def overload(t):
    lg = kv_file(f"{res}/overload.{t}")
    if not lg:
        return None
    try:
        stats = json.load(open(f"{res}/overload.{t}.stats"))
        recs = json.load(open(f"{res}/overload.{t}.records"))["requests"]
    except (OSError, ValueError, KeyError):
        return None
    times = [r["time_ms"] for r in recs]
    t0 = min(times) if times else 0
    ok_in = sum(1 for r in recs if r.get("status") == 200 and t0 <= r["time_ms"] < t0 + secs * 1000)
    # the busiest sliding 1 s window of upstream starts (all that passed the rate limit)
    starts = sorted(r["time_ms"] for r in recs if r.get("status") != 429)
    peak, j = 0, 0
    for i, s in enumerate(starts):
        while starts[j] <= s - 1000:
            j += 1
        peak = max(peak, i - j + 1)
    return {
        "429": int(stats.get("status_429", 0)),
        "use": ok_in / (10 * secs),
        "lost": int(lg.get("non200", 0) + lg.get("errors", 0)),
        "ok": int(lg.get("ok", 0)),
        "sent": int(lg.get("requests", 0)),
        "queued": int(lg.get("unanswered", 0) + lg.get("not_sent", 0)),
        "peak": peak,
        "codes": {k: int(v) for k, v in lg.items() if k.startswith("status_") and k != "status_200"},
    }


op, on = overload("proxy"), overload("nginx")
if op:
    on = on or {}
    row(f"5× overload of 10/s for {secs:.0f} s: upstream 429s", str(op["429"]), str(on.get("429", "—")), "—", "0",
        op["429"] == 0)
    row("… budget use (200 starts in the first %.0f s / %d)" % (secs, 10 * secs), f"{op['use'] * 100:.1f} %",
        f"{on['use'] * 100:.1f} %" if on else "—", ratio(op["use"], on.get("use")), "≥ 98 %", op["use"] >= 0.98)
    row("… requests lost (non-200 answers + errors before the cut-off)", str(op["lost"]), str(on.get("lost", "—")),
        "—", "0", op["lost"] == 0)
    notes.append(
        "overload: %d distinct requests at 50/s, cut off %.0f s after the start (load + 2 s); requests still "
        "queued then are not counted as lost — answered 200 / still queued: proxy %d / %d, nginx %s / %s; "
        "busiest 1 s of upstream starts: proxy %d, nginx %s; other statuses: proxy %s, nginx %s." % (
            op["sent"], secs + 2, op["ok"], op["queued"], on.get("ok", "—"), on.get("queued", "—"),
            op["peak"], on.get("peak", "—"), op["codes"] or "none", on.get("codes") or "none"))

# ---------------------------------------------------------------- RSS
rq, ri = kv_file(f"{res}/rss_queued"), kv_file(f"{res}/rss_idle")
MiB = 1024.0
if rq.get("proxy_kb"):
    a, b = rq["proxy_kb"] / MiB, (rq.get("nginx_kb") or 0) / MiB or None
    row("RSS with %d queued requests (MiB)" % int(rq.get("proxy_depth", 0)), fmt(a, digits=1),
        fmt(b, digits=1) + " (limit_req delay)" if b else "—", ratio(a, b), "≤ 64 MiB", a <= 64)
    notes.append("queued RSS: proxy idle before the load %.1f MiB, peak %.1f MiB; nginx (master + worker, "
                 "worker_connections sized for the test) %.1f MiB idle, %d connections held." % (
                     rq.get("proxy_idle_kb", 0) / MiB, rq.get("proxy_hwm_kb", 0) / MiB,
                     rq.get("nginx_idle_kb", 0) / MiB, int(rq.get("nginx_conns", 0))))
if ri.get("proxy_kb"):
    a, b = ri["proxy_kb"] / MiB, (ri.get("nginx_kb") or 0) / MiB or None
    row("idle RSS after start (MiB)", fmt(a, digits=1), fmt(b, digits=1) + " (master + worker)" if b else "—",
        ratio(a, b), "≤ 16 MiB", a <= 16)

print(f"workflow-proxy benchmark — {env.get('date')} — {env.get('nproc')} CPUs ({env.get('cpu')}), "
      f"kernel {env.get('kernel')}, load average at start {env.get('loadavg')}, "
      f"CPU busy before start {env.get('busy_pct', '?')} %")
try:
    if float(env.get("busy_pct", 0)) > 10:
        print(f"**WARNING: other processes kept the CPUs {env.get('busy_pct')} % busy before the start; "
              "every figure is skewed (nginx and the proxy suffer alike, but not necessarily equally).**")
except ValueError:
    pass
print(f"{env.get('nginx')}, {env.get('wrk')}; {env.get('placement')}; "
      f"{'QUICK run; ' if env.get('quick') == '1' else ''}medians of {env.get('reps')} repetitions; "
      f"wrk -t1 -c{env.get('wrk_conns')} -d{env.get('hit_secs')}s; one nginx worker; elapsed {env.get('elapsed_s', '?')} s")
print()
print("| figure | workflow-proxy | nginx | ratio | target | met? |")
print("|---|---:|---:|---:|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
if notes:
    print()
    for n in notes:
        print("* " + n)
