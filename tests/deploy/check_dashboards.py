#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus rules against the metrics
the proxy really exports.

  check_dashboards.py --proxy PATH/TO/workflow-proxy [--sim PATH/TO/upstream_sim] [--source REPO]

1. Static: deploy/grafana/workflow-proxy.json (schema, the DS_PROMETHEUS,
   instance and org variables, every panel and query on ${DS_PROMETHEUS}),
   deploy/prometheus/alerts.yaml (the expected alerts, each with severity and
   summary) and prometheus.yaml; `promtool check rules` / `check config` when
   promtool is on PATH.
2. Live, when WFP_REDIS_URL names a running Redis (scripts/test sets it): the
   proxy starts on free loopback ports with Redis configured (and the
   simulator as its upstream, when --sim is given, for a few requests so that
   labelled series exist), /metrics is parsed with prometheus_client's parser,
   and every metric name used by a dashboard query or an alert expression
   must be exported (histograms as _bucket/_sum/_count, counters as _total),
   with the labels the queries group by or match on.
   Without WFP_REDIS_URL the live part is skipped: exit 77 (ctest SKIP).

Exit status 0 when everything holds, 1 otherwise, 77 when skipped.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploycheck as dc  # noqa: E402

dc.import_or_reexec("yaml", "prometheus_client")
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SKIP = 77
DS_UID = "${DS_PROMETHEUS}"
# Series Prometheus makes itself, not the proxy.
SYNTHETIC_METRICS = {"up"}
# Labels Prometheus attaches (target labels of deploy/prometheus/prometheus.yaml).
TARGET_LABELS = {"instance", "job", "namespace", "pod"}
EXPECTED_ALERTS = {"WorkflowProxyDown", "WorkflowProxyQueueNearFull", "WorkflowProxyUpstream429",
                   "WorkflowProxyRedisDown", "WorkflowProxyReloadFailed", "WorkflowProxyOverheadHigh"}
# Metrics the lead engineer adds in this same change; named in the failure
# message so a missing one is recognised at once.
PENDING = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
           "process_open_fds", "process_max_fds", "process_start_time_seconds",
           "workflow_proxy_config_last_reload_successful",
           "workflow_proxy_config_last_reload_success_timestamp_seconds"}

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                   "bool", "offset", "inf", "nan", "atan2"}


# --- PromQL, enough to find metric and label names ------------------------------

def grafana_to_promql(expr):
    """Grafana's variables replaced by something PromQL parses."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{__\w+\}", "5m", expr)
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


def promql_names(expr):
    """(metric names, label names) used by one PromQL expression."""
    s = grafana_to_promql(expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', s)
    labels = set()
    for m in re.finditer(r"\{([^{}]*)\}", s):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1)))
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    metrics = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)", s):
        name = m.group(1)
        rest = s[m.end():].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_KEYWORDS:
            continue
        metrics.add(name)
    return metrics, labels


def balanced(expr):
    depth = {"(": 0, "[": 0, "{": 0}
    pairs = {")": "(", "]": "[", "}": "{"}
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for ch in s:
        if ch in depth:
            depth[ch] += 1
        elif ch in pairs:
            depth[pairs[ch]] -= 1
            if depth[pairs[ch]] < 0:
                return False
    return all(v == 0 for v in depth.values()) and s.count('"') % 2 == 0


def template_query_names(query):
    """label_values(expr, label) and friends → (metrics, labels)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query, re.S)
    if m:
        metrics, labels = promql_names(m.group(1))
        return metrics, labels | {m.group(2)}
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if m:
        return set(), {m.group(1)}
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return promql_names(m.group(1) if m else query)


# --- static checks -----------------------------------------------------------------

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def check_dashboard(r, path):
    uses = []  # (where, expr or None, metrics, labels)
    try:
        dash = json.load(open(path))
    except (OSError, ValueError) as e:
        r.check(False, "the dashboard parses as JSON", str(e))
        return uses
    r.check(36 <= int(dash.get("schemaVersion", 0)) <= 41, "dashboard schemaVersion is a current one (~39)",
            str(dash.get("schemaVersion")))
    r.check(bool(dash.get("title")) and bool(dash.get("uid")), "dashboard has a title and a uid")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = variables.get("DS_PROMETHEUS") or {}
    r.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
            "dashboard has a Prometheus data source variable DS_PROMETHEUS")
    for name in ("instance", "org"):
        v = variables.get(name) or {}
        r.check(v.get("type") == "query", f"dashboard has a query variable `{name}`")
        r.check(v.get("includeAll") is True and v.get("multi") is True and v.get("allValue") == ".*",
                f"variable `{name}` allows several values and All (.*)")
        r.check((v.get("datasource") or {}).get("uid") == DS_UID, f"variable `{name}` queries ${{DS_PROMETHEUS}}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if r.check(isinstance(q, str) and q, f"variable `{name}` has a query"):
            metrics, labels = template_query_names(q)
            r.check(name in labels, f"variable `{name}` lists values of the label {name}", q)
            uses.append((f"variable {name}", q, metrics, labels))
    for v in variables.values():
        if v.get("type") == "query":
            pass
    ids = []
    panels = list(all_panels(dash.get("panels") or []))
    r.check(len([p for p in panels if p.get("type") != "row"]) >= 10, "dashboard has its panels",
            str(len(panels)))
    titles = " | ".join(p.get("title", "") for p in panels).lower()
    for words in ("cache status", "hit ratio", "upstream requests", "429", "queue depth", "queue wait",
                  "budget", "overhead", "redis", "resident memory", "reload"):
        r.check(words in titles, f"dashboard has a panel on {words}")
    for p in panels:
        ids.append(p.get("id"))
        gp = p.get("gridPos") or {}
        r.check(all(k in gp for k in ("h", "w", "x", "y")) and gp["x"] + gp["w"] <= 24,
                f"panel {p.get('title')!r} has a grid position inside 24 columns", str(gp))
        if p.get("type") == "row":
            continue
        r.check(bool(p.get("description")), f"panel {p.get('title')!r} says what it shows")
        r.check((p.get("datasource") or {}).get("uid") == DS_UID, f"panel {p.get('title')!r} uses ${{DS_PROMETHEUS}}")
        targets = p.get("targets") or []
        r.check(bool(targets), f"panel {p.get('title')!r} has queries")
        for t in targets:
            expr = t.get("expr", "")
            where = f"panel {p.get('title')!r} query {t.get('refId')}"
            r.check(bool(expr.strip()), f"{where} has an expression")
            r.check((t.get("datasource") or {}).get("uid") == DS_UID, f"{where} uses ${{DS_PROMETHEUS}}")
            r.check(balanced(expr), f"{where} has balanced brackets and quotes", expr)
            metrics, labels = promql_names(expr)
            r.check(bool(metrics), f"{where} names a metric", expr)
            uses.append((where, expr, metrics, labels))
            for m in metrics:
                if m not in SYNTHETIC_METRICS:
                    r.check('instance=~"$instance"' in expr, f"{where} follows the instance variable", expr)
                    break
    r.check(len(ids) == len(set(ids)), "panel ids are unique")
    return uses


def parse_duration(text):
    m = re.fullmatch(r"(\d+)([smhd])", str(text))
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else None


def check_alerts(r, src):
    uses = []
    path = os.path.join(src, "deploy", "prometheus", "alerts.yaml")
    try:
        rules = yaml.safe_load(open(path))
    except (OSError, yaml.YAMLError) as e:
        r.check(False, "alerts.yaml parses", str(e))
        return uses
    groups = rules.get("groups") if isinstance(rules, dict) else None
    if not r.check(isinstance(groups, list) and groups, "alerts.yaml has rule groups"):
        return uses
    names = set()
    for g in groups:
        r.check(bool(g.get("name")), "every rule group has a name")
        for rule in g.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            names.add(name)
            expr = str(rule.get("expr", ""))
            r.check(bool(expr.strip()), f"rule {name} has an expression")
            r.check(balanced(expr), f"rule {name} has balanced brackets and quotes", expr)
            if rule.get("alert"):
                r.check((rule.get("labels") or {}).get("severity") in ("critical", "warning", "info"),
                        f"alert {name} has a severity")
                r.check(bool((rule.get("annotations") or {}).get("summary")), f"alert {name} has a summary")
                r.check(bool((rule.get("annotations") or {}).get("description")), f"alert {name} has a description")
                if "for" in rule:
                    r.check(parse_duration(rule["for"]) is not None, f"alert {name} has a valid `for`", rule["for"])
            metrics, labels = promql_names(expr)
            r.check(bool(metrics), f"rule {name} names a metric", expr)
            uses.append((f"alert {name}", expr, metrics, labels))
    missing = EXPECTED_ALERTS - names
    r.check(not missing, "alerts.yaml has the expected alerts", " ".join(sorted(missing)))
    redis_rules = [e for w, e, m, l in uses if "workflow_proxy_redis_up" in m]
    r.check(all("absent" not in e for e in redis_rules),
            "the Redis alert does not fire on instances without Redis (no absent())")

    prom = os.path.join(src, "deploy", "prometheus", "prometheus.yaml")
    try:
        cfg = yaml.safe_load(open(prom))
        jobs = [j.get("job_name") for j in cfg.get("scrape_configs") or []]
        r.check(bool(jobs), "prometheus.yaml has scrape jobs")
        down = next((e for w, e, m, l in uses if w == "alert WorkflowProxyDown"), "")
        jm = re.search(r'job=~"([^"]+)"', down) or re.search(r'job="([^"]+)"', down)
        if jm:
            pattern = jm.group(1)
            r.check(all(re.fullmatch(pattern, j) for j in jobs), "WorkflowProxyDown covers every job of prometheus.yaml",
                    f"{pattern} vs {jobs}")
        r.check("alerts.yaml" in (cfg.get("rule_files") or []), "prometheus.yaml loads alerts.yaml")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        r.check(False, "prometheus.yaml parses", str(e))

    promtool = shutil.which("promtool")
    if promtool:
        p = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, timeout=30)
        r.check(p.returncode == 0, "promtool check rules alerts.yaml", (p.stdout + p.stderr).strip()[-800:])
        p = subprocess.run([promtool, "check", "config", "--syntax-only", prom], capture_output=True, text=True,
                           timeout=30, cwd=os.path.dirname(prom))
        r.check(p.returncode == 0, "promtool check config prometheus.yaml", (p.stdout + p.stderr).strip()[-800:])
    else:
        r.note("promtool not on PATH: the rules were checked by this script's own reading only")
    return uses


# --- live check -----------------------------------------------------------------------

def http(method, url, body=None, headers=None, timeout=5):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def exported(families):
    """{sample or family name: set of label names seen}."""
    names = {}
    for fam in families:
        if fam.type == "counter":
            base = [fam.name + "_total"]
        elif fam.type == "histogram":
            base = [fam.name + s for s in ("_bucket", "_sum", "_count")]
        elif fam.type == "summary":
            base = [fam.name, fam.name + "_sum", fam.name + "_count"]
        else:
            base = [fam.name]
        for b in base:
            names.setdefault(b, set())
        for s in fam.samples:
            names.setdefault(s.name, set()).update(s.labels.keys())
    return names


class Processes:
    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def live_check(r, proxy_bin, sim_bin, redis_url, uses):
    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="wfp-deploy-metrics-")
    try:
        upstream = "http://127.0.0.1:9"  # discard: nothing is sent without --sim
        if sim_bin:
            sim = procs.start([sim_bin, "--listen", "127.0.0.1:0", "--quiet"], stdout=subprocess.PIPE, text=True)
            line = sim.stdout.readline()
            m = re.fullmatch(r"PORT (\d+)\n", line)
            if not r.check(m is not None, "the upstream simulator starts", repr(line)):
                return
            upstream = f"http://127.0.0.1:{m.group(1)}"
        listen, admin = dc.free_port(), dc.free_port()
        token = os.path.join(tmp, "admin-token")
        with open(token, "w") as f:
            f.write("deploy-check-token\n")
        config = os.path.join(tmp, "workflow-proxy.yaml")
        with open(config, "w") as f:
            f.write(f"""listen: 127.0.0.1:{listen}
admin_listen: 127.0.0.1:{admin}
admin:
  token_file: {token}
shutdown_grace_s: 2
log:
  level: warn
  access_log: "off"
upstream:
  base_url: {upstream}
  timeout_s: 10
  connect_timeout_s: 2
redis:
  url: ${{WFP_REDIS_URL}}
  key_prefix: "wfp-deploy-check-{os.getpid()}-{int(time.time())}:"
cache:
  backend: redis
  ttl_s: 60
rate_limit:
  queue_max: 100
  max_wait_s: 10
default_organisation: acme
organisations:
  - name: acme
    api_key: sk_sim_acme
""")
        log = open(os.path.join(tmp, "proxy.log"), "w+")
        proxy = procs.start([proxy_bin, "--config", config], stdout=log, stderr=subprocess.STDOUT,
                            env=dc.clean_env(WFP_REDIS_URL=redis_url))
        base = f"http://127.0.0.1:{admin}"
        deadline = time.time() + 15
        up = False
        while time.time() < deadline and proxy.poll() is None:
            try:
                if http("GET", base + "/healthz", timeout=1)[0] == 200:
                    up = True
                    break
            except OSError:
                pass
            time.sleep(0.05)
        if not up:
            log.seek(0)
            r.check(False, "the proxy starts with Redis configured", log.read()[-1500:])
            return
        # Redis connects asynchronously: wait until /readyz reports it.
        while time.time() < deadline:
            if '"redis":"up"' in http("GET", base + "/readyz")[2]:
                break
            time.sleep(0.05)
        if sim_bin:
            body = b'{"story":"a deployment check"}'
            for expect in ("MISS", "HIT"):
                status, headers, text = http("POST", f"http://127.0.0.1:{listen}/api/v1/run/wf_deploy_check", body,
                                             {"Content-Type": "application/json"}, timeout=10)
                r.check(status == 200 and headers.get("X-Cache") == expect,
                        f"a run through the proxy is answered ({expect})", f"{status} {headers.get('X-Cache')} {text[:200]}")
        status, headers, text = http("GET", base + "/metrics")
        r.check(status == 200, "GET /metrics answers 200", str(status))
        try:
            families = list(text_string_to_metric_families(text))
            r.check(True, "/metrics parses with prometheus_client")
        except Exception as e:  # the parser raises ValueError and others
            r.check(False, "/metrics parses with prometheus_client", str(e))
            return
        names = exported(families)
        redis_up = [s for f in families if f.name == "workflow_proxy_redis_up" for s in f.samples]
        r.check(len(redis_up) == 1 and redis_up[0].value == 1, "workflow_proxy_redis_up has a sample, 1, with Redis",
                str(redis_up))

        used = {}
        for where, expr, metrics, labels in uses:
            for m in metrics:
                used.setdefault(m, []).append(where)
        missing = sorted(m for m in used if m not in names and m not in SYNTHETIC_METRICS)
        for m in missing:
            pending = " (one of the metrics being added in this change)" if m in PENDING else ""
            r.check(False, f"metric {m} is exported by the proxy{pending}", "used by " + ", ".join(used[m][:4]))
        r.check(True, f"{len(used) - len(missing)} of {len(used)} metric names used are exported")
        # Labels the queries group by or match on exist on the series (where
        # the series have samples in this short run).
        for where, expr, metrics, labels in uses:
            real = [m for m in metrics if m in names and names[m]]
            if not real or len(real) < len([m for m in metrics if m not in SYNTHETIC_METRICS]):
                continue
            seen = set().union(*(names[m] for m in real))
            unknown = sorted(l for l in labels - TARGET_LABELS if l not in seen)
            r.check(not unknown, f"{where}: the labels it uses exist on {', '.join(sorted(real))}",
                    " ".join(unknown))
        # Cache states the dashboard matches are the ones the proxy writes.
        states = {s.labels.get("cache") for f in families if f.name == "workflow_proxy_requests" for s in f.samples}
        if sim_bin:
            r.check({"MISS", "HIT"} <= states, "workflow_proxy_requests_total has cache=MISS and cache=HIT",
                    str(states))
        proxy.send_signal(signal.SIGTERM)
        try:
            code = proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        r.check(code == 0, "the proxy drains and exits 0 on SIGTERM", str(code))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy", required=True, help="the workflow-proxy binary")
    ap.add_argument("--sim", help="the upstream_sim binary (some traffic, so that labelled series exist)")
    ap.add_argument("--source", help="the repository (default: two levels above this script)")
    a = ap.parse_args()
    src = dc.source_dir(a.source)
    r = dc.Report("check_dashboards")
    uses = check_dashboard(r, os.path.join(src, "deploy", "grafana", "workflow-proxy.json"))
    uses += check_alerts(r, src)
    redis_url = os.environ.get("WFP_REDIS_URL", "")
    if not redis_url:
        status = r.finish()
        if status:
            return status
        print("SKIP: WFP_REDIS_URL is not set (scripts/test starts a Redis and sets it): the metric names "
              "were not checked against a running proxy", flush=True)
        return SKIP
    proxy = os.path.abspath(a.proxy)
    if r.check(os.access(proxy, os.X_OK), "the proxy binary exists", proxy):
        sim = os.path.abspath(a.sim) if a.sim else None
        if sim and not r.check(os.access(sim, os.X_OK), "the simulator binary exists", sim):
            sim = None
        live_check(r, proxy, sim, redis_url, uses)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
