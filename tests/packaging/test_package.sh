#!/usr/bin/env bash
# The Debian package and `cmake --install`, end to end (ctest label `packaging`).
#
#   tests/packaging/test_package.sh --build-dir DIR --source-dir DIR --version X.Y.Z
#
# 1. Builds the .deb from the build tree DIR with cpack, in a temporary
#    directory (the build tree itself is not packaged into).
# 2. Runs lintian on it: any E: or W: line fails.
# 3. Checks the package's fields, version and file list.
# 4. `cmake --install` to <tmp>/usr/local, to a staged root <tmp>/root/usr and
#    with DESTDIR: files where expected, the unit names the installed paths,
#    `systemd-analyze verify` accepts it, and its first ExecReload= line (the
#    --check-config run) exits 2 on a bad file and 0 on a good one.
# 5. As root, with dpkg, and no workflow-proxy installed yet: dpkg -i, checks,
#    reinstall over an edited conffile, remove, reinstall, purge, and checks
#    that nothing is left. Otherwise the test ends with exit 77 (ctest: skipped)
#    after steps 1-4, saying why.
#
# Exit: 0 passed, 1 failed, 77 skipped (see above; also when the build is not
# a release build with WFP_HARDEN, or a tool is missing).
set -uo pipefail

build_dir="" source_dir="" version=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --source-dir) source_dir="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    *) echo "usage: $0 --build-dir DIR --source-dir DIR --version X.Y.Z" >&2; exit 2 ;;
  esac
done
[[ -n "$build_dir" && -n "$source_dir" && -n "$version" ]] || {
  echo "usage: $0 --build-dir DIR --source-dir DIR --version X.Y.Z" >&2; exit 2; }
build_dir="$(cd "$build_dir" && pwd)"
source_dir="$(cd "$source_dir" && pwd)"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
skip() { echo "SKIPPED: $*"; exit 77; }
step() { echo; echo "=== $*"; }
# expect_line FILE LINE: FILE has LINE as a whole line.
expect_line() {
  if grep -qxF -- "$2" "$1"; then pass "$(basename "$1"): $2"; else fail "$1 lacks the line: $2"; fi
}
expect_file() { if [[ -e "$1" ]]; then pass "exists: $1"; else fail "missing: $1"; fi; }
expect_gone() { if [[ -e "$1" || -L "$1" ]]; then fail "still present: $1"; else pass "gone: $1"; fi; }

cache_value() {  # cache_value NAME: a value from the build's CMakeCache.txt
  sed -n "s/^$1:[A-Z]*=//p" "$build_dir/CMakeCache.txt" | head -n 1
}

# --- preconditions -------------------------------------------------------------
for tool in cmake cpack dpkg-deb dpkg-shlibdeps lintian; do
  command -v "$tool" >/dev/null 2>&1 ||
    skip "$tool not found (Debian packages: cmake, dpkg-dev, lintian)"
done
[[ -f "$build_dir/CPackConfig.cmake" ]] || skip "$build_dir has no CPackConfig.cmake (not configured?)"
[[ -x "$build_dir/workflow-proxy" ]] || { fail "$build_dir/workflow-proxy not built"; exit 1; }
build_type="$(cache_value CMAKE_BUILD_TYPE)"
case "$build_type" in
  Release|RelWithDebInfo|MinSizeRel) ;;
  *) skip "build type '$build_type': a package is built from an optimised build (_FORTIFY_SOURCE needs it)" ;;
esac
for opt in WFP_SANITIZE WFP_FUZZ; do
  [[ "$(cache_value "$opt")" =~ ^(ON|1|TRUE|YES)$ ]] && skip "$opt is on: a package is not built from this build"
done
[[ "$(cache_value WFP_HARDEN)" =~ ^(OFF|0|FALSE|NO)$ ]] && skip "WFP_HARDEN is off: lintian would report the missing hardening"
systemd_build=ON
[[ "$(cache_value WFP_SYSTEMD)" =~ ^(OFF|0|FALSE|NO)$ ]] && systemd_build=OFF

revision="$(sed -n '1s/^workflow-proxy ([^)]*-\([^)-]*\)) .*/\1/p' "$source_dir/packaging/debian/changelog")"
changelog_version="$(sed -n '1s/^workflow-proxy (\([^)]*\)) .*/\1/p' "$source_dir/packaging/debian/changelog")"
deb_version="$version-$revision"

tmp="$(mktemp -d /tmp/wfp-packaging.XXXXXX)"
installed_by_us=0
cleanup() {
  if [[ $installed_by_us -eq 1 ]] && dpkg-query -W -f='${Status}' workflow-proxy 2>/dev/null | grep -q .; then
    echo "cleanup: dpkg --purge workflow-proxy"
    dpkg --purge workflow-proxy >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- 1. the package ------------------------------------------------------------
step "cpack -G DEB (from $build_dir, into $tmp/pkg)"
mkdir -p "$tmp/pkg"
if ! (cd "$tmp/pkg" && cpack -G DEB --config "$build_dir/CPackConfig.cmake" -B "$tmp/pkg") >"$tmp/cpack.log" 2>&1; then
  cat "$tmp/cpack.log"
  fail "cpack failed"
  exit 1
fi
deb="$(ls "$tmp"/pkg/workflow-proxy_*.deb 2>/dev/null | head -n 1)"
[[ -n "$deb" ]] || { cat "$tmp/cpack.log"; fail "no .deb produced"; exit 1; }
pass "built $(basename "$deb")"

# --- 2. lintian ----------------------------------------------------------------
step "lintian --info --display-info $(basename "$deb")"
lintian --info --display-info --show-overrides "$deb" >"$tmp/lintian.log" 2>&1
lintian_rc=$?
grep -E '^[A-Z]: ' "$tmp/lintian.log" || true
if grep -qE '^[EW]: ' "$tmp/lintian.log"; then
  cat "$tmp/lintian.log"
  fail "lintian reports errors or warnings"
elif [[ $lintian_rc -ne 0 ]]; then
  cat "$tmp/lintian.log"
  fail "lintian exited $lintian_rc"
else
  pass "lintian: no errors, no warnings"
fi

# --- 3. fields, version, files ---------------------------------------------------
step "package fields and contents"
field() { dpkg-deb -f "$deb" "$1"; }
[[ "$(field Package)" == "workflow-proxy" ]] && pass "Package: workflow-proxy" || fail "Package: $(field Package)"
if [[ "$(field Version)" == "$deb_version" && "$changelog_version" == "$deb_version" ]]; then
  pass "Version: $deb_version (project $version, changelog $changelog_version)"
else
  fail "Version $(field Version), project $version-<revision>, changelog $changelog_version: they must agree"
fi
[[ "$(basename "$deb")" == "workflow-proxy_${deb_version}_$(dpkg --print-architecture).deb" ]] &&
  pass "file name $(basename "$deb")" || fail "file name $(basename "$deb")"
depends="$(field Depends)"
for dep in ca-certificates libc6 libcurl4 libevent-core libevent-openssl libhiredis libyaml-cpp libssl; do
  [[ "$depends" == *"$dep"* ]] && pass "Depends has $dep" || fail "Depends lacks $dep: $depends"
done
if [[ $systemd_build == ON ]]; then
  [[ "$depends" == *libsystemd0* ]] && pass "Depends has libsystemd0" || fail "Depends lacks libsystemd0: $depends"
fi
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$tmp/conffiles" 2>/dev/null
expect_line "$tmp/conffiles" "/etc/workflow-proxy/workflow-proxy.yaml"
for script in postinst prerm postrm; do
  dpkg-deb --ctrl-tarfile "$deb" | tar -xO "./$script" >"$tmp/$script" 2>/dev/null
  if grep -vE '^\s*#' "$tmp/$script" | grep -E '(^|[;&|]\s*)systemctl\b' | grep -qv daemon-reload; then
    fail "$script calls systemctl for more than daemon-reload"
  else
    pass "$script: systemctl only for daemon-reload"
  fi
  if grep -vE '^\s*#' "$tmp/$script" | grep -qE 'deb-systemd-[a-z]+ +(--quiet +)?enable\b' &&
     ! grep -q 'was-enabled' "$tmp/$script"; then
    fail "$script enables the unit unconditionally"
  fi
  sh -n "$tmp/$script" && pass "$script: sh -n" || fail "$script: syntax error"
done
if grep -q 'deb-systemd-invoke.*start' "$tmp/postinst" && ! grep -q 'try-restart' "$tmp/postinst"; then
  fail "postinst starts the service on install"
fi
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$tmp/files"
for path in /usr/bin/workflow-proxy \
            /usr/lib/systemd/system/workflow-proxy.service \
            /etc/workflow-proxy/workflow-proxy.yaml \
            /usr/share/man/man1/workflow-proxy.1.gz \
            /usr/share/doc/workflow-proxy/copyright \
            /usr/share/doc/workflow-proxy/changelog.Debian.gz \
            /usr/share/doc/workflow-proxy/changelog.gz \
            /usr/share/doc/workflow-proxy/README.md \
            /usr/share/doc/workflow-proxy/docs/configuration.md \
            /usr/share/doc/workflow-proxy/docs/packaging.md \
            /usr/share/doc/workflow-proxy/examples/workflow-proxy.yaml \
            /usr/share/doc/workflow-proxy/examples/env.example \
            /usr/share/lintian/overrides/workflow-proxy; do
  grep -qxF "$path" "$tmp/files" && pass "in package: $path" || fail "not in package: $path"
done
grep -q '\.1$' <(grep '^/usr/share/doc/' "$tmp/files") && fail "the man page source is in the doc dir"
mkdir -p "$tmp/deb"
dpkg-deb -x "$deb" "$tmp/deb"
head -n 1 "$tmp/deb/usr/share/doc/workflow-proxy/copyright" |
  grep -qx 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' &&
  pass "copyright is machine-readable (DEP-5)" || fail "copyright lacks the DEP-5 Format: line"
grep -q '/usr/share/common-licenses/Apache-2.0' "$tmp/deb/usr/share/doc/workflow-proxy/copyright" &&
  pass "copyright refers to /usr/share/common-licenses/Apache-2.0" || fail "copyright lacks the common-licenses reference"
zcat "$tmp/deb/usr/share/doc/workflow-proxy/changelog.Debian.gz" | head -n 1 |
  grep -q "^workflow-proxy ($deb_version) " && pass "changelog.Debian.gz names $deb_version" ||
  fail "changelog.Debian.gz does not start with workflow-proxy ($deb_version)"
if command -v man >/dev/null 2>&1; then
  if LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z \
       "$tmp/deb/usr/share/man/man1/workflow-proxy.1.gz" >/dev/null 2>"$tmp/man.err" && [[ ! -s "$tmp/man.err" ]]; then
    pass "man page renders without groff warnings"
  else
    cat "$tmp/man.err"; fail "groff warnings in the man page"
  fi
fi

# --- 4. cmake --install ------------------------------------------------------------
# check_unit UNIT BINDIR CONFDIR: the unit starts BINDIR/workflow-proxy with
# CONFDIR/workflow-proxy.yaml, checks the file before its SIGHUP on reload, and
# has the type the build supports.
check_unit() {
  local unit="$1" bindir="$2" confdir="$3"
  expect_line "$unit" "ExecStart=$bindir/workflow-proxy --config $confdir/workflow-proxy.yaml"
  local reloads
  reloads="$(sed -n 's/^ExecReload=//p' "$unit")"
  local expected_reloads
  expected_reloads="$(printf '%s\n%s' "$bindir/workflow-proxy --check-config --config $confdir/workflow-proxy.yaml" \
                             '/bin/kill -HUP $MAINPID')"
  if [[ "$reloads" == "$expected_reloads" ]]; then
    pass "$(basename "$unit"): ExecReload= runs --check-config, then kill -HUP"
  else
    fail "$unit: ExecReload= lines are:"$'\n'"$reloads"
  fi
  expect_line "$unit" "EnvironmentFile=-$confdir/env"
  expect_line "$unit" "#LoadCredential=acme:$confdir/acme.key"
  if [[ $systemd_build == ON ]]; then
    expect_line "$unit" "Type=notify"
    expect_line "$unit" "WatchdogSec=30s"
  else
    expect_line "$unit" "Type=simple"
    grep -q '^WatchdogSec=' "$unit" && fail "$unit: WatchdogSec= without sd_notify"
  fi
  grep -q '@[A-Z_]*@' "$unit" && fail "$unit: an unsubstituted @VAR@"
  return 0
}

# verify_unit UNIT [--man=no]: systemd-analyze verify has nothing to say
# about it. It also runs `man workflow-proxy(1)` for Documentation= unless
# --man=no (a temporary prefix is not in the manual path).
verify_unit() {
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "note: systemd-analyze not found (Debian package systemd): verify skipped"
    return 0
  fi
  local -a man_opt=()
  if [[ "${2:-}" == "--man=no" ]] || ! command -v man >/dev/null 2>&1; then man_opt=(--man=no); fi
  local out rc
  out="$(systemd-analyze verify "${man_opt[@]}" "$1" 2>&1)"; rc=$?
  if [[ $rc -eq 0 && "$out" != *"$(basename "$1")"* ]]; then
    pass "systemd-analyze verify ${man_opt[*]:+${man_opt[*]} }$1"
  else
    echo "$out"; fail "systemd-analyze verify ${man_opt[*]:+${man_opt[*]} }$1 (exit $rc)"
  fi
  # The sandbox stays as tight as it was (overall exposure ~1.8 of 10).
  if out="$(systemd-analyze security --offline=true "$1" 2>/dev/null)"; then
    local score
    score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")"
    if [[ -n "$score" ]] && awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }'; then
      pass "systemd-analyze security: exposure $score"
    else
      echo "$out" | tail -n 3; fail "systemd-analyze security: exposure '$score' (expected <= 2.5)"
    fi
  fi
}

# check_reload UNIT CONFIG: the unit's first ExecReload= command, pointed at a
# broken copy of CONFIG, exits 2; at CONFIG with the variables it needs, 0.
check_reload() {
  local unit="$1" conf="$2"
  local line
  line="$(sed -n 's/^ExecReload=//p' "$unit" | head -n 1)"
  [[ -n "$line" ]] || { fail "$unit: no ExecReload="; return; }
  local -a argv
  read -r -a argv <<<"$line"
  local i
  for ((i = 0; i < ${#argv[@]}; i++)); do
    [[ "${argv[$i]}" == "--config" ]] && break
  done
  [[ $i -lt ${#argv[@]} ]] || { fail "$unit: ExecReload= has no --config: $line"; return; }
  local good="$tmp/reload-good.yaml" bad="$tmp/reload-bad.yaml"
  cp "$conf" "$good"
  { cat "$conf"; echo "no_such_field: 1"; } >"$bad"
  local -a secrets=(ACME_API_KEY=sk_test_acme GLOBEX_API_KEY=sk_test_globex TUTOR_WEB_KEY=wfp_test_tutor_web)
  local out rc
  argv[$((i + 1))]="$bad"
  out="$(env -i PATH="$PATH" "${secrets[@]}" "${argv[@]}" 2>&1)"; rc=$?
  if [[ $rc -eq 2 ]]; then
    pass "reload check of a bad file: exit 2 (systemctl reload fails, no SIGHUP): ${out%%$'\n'*}"
  else
    echo "$out"; fail "reload check of a bad file: exit $rc, expected 2"
  fi
  argv[$((i + 1))]="$good"
  out="$(env -i PATH="$PATH" "${secrets[@]}" "${argv[@]}" 2>&1)"; rc=$?
  if [[ $rc -eq 0 && "$out" == *"config OK"* ]]; then
    pass "reload check of a good file: exit 0, then kill -HUP \$MAINPID"
  else
    echo "$out"; fail "reload check of a good file: exit $rc, expected 0 and 'config OK'"
  fi
}

step "cmake --install --prefix $tmp/usr/local"
prefix="$tmp/usr/local"
if env -u DESTDIR cmake --install "$build_dir" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
  pass "installed"
  unit="$prefix/lib/systemd/system/workflow-proxy.service"
  for path in "$prefix/bin/workflow-proxy" "$unit" "$prefix/etc/workflow-proxy/workflow-proxy.yaml" \
              "$prefix/share/man/man1/workflow-proxy.1.gz" "$prefix/share/doc/workflow-proxy/copyright" \
              "$prefix/share/doc/workflow-proxy/docs/packaging.md"; do
    expect_file "$path"
  done
  if [[ -f "$unit" ]]; then
    check_unit "$unit" "$prefix/bin" "$prefix/etc/workflow-proxy"
    expect_line "$unit" "Documentation=man:workflow-proxy(1) file://$prefix/share/doc/workflow-proxy/README.md"
    verify_unit "$unit" --man=no
    check_reload "$unit" "$prefix/etc/workflow-proxy/workflow-proxy.yaml"
  fi
  [[ -e "$tmp/etc" ]] && fail "the /usr/local install wrote outside its prefix: $tmp/etc"
else
  cat "$tmp/install.log"; fail "cmake --install --prefix $prefix"
fi

step "cmake --install --prefix $tmp/root/usr (a staged root)"
if env -u DESTDIR cmake --install "$build_dir" --prefix "$tmp/root/usr" >"$tmp/install-root.log" 2>&1; then
  expect_file "$tmp/root/etc/workflow-proxy/workflow-proxy.yaml"
  expect_file "$tmp/root/usr/bin/workflow-proxy"
  unit="$tmp/root/usr/lib/systemd/system/workflow-proxy.service"
  expect_file "$unit"
  [[ -f "$unit" ]] && check_unit "$unit" /usr/bin /etc/workflow-proxy
  [[ "$(ls "$tmp/root")" == $'etc\nusr' ]] && pass "only etc/ and usr/ under the staged root" ||
    fail "staged root holds: $(ls "$tmp/root" | tr '\n' ' ')"
else
  cat "$tmp/install-root.log"; fail "cmake --install --prefix $tmp/root/usr"
fi

step "DESTDIR=$tmp/dest cmake --install --prefix /usr"
if DESTDIR="$tmp/dest" cmake --install "$build_dir" --prefix /usr >"$tmp/install-dest.log" 2>&1; then
  expect_file "$tmp/dest/etc/workflow-proxy/workflow-proxy.yaml"
  unit="$tmp/dest/usr/lib/systemd/system/workflow-proxy.service"
  expect_file "$unit"
  [[ -f "$unit" ]] && check_unit "$unit" /usr/bin /etc/workflow-proxy
  cmp -s "$unit" "$tmp/deb/usr/lib/systemd/system/workflow-proxy.service" &&
    pass "the package's unit is the one for prefix /usr" || fail "the package's unit differs from the /usr one"
else
  cat "$tmp/install-dest.log"; fail "DESTDIR install"
fi

# --- 5. dpkg -i, remove, purge ------------------------------------------------------
step "dpkg -i / -r / --purge"
why_not=""
if [[ $(id -u) -ne 0 ]]; then
  why_not="not running as root"
elif ! command -v dpkg >/dev/null 2>&1; then
  why_not="dpkg not found"
elif dpkg-query -W -f='${Status}' workflow-proxy 2>/dev/null | grep -q .; then
  why_not="a workflow-proxy package is already known to dpkg ($(dpkg-query -W -f='${Version} ${Status}' workflow-proxy))"
elif [[ -e /usr/bin/workflow-proxy || -e /etc/workflow-proxy ]]; then
  why_not="/usr/bin/workflow-proxy or /etc/workflow-proxy exists outside a package (cmake --install?): the test would overwrite and then remove it"
else
  missing=""
  # Installed packages and what they provide (libspdlog1.10 provides libspdlog1.10-fmt9).
  dpkg-query -W -f='${db:Status-Abbrev}|${Package}, ${Provides}\n' 2>/dev/null |
    sed -n 's/^ii *|//p' | tr ',' '\n' | sed 's/(.*)//; s/:.*//; s/[[:space:]]//g' | sort -u >"$tmp/available"
  # Depends: "a (>= 1), b | c, d" -> the first alternative of each.
  for dep in $(field Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g'); do
    grep -qxF "$dep" "$tmp/available" || missing+=" $dep"
  done
  [[ -z "$missing" ]] || why_not="dependencies not installed:$missing"
fi
if [[ -n "$why_not" ]]; then
  if [[ $failures -gt 0 ]]; then echo; echo "$failures check(s) failed"; exit 1; fi
  skip "dpkg -i not tried: $why_not (steps 1-4 passed)"
fi

dsh_state=/var/lib/systemd/deb-systemd-helper-enabled
installed_by_us=1
if dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1; then
  pass "dpkg -i $(basename "$deb")"
else
  cat "$tmp/dpkg.log"; fail "dpkg -i"; exit 1
fi
for path in /usr/bin/workflow-proxy /etc/workflow-proxy/workflow-proxy.yaml \
            /usr/lib/systemd/system/workflow-proxy.service /usr/share/man/man1/workflow-proxy.1.gz \
            /usr/share/doc/workflow-proxy/copyright /usr/share/doc/workflow-proxy/changelog.Debian.gz \
            /usr/share/doc/workflow-proxy/README.md /usr/share/doc/workflow-proxy/docs/packaging.md; do
  expect_file "$path"
done
out="$(/usr/bin/workflow-proxy --version 2>&1)"
[[ "$out" == "workflow-proxy $version "* ]] && pass "--version: $out" || fail "--version: $out"
dpkg-query -W -f='${Conffiles}\n' workflow-proxy | grep -q '/etc/workflow-proxy/workflow-proxy.yaml' &&
  pass "dpkg knows the conffile" || fail "dpkg does not list /etc/workflow-proxy/workflow-proxy.yaml as a conffile"
expect_file "$dsh_state/workflow-proxy.service.dsh-also"   # update-state, for purge
if ls /etc/systemd/system/*.wants/workflow-proxy.service >/dev/null 2>&1; then
  fail "the unit was enabled on install"
else
  pass "the unit is not enabled"
fi
unit=/usr/lib/systemd/system/workflow-proxy.service
check_unit "$unit" /usr/bin /etc/workflow-proxy
verify_unit "$unit"
check_reload "$unit" /etc/workflow-proxy/workflow-proxy.yaml

echo "# edited by test_package.sh" >>/etc/workflow-proxy/workflow-proxy.yaml
if dpkg -i "$deb" >"$tmp/dpkg2.log" 2>&1; then
  pass "dpkg -i again (upgrade path)"
else
  cat "$tmp/dpkg2.log"; fail "dpkg -i again"
fi
tail -n 1 /etc/workflow-proxy/workflow-proxy.yaml | grep -qx '# edited by test_package.sh' &&
  pass "the edited conffile survived the upgrade" || fail "the upgrade replaced the edited conffile"

if dpkg -r workflow-proxy >"$tmp/dpkg-r.log" 2>&1; then pass "dpkg -r"; else cat "$tmp/dpkg-r.log"; fail "dpkg -r"; fi
expect_gone /usr/bin/workflow-proxy
expect_gone /usr/lib/systemd/system/workflow-proxy.service
expect_file /etc/workflow-proxy/workflow-proxy.yaml   # remove keeps conffiles
[[ "$(readlink /etc/systemd/system/workflow-proxy.service 2>/dev/null)" == /dev/null ]] &&
  pass "masked while removed" || fail "remove did not mask the unit"
if dpkg -i "$deb" >"$tmp/dpkg3.log" 2>&1; then
  pass "dpkg -i after remove"
else
  cat "$tmp/dpkg3.log"; fail "dpkg -i after remove"
fi
expect_gone /etc/systemd/system/workflow-proxy.service   # remove's mask is undone

if dpkg --purge workflow-proxy >"$tmp/dpkg-p.log" 2>&1; then
  pass "dpkg --purge"
else
  cat "$tmp/dpkg-p.log"; fail "dpkg --purge"
fi
installed_by_us=0
for path in /usr/bin/workflow-proxy /etc/workflow-proxy /usr/lib/systemd/system/workflow-proxy.service \
            /usr/share/doc/workflow-proxy /usr/share/man/man1/workflow-proxy.1.gz \
            /usr/share/lintian/overrides/workflow-proxy \
            /etc/systemd/system/workflow-proxy.service \
            "$dsh_state/workflow-proxy.service.dsh-also" \
            /var/lib/systemd/deb-systemd-helper-masked/workflow-proxy.service \
            /var/log/workflow-proxy; do
  expect_gone "$path"
done
dpkg-query -W -f='${Status}' workflow-proxy 2>/dev/null | grep -q . &&
  fail "dpkg still knows workflow-proxy: $(dpkg-query -W -f='${Status}' workflow-proxy)"

echo
if [[ $failures -gt 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all packaging checks passed"
exit 0
