#!/usr/bin/env python3
"""Checks that the deployment files agree with each other and with the proxy.

  check_manifests.py --proxy PATH/TO/workflow-proxy [--source REPO]

* Dockerfile: Debian 12 base, the build set / run set of scripts/install-deps,
  the CMake flags and targets, the binaries copied into the runtime stage,
  the non-root user, EXPOSE, HEALTHCHECK (/healthz on an exposed port),
  STOPSIGNAL, exec-form ENTRYPOINT and CMD.
* deploy/compose.yaml and deploy/compose/workflow-proxy.yaml: the mounted
  configuration's listen/admin ports are exposed and published, the image's
  HEALTHCHECK reaches the admin listener, secrets are mounted where the
  configuration reads them, Redis and the simulator are where it points.
* deploy/kubernetes/: every YAML parses; the Deployment's proxy container
  mounts the ConfigMap the kustomization generates where --config points,
  and the Secret where token_file/api_key_file point; the probes are /healthz
  and /readyz on the admin port; the Prometheus annotations name the admin
  port and /metrics; security context and resources; `kubectl kustomize`
  renders it when kubectl is on PATH.
* conf/sidecar.yaml listens where the Kubernetes sidecar configuration does.
* The real binary's --check-config accepts every proxy configuration found.
  Secret paths under /run/secrets/workflow-proxy/ are rewritten, in a copy
  of the file in a temporary directory, to files made there (this machine
  has no such mount); listen addresses are kept (--check-config binds port 0
  on the host, which never conflicts).

Exit status 0 when everything holds, 1 otherwise.
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploycheck as dc  # noqa: E402

dc.import_or_reexec("yaml")
import yaml  # noqa: E402

SECRET_DIR = "/run/secrets/workflow-proxy"


# --- Dockerfile ---------------------------------------------------------------

def dockerfile_instructions(text):
    """[(KEYWORD, arguments)], continuation lines joined, comments dropped."""
    out = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    if current.strip():
        keyword, _, rest = current.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_stages(instructions):
    """[{'from': image, 'name': alias, 'items': [(KEYWORD, args)]}], ARG
    defaults before the first FROM substituted into FROM."""
    args = {}
    stages = []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"from": image, "name": name, "items": []})
            continue
        if stages:
            stages[-1]["items"].append((keyword, rest))
    return stages


def apt_packages(run_args):
    """Packages named by `apt-get install` in one RUN instruction."""
    pkgs = []
    for command in re.split(r"&&|;|\|\|", run_args):
        words = shlex.split(command)
        if len(words) >= 2 and words[0] in ("apt-get", "apt") and "install" in words:
            after = words[words.index("install") + 1:]
            pkgs += [w for w in after if not w.startswith("-")]
    return pkgs


def install_deps_sets(path):
    text = open(path).read()
    sets = {}
    for name in ("run_set", "build_set", "test_set"):
        m = re.search(name + r"=\(\s*(.*?)\)", text, re.S)
        if m:
            sets[name] = set(re.sub(r"#.*", "", m.group(1)).split())
    return sets


def json_array(text):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def check_dockerfile(r, src):
    info = {}
    path = os.path.join(src, "Dockerfile")
    if not r.check(os.path.isfile(path), "Dockerfile exists"):
        return info
    stages = dockerfile_stages(dockerfile_instructions(open(path).read()))
    r.check(len(stages) >= 2, "Dockerfile is multi-stage", f"{len(stages)} stage(s)")
    if len(stages) < 2:
        return info
    for st in stages:
        r.check(st["from"] in ("debian:12-slim", "debian:bookworm-slim"),
                "Dockerfile stages start from Debian 12 slim", st["from"])
    build = next((s for s in stages if s["name"]), stages[0])
    runtime = stages[-1]
    r.check(build is not runtime, "Dockerfile has a named build stage")

    sets = install_deps_sets(os.path.join(src, "scripts", "install-deps"))
    r.check("run_set" in sets and "build_set" in sets, "scripts/install-deps names run_set and build_set")
    build_pkgs = set(p for k, a in build["items"] if k == "RUN" for p in apt_packages(a))
    run_pkgs = set(p for k, a in runtime["items"] if k == "RUN" for p in apt_packages(a))
    missing = sorted(sets.get("build_set", set()) - build_pkgs)
    r.check(not missing, "build stage installs scripts/install-deps' build set", " ".join(missing))
    missing = sorted(sets.get("run_set", set()) - run_pkgs)
    r.check(not missing, "runtime stage installs scripts/install-deps' run set", " ".join(missing))
    extra = sorted(run_pkgs - sets.get("run_set", set()) - {"curl"})
    r.check(not extra, "runtime stage installs nothing beyond the run set and curl", " ".join(extra))
    dev = sorted(p for p in run_pkgs if p.endswith("-dev") or p in ("build-essential", "cmake", "git"))
    r.check(not dev, "runtime stage installs no build tools", " ".join(dev))

    runs = " ".join(a for k, a in build["items"] if k == "RUN")
    r.check("-DBUILD_TESTING=OFF" in runs, "build stage configures with -DBUILD_TESTING=OFF")
    r.check("-DCMAKE_BUILD_TYPE=Release" in runs, "build stage builds Release")
    m = re.search(r"--target((?:\s+[\w.-]+)+)", runs)
    targets = set(m.group(1).split()) if m else set()
    r.check({"workflow-proxy", "upstream_sim"} <= targets, "build stage builds workflow-proxy and upstream_sim",
            " ".join(sorted(targets)))
    workdir = next((a for k, a in build["items"] if k == "WORKDIR"), "/")
    m = re.search(r"-B\s+(\S+)", runs)
    build_dir = os.path.join(workdir, m.group(1)) if m else None

    # The simulator must build with BUILD_TESTING=OFF.
    top = open(os.path.join(src, "CMakeLists.txt")).read()
    top_code = re.sub(r"#.*", "", top)
    r.check(re.search(r"^add_subdirectory\(tests\)", top_code, re.M) is not None,
            "CMakeLists.txt adds tests/ also with BUILD_TESTING=OFF (the image builds upstream_sim)")
    tests_cmake = re.sub(r"#.*", "", open(os.path.join(src, "tests", "CMakeLists.txt")).read())
    sim_at = tests_cmake.find("add_executable(upstream_sim")
    ret_at = tests_cmake.find("return()")
    r.check(sim_at >= 0 and (ret_at < 0 or sim_at < ret_at),
            "tests/CMakeLists.txt defines upstream_sim before any early return()")

    copies = {}
    for k, a in runtime["items"]:
        if k == "COPY" and "--from=" in a:
            words = [w for w in a.split() if not w.startswith("--")]
            copies[os.path.normpath(words[0])] = words[-1]
    if build_dir:
        for binary, rel in (("workflow-proxy", "workflow-proxy"), ("upstream_sim", "tests/upstream_sim")):
            src_path = os.path.normpath(os.path.join(build_dir, rel))
            r.check(src_path in copies, f"runtime stage copies {src_path} from the build stage",
                    ", ".join(copies))
            info[binary] = copies.get(src_path)

    user = [a for k, a in runtime["items"] if k == "USER"]
    r.check(len(user) >= 1, "runtime stage sets USER")
    if user:
        uid = user[-1].split(":")[0]
        r.check(uid.isdigit() and int(uid) != 0, "USER is a numeric non-root uid (runAsNonRoot can verify it)",
                user[-1])
        info["uid"] = int(uid) if uid.isdigit() else None
        r.check(re.search(rf"useradd\b[^&]*--uid\s+{uid}\b", " ".join(a for k, a in runtime["items"] if k == "RUN"))
                is not None, f"the image creates the user {uid}")

    exposed = set()
    for k, a in runtime["items"]:
        if k == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in a.split()}
    info["exposed"] = exposed
    r.check(bool(exposed), "runtime stage EXPOSEs ports", "none")

    hc = [a for k, a in runtime["items"] if k == "HEALTHCHECK"]
    r.check(len(hc) == 1, "runtime stage has one HEALTHCHECK")
    if hc:
        m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc[0])
        cmd = json_array(m.group(1)) if m else None
        r.check(cmd is not None, "HEALTHCHECK uses the exec form", hc[0])
        if cmd:
            urls = [w for w in cmd if w.startswith("http://")]
            r.check(len(urls) == 1, "HEALTHCHECK asks one http:// URL", " ".join(cmd))
            if urls:
                um = re.fullmatch(r"http://([^/:]+):(\d+)(/\S*)", urls[0])
                r.check(um is not None, "HEALTHCHECK URL has host, port and path", urls[0])
                if um:
                    info["health"] = (um.group(1), int(um.group(2)), um.group(3))
                    r.check(um.group(1) in ("127.0.0.1", "localhost"), "HEALTHCHECK asks loopback", urls[0])
                    r.check(um.group(3) == "/healthz", "HEALTHCHECK asks /healthz", urls[0])
                    r.check(int(um.group(2)) in exposed, "HEALTHCHECK port is EXPOSEd", urls[0])
            r.check(cmd[0] in run_pkgs, f"HEALTHCHECK's program ({cmd[0]}) is installed in the runtime stage")
            r.check("--fail" in cmd or "-f" in cmd or "-fsS" in cmd, "HEALTHCHECK fails on an HTTP error status")
            r.check(re.search(r"--timeout=\d+s", hc[0]) is not None, "HEALTHCHECK has a timeout")

    stop = [a for k, a in runtime["items"] if k == "STOPSIGNAL"]
    r.check(stop == ["SIGTERM"], "STOPSIGNAL SIGTERM (the proxy drains on SIGTERM)", str(stop))
    entry = [a for k, a in runtime["items"] if k == "ENTRYPOINT"]
    cmd = [a for k, a in runtime["items"] if k == "CMD"]
    ep = json_array(entry[-1]) if entry else None
    cm = json_array(cmd[-1]) if cmd else None
    r.check(ep is not None, "ENTRYPOINT in exec form", str(entry))
    r.check(cm is not None, "CMD in exec form", str(cmd))
    if ep:
        r.check(ep[0] == info.get("workflow-proxy"), "ENTRYPOINT runs the copied workflow-proxy",
                f"{ep[0]} vs {info.get('workflow-proxy')}")
    if cm and "--config" in cm:
        info["config_path"] = cm[cm.index("--config") + 1]
        r.check(info["config_path"] == "/etc/workflow-proxy/workflow-proxy.yaml",
                "CMD reads /etc/workflow-proxy/workflow-proxy.yaml", info["config_path"])
    for k, a in runtime["items"]:
        if k == "COPY" and "--from=" not in a:
            r.check(not re.search(r"\bconf/|secret|\.key\b", a), "runtime stage copies no configuration or secret", a)

    ignore = os.path.join(src, ".dockerignore")
    if r.check(os.path.isfile(ignore), ".dockerignore exists"):
        patterns = [l.strip() for l in open(ignore) if l.strip() and not l.startswith("#")]
        r.check(any(p.rstrip("/") in ("build", "/build") for p in patterns), ".dockerignore leaves out build/")
    return info


# --- proxy configurations -------------------------------------------------------

def load_yaml(r, path, what):
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        r.check(False, f"{what} parses", str(e))
        return None


def check_health_reaches_admin(r, what, docker, admin):
    health = docker.get("health")
    if not health or not admin:
        return
    host, port, _ = health
    r.check(admin[1] == port and admin[0] in ("0.0.0.0", "127.0.0.1", "::", "localhost"),
            f"{what}: the image's HEALTHCHECK ({host}:{port}) reaches admin_listen", f"{admin[0]}:{admin[1]}")


def check_compose(r, src, docker, configs):
    path = os.path.join(src, "deploy", "compose.yaml")
    compose = load_yaml(r, path, "deploy/compose.yaml")
    if not compose:
        return
    base = os.path.dirname(path)
    services = compose.get("services") or {}
    r.check({"proxy", "redis", "upstream"} <= set(services), "compose has proxy, redis and upstream services",
            " ".join(services))
    proxy = services.get("proxy") or {}
    build = proxy.get("build") or {}
    context = os.path.normpath(os.path.join(base, build.get("context", ".")))
    r.check(os.path.isfile(os.path.join(context, build.get("dockerfile", "Dockerfile")))
            and os.path.samefile(context, src), "compose builds the proxy from the repository's Dockerfile", context)

    command = proxy.get("command") or []
    config_path = command[command.index("--config") + 1] if "--config" in command else docker.get("config_path")
    r.check(config_path == docker.get("config_path"), "compose's proxy reads the image's configuration path",
            str(config_path))
    mounts = {}
    for v in proxy.get("volumes") or []:
        parts = v.split(":") if isinstance(v, str) else [v.get("source"), v.get("target")]
        mounts[parts[1]] = (os.path.normpath(os.path.join(base, parts[0])), parts[2:] if len(parts) > 2 else [])
    r.check(config_path in mounts, "compose mounts a configuration at the path the proxy reads", ", ".join(mounts))
    if config_path not in mounts:
        return
    host_file, opts = mounts[config_path]
    r.check("ro" in opts, "compose mounts the configuration read-only")
    config = load_yaml(r, host_file, os.path.relpath(host_file, src))
    if not isinstance(config, dict):
        return
    configs.append({"file": host_file, "env": {}, "what": "compose proxy configuration"})
    listen, admin = dc.proxy_addresses(config)
    r.check(admin is not None, "compose configuration has an admin listener")
    exposed = docker.get("exposed", set())
    r.check(listen[1] in exposed, "compose configuration's listen port is EXPOSEd by the image", str(listen))
    r.check(admin and admin[1] in exposed, "compose configuration's admin port is EXPOSEd by the image", str(admin))
    r.check(listen[0] == "0.0.0.0", "compose configuration listens on all interfaces of the container", str(listen))
    if "healthcheck" not in proxy:
        check_health_reaches_admin(r, "compose", docker, admin)
    published = {}
    for p in proxy.get("ports") or []:
        parts = str(p).split(":")
        published[int(parts[-1])] = (parts[0] if len(parts) == 3 else "", int(parts[-2]))
    for what, addr in (("listen", listen), ("admin", admin)):
        if addr:
            r.check(addr[1] in published, f"compose publishes the {what} port {addr[1]}", str(published))
            if addr[1] in published:
                r.check(published[addr[1]][0] == "127.0.0.1", f"compose publishes the {what} port on host loopback only",
                        str(published[addr[1]]))

    grace = float(config.get("shutdown_grace_s", 30))
    sgp = str(proxy.get("stop_grace_period", "10s"))
    m = re.fullmatch(r"(\d+)s", sgp)
    r.check(m is not None and int(m.group(1)) > grace, "compose stop_grace_period exceeds shutdown_grace_s", sgp)
    r.check(proxy.get("read_only") is True, "compose runs the proxy with a read-only root filesystem")
    r.check("ALL" in (proxy.get("cap_drop") or []), "compose drops every capability of the proxy")

    # Secrets: mounted where the configuration reads them.
    top_secrets = compose.get("secrets") or {}
    targets = {}
    for s in proxy.get("secrets") or []:
        if isinstance(s, dict):
            targets[s.get("target")] = s.get("source")
        else:
            targets["/run/secrets/" + s] = s
    for field, p in dc.secret_paths(config).items():
        if not r.check(p in targets, f"compose mounts a secret at {field} ({p})", ", ".join(map(str, targets))):
            continue
        source = targets.get(p)
        entry = top_secrets.get(source) or {}
        file = os.path.normpath(os.path.join(base, entry.get("file", "")))
        if r.check(os.path.isfile(file), f"compose secret {source} has its file", file):
            content = open(file).read().strip()
            r.check(content != "" and re.fullmatch(r"[\x21-\x7e]+", content) is not None,
                    f"compose secret {source} is one visible-ASCII token", os.path.relpath(file, src))
            r.check(os.stat(file).st_mode & 0o004, f"compose secret file {os.path.relpath(file, src)} is readable "
                    "by the container's non-root user (bind-mounted with its host mode)")

    # Redis and the simulator are where the configuration points.
    redis_url = dc.expand((config.get("redis") or {}).get("url", ""), {})
    m = re.fullmatch(r"redis://(?:[^@]*@)?([^:/]+):(\d+)(?:/\d+)?", redis_url)
    r.check(m is not None, "compose configuration has a redis:// URL", redis_url)
    if m:
        r.check(m.group(1) in services, "redis.url names a compose service", m.group(1))
        rcmd = (services.get(m.group(1)) or {}).get("command") or []
        rport = int(rcmd[rcmd.index("--port") + 1]) if "--port" in rcmd else 6379
        r.check(int(m.group(2)) == rport, "redis.url's port is the Redis service's port", f"{m.group(2)} vs {rport}")
        r.check((config.get("cache") or {}).get("backend") == "redis", "compose configuration caches in Redis")
    base_url = dc.expand((config.get("upstream") or {}).get("base_url", ""), {})
    m = re.fullmatch(r"http://([^:/]+):(\d+)", base_url)
    r.check(m is not None, "compose configuration's upstream is http://SERVICE:PORT", base_url)
    upstream = services.get("upstream") or {}
    if m:
        r.check(m.group(1) == "upstream", "upstream.base_url names the simulator service", m.group(1))
        ucmd = upstream.get("command") or []
        ulisten = ucmd[ucmd.index("--listen") + 1] if "--listen" in ucmd else ""
        r.check(ulisten.endswith(":" + m.group(2)), "the simulator listens on upstream.base_url's port", ulisten)
        r.check(ulisten.startswith("0.0.0.0:"), "the simulator listens on all interfaces of its container", ulisten)
        hc = " ".join((upstream.get("healthcheck") or {}).get("test") or [])
        r.check(f":{m.group(2)}/__sim/health" in hc, "the simulator's healthcheck asks its own port", hc)
    entry = upstream.get("entrypoint") or []
    r.check(bool(entry) and entry[0] == docker.get("upstream_sim"),
            "the simulator service runs the upstream_sim the image holds", f"{entry} vs {docker.get('upstream_sim')}")
    for org in config.get("organisations") or []:
        key_file = dc.secret_paths({"organisations": [org]}).get(f"organisations.{org.get('name')}.api_key_file")
        source = targets.get(key_file)
        file = os.path.join(base, (top_secrets.get(source) or {}).get("file", "")) if source else None
        if file and os.path.isfile(file):
            r.check(open(file).read().strip().startswith("sk_sim_"),
                    f"compose organisation {org.get('name')} uses a key the simulator accepts")


# --- Kubernetes -------------------------------------------------------------------

def probe_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_kubernetes(r, src, docker, configs):
    kdir = os.path.join(src, "deploy", "kubernetes")
    docs = []
    for path in sorted(glob.glob(os.path.join(kdir, "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, src)
        try:
            with open(path) as f:
                loaded = [d for d in yaml.safe_load_all(f) if d is not None]
            r.check(True, f"{rel} parses")
        except yaml.YAMLError as e:
            r.check(False, f"{rel} parses", str(e))
            continue
        docs += [(rel, d) for d in loaded]
    kust = next((d for rel, d in docs if rel.endswith("/kustomization.yaml")), None)
    if not r.check(kust is not None, "deploy/kubernetes/kustomization.yaml exists"):
        return
    resources = []
    for res in kust.get("resources") or []:
        p = os.path.join(kdir, res)
        if r.check(os.path.isfile(p), f"kustomization resource {res} exists"):
            with open(p) as f:
                resources += [d for d in yaml.safe_load_all(f) if d]
    generated = {}
    for gen in kust.get("configMapGenerator") or []:
        files = {}
        for spec in gen.get("files") or []:
            key, _, file = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
            p = os.path.join(kdir, file)
            if r.check(os.path.isfile(p), f"configMapGenerator file {file} exists"):
                files[key] = p
        generated[gen.get("name")] = files
    images = {i.get("name"): i for i in kust.get("images") or []}

    deployments = [d for d in resources if d.get("kind") == "Deployment"]
    if not r.check(len(deployments) == 1, "kustomization has one Deployment", str(len(deployments))):
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    candidates = sidecars + (spec.get("containers") or [])
    proxies = [c for c in candidates if str(c.get("image", "")).split(":")[0] in images
               or str(c.get("image", "")).split(":")[0].endswith("workflow-proxy")]
    if not r.check(len(proxies) == 1, "the Deployment has one workflow-proxy container", str(len(proxies))):
        return
    proxy = proxies[0]
    apps = [c for c in spec.get("containers") or [] if c is not proxy]
    r.check(len(apps) >= 1, "the Deployment has an application container next to the proxy")
    if proxy in sidecars:
        r.check(True, "the proxy is a native sidecar (init container, restartPolicy: Always)")
        r.check("startupProbe" in proxy, "the native sidecar has a startup probe (the application waits for it)")

    args = proxy.get("args") or proxy.get("command") or []
    config_path = args[args.index("--config") + 1] if "--config" in args else docker.get("config_path")
    r.check(config_path == docker.get("config_path"), "the proxy container reads the image's configuration path",
            str(config_path))
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = {m["mountPath"]: m for m in proxy.get("volumeMounts") or []}
    cdir, cname = os.path.split(config_path)
    mount = mounts.get(cdir)
    config_file = None
    if r.check(mount is not None, f"a volume is mounted at {cdir}", ", ".join(mounts)):
        r.check(mount.get("readOnly") is True, "the configuration is mounted read-only")
        r.check("subPath" not in mount, "the configuration is mounted as a directory (updates reach it)")
        vol = volumes.get(mount["name"]) or {}
        cm = (vol.get("configMap") or {}).get("name")
        r.check(cm in generated, "the configuration volume is the generated ConfigMap", str(cm))
        items = (vol.get("configMap") or {}).get("items")
        key = next((i["key"] for i in items if i.get("path") == cname), None) if items else cname
        config_file = (generated.get(cm) or {}).get(key)
        r.check(config_file is not None, f"the ConfigMap holds {cname}", str(key))
    if not config_file:
        return
    config = load_yaml(r, config_file, os.path.relpath(config_file, src))
    if not isinstance(config, dict):
        return
    configs.append({"file": config_file, "env": {}, "what": "Kubernetes sidecar configuration"})
    listen, admin = dc.proxy_addresses(config)
    r.check(listen[0] == "127.0.0.1", "the sidecar listens on loopback only", str(listen))
    r.check(admin is not None and admin[0] in ("0.0.0.0", "::"), "the admin listener is on the pod's address "
            "(the kubelet's probes and Prometheus reach it)", str(admin))
    if not admin:
        return
    r.check(listen[1] in docker.get("exposed", set()) and admin[1] in docker.get("exposed", set()),
            "the sidecar's ports are the ones the image EXPOSEs", f"{listen[1]}, {admin[1]}")
    declared = {p.get("containerPort"): p for p in proxy.get("ports") or []}
    r.check(admin[1] in declared, "the proxy container declares the admin port", str(list(declared)))
    r.check(listen[1] not in declared, "the loopback client port is not declared as a container port")
    for app in apps:
        values = " ".join(str(e.get("value", "")) for e in app.get("env") or [])
        r.check(f"http://127.0.0.1:{listen[1]}" in values,
                f"container {app.get('name')} is pointed at http://127.0.0.1:{listen[1]}", values)

    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, want in expected.items():
        if probe not in proxy:
            r.check(probe == "startupProbe", f"the proxy has a {probe}")
            continue
        get = proxy[probe].get("httpGet") or {}
        r.check(get.get("path") == want, f"{probe} asks {want}", str(get.get("path")))
        r.check(probe_port(proxy, get.get("port")) == admin[1], f"{probe} asks the admin port {admin[1]}",
                str(get.get("port")))
        r.check(get.get("scheme", "HTTP") == "HTTP", f"{probe} uses plain HTTP")

    ann = (pod.get("metadata") or {}).get("annotations") or {}
    r.check(ann.get("prometheus.io/scrape") == "true", "pod annotation prometheus.io/scrape is \"true\"")
    r.check(str(ann.get("prometheus.io/port")) == str(admin[1]), "pod annotation prometheus.io/port is the admin port",
            str(ann.get("prometheus.io/port")))
    r.check(ann.get("prometheus.io/path") == "/metrics", "pod annotation prometheus.io/path is /metrics")

    # Secrets: mounted where the configuration reads them, keys that exist.
    secret_files = dc.secret_paths(config)
    r.check("admin.token_file" in secret_files, "the sidecar configuration sets admin.token_file")
    r.check(all(not (o.get("api_key")) for o in config.get("organisations") or []),
            "the sidecar configuration reads every organisation key from a file (api_key_file)")
    example = next((d for rel, d in docs if d.get("kind") == "Secret"), None)
    for field, p in secret_files.items():
        sdir, skey = os.path.split(p)
        m = mounts.get(sdir)
        if not r.check(m is not None, f"{field} ({p}) lies in a mounted volume", ", ".join(mounts)):
            continue
        r.check(m.get("readOnly") is True, f"the volume of {field} is mounted read-only")
        vol = volumes.get(m["name"]) or {}
        secret = vol.get("secret") or {}
        r.check(bool(secret), f"{field} comes from a Secret volume", str(vol))
        items = secret.get("items")
        key = next((i["key"] for i in items if i.get("path") == skey), None) if items else skey
        if example:
            r.check(secret.get("secretName") == example["metadata"]["name"],
                    "the Secret volume names the Secret of secret.example.yaml", str(secret.get("secretName")))
            keys = set((example.get("stringData") or {}).keys()) | set((example.get("data") or {}).keys())
            r.check(key in keys, f"the Secret has the key {key} for {field}", " ".join(sorted(keys)))
        mode = secret.get("defaultMode")
        r.check(mode is not None and mode & 0o007 == 0, "the Secret's files are not world-readable",
                oct(mode) if mode is not None else "default 0644")
    psc = spec.get("securityContext") or {}
    r.check(psc.get("runAsNonRoot") is True, "pod runs as non-root (runAsNonRoot)")
    if docker.get("uid") is not None and "runAsUser" in psc:
        r.check(psc["runAsUser"] == docker["uid"], "pod runAsUser is the image's user", str(psc["runAsUser"]))
    modes = [(v.get("secret") or {}).get("defaultMode") for v in volumes.values() if "secret" in v]
    if any(m is not None and m & 0o004 == 0 for m in modes):
        r.check(psc.get("fsGroup") is not None and psc.get("fsGroup") == psc.get("runAsGroup", psc.get("fsGroup")),
                "fsGroup is set, so the Secret's group-readable files reach the proxy's user", str(psc.get("fsGroup")))
    r.check(spec.get("automountServiceAccountToken") is False, "no service account token is mounted")
    csc = proxy.get("securityContext") or {}
    r.check(csc.get("readOnlyRootFilesystem") is True, "proxy container has a read-only root filesystem")
    r.check(csc.get("allowPrivilegeEscalation") is False, "proxy container cannot escalate privileges")
    r.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), "proxy container drops ALL capabilities")

    res = proxy.get("resources") or {}
    try:
        req = dc.parse_size(res["requests"]["memory"])
        lim = dc.parse_size(res["limits"]["memory"])
        cache = dc.parse_size((config.get("cache") or {}).get("memory_max_bytes", "256MiB"))
        r.check(req >= 16 * 2**20, "memory request covers the idle RSS (~15 MiB)", res["requests"]["memory"])
        r.check(lim >= req, "memory limit is at least the request")
        r.check(lim >= 16 * 2**20 + cache + 64 * 2**20,
                "memory limit covers idle RSS + cache.memory_max_bytes + a full queue (~64 MiB measured at 10 000)",
                f"{res['limits']['memory']} vs cache {cache >> 20} MiB")
        r.check("cpu" in res["requests"], "proxy container requests CPU")
    except (KeyError, ValueError, TypeError) as e:
        r.check(False, "proxy container has memory requests and limits", str(e))
    grace = float(config.get("shutdown_grace_s", 30))
    r.check(spec.get("terminationGracePeriodSeconds", 30) > grace,
            "terminationGracePeriodSeconds exceeds shutdown_grace_s", str(spec.get("terminationGracePeriodSeconds")))

    # conf/sidecar.yaml: the same addresses as the Kubernetes sidecar configuration.
    sidecar_path = os.path.join(src, "conf", "sidecar.yaml")
    sidecar = load_yaml(r, sidecar_path, "conf/sidecar.yaml")
    if isinstance(sidecar, dict):
        s_listen, s_admin = dc.proxy_addresses(sidecar)
        r.check((s_listen, s_admin) == (listen, admin), "conf/sidecar.yaml listens where the Kubernetes sidecar does",
                f"{s_listen} {s_admin} vs {listen} {admin}")
        token = expand_raw((sidecar.get("admin") or {}).get("token_file"))
        r.check(token is not None and "WFP_ADMIN_TOKEN_FILE" in token,
                "conf/sidecar.yaml takes admin.token_file from WFP_ADMIN_TOKEN_FILE")
        check_health_reaches_admin(r, "conf/sidecar.yaml", docker, s_admin)

    # kubectl renders the kustomization (when it is installed).
    kubectl = shutil.which("kubectl")
    if kubectl:
        p = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True, timeout=30)
        if r.check(p.returncode == 0, "kubectl kustomize deploy/kubernetes renders", p.stderr.strip()[-500:]):
            rendered = [d for d in yaml.safe_load_all(p.stdout) if d]
            cms = [d for d in rendered if d.get("kind") == "ConfigMap"]
            deps = [d for d in rendered if d.get("kind") == "Deployment"]
            if r.check(len(cms) == 1 and len(deps) == 1, "the rendering has the ConfigMap and the Deployment"):
                name = cms[0]["metadata"]["name"]
                vols = [v for v in deps[0]["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
                r.check(vols and vols[0]["configMap"]["name"] == name,
                        "the rendered Deployment mounts the generated (hashed) ConfigMap", name)
                r.check(cms[0]["data"].get(cname) == open(config_file).read(),
                        "the rendered ConfigMap holds the configuration file unchanged")
                img = next(c["image"] for c in (deps[0]["spec"]["template"]["spec"].get("initContainers") or [])
                           + deps[0]["spec"]["template"]["spec"]["containers"] if c["name"] == proxy["name"])
                r.check(":" in img, "the rendered proxy image has a tag", img)
    else:
        r.note("kubectl not on PATH: the kustomization was resolved by this script only")


def expand_raw(value):
    return value if isinstance(value, str) else None


# --- --check-config ------------------------------------------------------------------

def run_check_config(r, binary, src, configs):
    if not r.check(binary and os.access(binary, os.X_OK), "the proxy binary exists", str(binary)):
        return
    with tempfile.TemporaryDirectory(prefix="wfp-deploy-") as tmp:
        secrets = os.path.join(tmp, "secrets")
        os.mkdir(secrets)
        # conf/sidecar.yaml as scripts/run uses it (key from the environment,
        # no token file), and as a container with a mounted token uses it.
        sidecar = os.path.join(src, "conf", "sidecar.yaml")
        token = os.path.join(secrets, "admin-token")
        with open(token, "w") as f:
            f.write("check-config-admin-token\n")
        configs = [{"file": sidecar, "env": {"AITUTOR_API_KEY": "sk_check"}, "what": "conf/sidecar.yaml (scripts/run)"},
                   {"file": sidecar, "env": {"AITUTOR_API_KEY": "sk_check", "WFP_ADMIN_TOKEN_FILE": token},
                    "what": "conf/sidecar.yaml with WFP_ADMIN_TOKEN_FILE"}] + configs
        for c in configs:
            rel = os.path.relpath(c["file"], src)
            text = open(c["file"]).read()
            check_file = c["file"]
            mounted = [p for p in dc.secret_paths(yaml.safe_load(text), c["env"]).values()
                       if p.startswith(SECRET_DIR + "/")]
            if mounted:
                # This machine has no /run/secrets/workflow-proxy: the copy
                # checked reads the same file names from a temporary directory.
                for path in mounted:
                    name = path[len(SECRET_DIR) + 1:]
                    with open(os.path.join(secrets, name), "w") as f:
                        f.write(("sk_check_" if "key" in name else "check-") + name.replace("/", "_") + "\n")
                check_file = os.path.join(tmp, os.path.basename(os.path.dirname(c["file"])) + "-" +
                                          os.path.basename(c["file"]))
                with open(check_file, "w") as f:
                    f.write(text.replace(SECRET_DIR + "/", secrets + "/"))
                r.note(f"{rel}: checked as a copy with {SECRET_DIR}/ rewritten to {secrets}/")
                if not os.path.exists(SECRET_DIR):
                    p = subprocess.run([binary, "--check-config", "--config", c["file"]], capture_output=True,
                                       text=True, env=dc.clean_env(**c["env"]), timeout=20)
                    r.check(p.returncode == 2 and SECRET_DIR in p.stderr,
                            f"{rel} as written reads its secrets from {SECRET_DIR} (refused here, exit 2)",
                            f"exit {p.returncode}: {p.stderr.strip()[:300]}")
            p = subprocess.run([binary, "--check-config", "--config", check_file], capture_output=True, text=True,
                               env=dc.clean_env(**c["env"]), cwd=tmp, timeout=20)
            r.check(p.returncode == 0 and p.stdout == "config OK\n", f"--check-config accepts {c['what']} ({rel})",
                    f"exit {p.returncode}: {(p.stdout + p.stderr).strip()[:600]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy", required=True, help="the workflow-proxy binary")
    ap.add_argument("--source", help="the repository (default: two levels above this script)")
    a = ap.parse_args()
    src = dc.source_dir(a.source)
    r = dc.Report("check_manifests")
    configs = []
    docker = check_dockerfile(r, src)
    check_compose(r, src, docker, configs)
    check_kubernetes(r, src, docker, configs)
    run_check_config(r, os.path.abspath(a.proxy), src, configs)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
