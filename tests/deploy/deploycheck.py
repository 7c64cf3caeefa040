"""Shared helpers of the deployment checks in tests/deploy/ (check_manifests.py,
check_dashboards.py): module loading, a pass/fail report, the proxy
configuration's ${VAR} expansion and addresses, free loopback ports.

Python 3 standard library, plus Debian's python3-yaml and
python3-prometheus-client (scripts/install-deps --test installs both).
"""
import os
import re
import socket
import sys

REQUIRED_DEBIAN_PACKAGES = "python3-yaml python3-prometheus-client"


def import_or_reexec(*modules):
    """Imports the named modules. Debian's python3-* packages install for
    /usr/bin/python3; when `python3` on PATH is another interpreter (pyenv,
    a virtualenv) that lacks them, run this script again with /usr/bin/python3."""
    try:
        for name in modules:
            __import__(name)
        return
    except ImportError as e:
        missing = e.name
    system = "/usr/bin/python3"
    here = os.path.realpath(sys.executable or "")
    if (os.access(system, os.X_OK) and os.path.realpath(system) != here
            and not os.environ.get("WFP_DEPLOY_REEXEC")):
        os.environ["WFP_DEPLOY_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)
    print(f"FAIL: Python module {missing!r} is missing; install the Debian packages "
          f"{REQUIRED_DEBIAN_PACKAGES} (scripts/install-deps --test)", file=sys.stderr)
    sys.exit(1)


class Report:
    """Collects checks; prints one line per failure and a summary."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failures = []

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what + (f": {detail}" if detail else ""))
            print(f"FAIL: {what}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def note(self, text):
        print(f"note: {text}", flush=True)

    def finish(self):
        print(f"{self.name}: {self.passed} checks passed, {len(self.failures)} failed", flush=True)
        return 1 if self.failures else 0


def source_dir(argv_value=None):
    if argv_value:
        return os.path.abspath(argv_value)
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^{}]|\$\{[^{}]*\})*))?\}")


def expand(value, env):
    """The proxy's ${VAR} / ${VAR:-default} expansion (config_reader.cc), for
    reading a configuration the way the proxy will: an unset ${VAR} without a
    default stays as written (the caller decides), $${ is a literal ${."""
    if not isinstance(value, str):
        return value
    placeholder = "\x00LITERAL\x00"
    text = value.replace("$${", placeholder)

    def repl(m):
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if default is None:
            return got if got is not None else m.group(0)
        if got:
            return got
        return expand(default, env)

    return _VAR.sub(repl, text).replace(placeholder, "${")


def parse_listen(text):
    """'host:port' or '[v6]:port' → (host, port); unix:PATH → ('unix', PATH)."""
    text = str(text)
    if text.startswith("unix:"):
        return ("unix", text[5:])
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)", text) or re.fullmatch(r"([^:]+):(\d+)", text)
    if not m:
        raise ValueError(f"not an address: {text!r}")
    return (m.group(1), int(m.group(2)))


def proxy_addresses(config, env=None):
    """(listen, admin_listen) of a loaded proxy configuration, with the
    loader's defaults; admin is None when admin_listen is ""."""
    env = env or {}
    listen = parse_listen(expand(config.get("listen", "127.0.0.1:8080"), env))
    admin_text = expand(config.get("admin_listen", "127.0.0.1:9464"), env)
    admin = parse_listen(admin_text) if admin_text else None
    return listen, admin


def secret_paths(config, env=None):
    """Every file the configuration reads a secret from: {field: path}."""
    env = env or {}
    out = {}
    admin = config.get("admin") or {}
    token = expand(admin.get("token_file") or "", env)
    if token:
        out["admin.token_file"] = token
    for org in config.get("organisations") or []:
        if org.get("api_key_file"):
            out[f"organisations.{org.get('name')}.api_key_file"] = expand(org["api_key_file"], env)
    return out


def parse_size(text):
    """The proxy's sizes (512KiB, 64MiB, 10MB, bytes) and Kubernetes
    quantities (96Mi, 256Mi, 1G) → bytes."""
    text = str(text).strip()
    units = {"": 1, "k": 1000, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
             "Ki": 1024, "KiB": 1024, "Mi": 1024**2, "MiB": 1024**2, "Gi": 1024**3, "GiB": 1024**3}
    m = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", text)
    if not m or m.group(2) not in units:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * units[m.group(2)])


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    """An environment for running the proxy: PATH and locale only, plus extra."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    env.update({k: str(v) for k, v in extra.items()})
    return env
