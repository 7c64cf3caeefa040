# Installation layout and the Debian package (docs/packaging.md).
#
#   cmake --install build --prefix /usr          # or: DESTDIR=/tmp/root cmake --install build --prefix /usr
#   cd build && cpack -G DEB                     # workflow-proxy_<version>-<revision>_<arch>.deb
#
# Layout for prefix /usr (GNUInstallDirs names):
#   /usr/bin/workflow-proxy                              (top-level CMakeLists.txt)
#   /usr/lib/systemd/system/workflow-proxy.service       (from systemd/workflow-proxy.service.in)
#   /etc/workflow-proxy/workflow-proxy.yaml              (a dpkg conffile)
#   /usr/share/man/man1/workflow-proxy.1.gz
#   /usr/share/doc/workflow-proxy/README.md, docs/*.md, changelog.gz (CHANGELOG.md),
#     changelog.Debian.gz, copyright (packaging/debian/)
#   /usr/share/doc/workflow-proxy/examples/{workflow-proxy,sidecar,fleet}.yaml, env.example
#
# Included from the top-level CMakeLists.txt after GNUInstallDirs.

set(WFP_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
    "systemd unit directory, relative to the install prefix (or absolute)")

# Directories the install creates are 0755 whatever the umask (dpkg and
# lintian expect it).
set(CMAKE_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

set(_wfp_pkg_src "${PROJECT_SOURCE_DIR}/packaging/debian")
set(_wfp_pkg_out "${PROJECT_BINARY_DIR}/packaging")
file(MAKE_DIRECTORY "${_wfp_pkg_out}")

# --- Version: the Debian changelog's top entry -------------------------------
# packaging/debian/changelog's first line is "workflow-proxy (<version>-<revision>) ...".
# Its upstream part must be PROJECT_VERSION; the revision becomes the package's.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_wfp_pkg_src}/changelog")
file(STRINGS "${_wfp_pkg_src}/changelog" _wfp_changelog_head LIMIT_COUNT 1)
if(_wfp_changelog_head MATCHES "^workflow-proxy \\(([^)]+)-([^)-]+)\\) ")
  set(_wfp_changelog_upstream "${CMAKE_MATCH_1}")
  set(WFP_DEBIAN_REVISION "${CMAKE_MATCH_2}")
else()
  message(FATAL_ERROR "packaging/debian/changelog: the first line is not "
                      "'workflow-proxy (<version>-<revision>) <distribution>; urgency=<urgency>'")
endif()
set(_wfp_version_error "")
if(NOT _wfp_changelog_upstream STREQUAL PROJECT_VERSION)
  string(CONCAT _wfp_version_error
      "packaging/debian/changelog's top entry is ${_wfp_changelog_upstream}-${WFP_DEBIAN_REVISION} but the "
      "project is ${PROJECT_VERSION}: add an entry '${PROJECT_VERSION}-1' before building a package")
  # Only the package needs them to agree: cpack refuses (CPACK_PROJECT_CONFIG_FILE below).
  message(WARNING "${_wfp_version_error}")
endif()

# --- Generated documentation: gzip -9n, as Debian policy wants it ------------
find_program(WFP_GZIP gzip REQUIRED)
set(_wfp_gz_outputs "")
foreach(pair
        "${PROJECT_SOURCE_DIR}/docs/workflow-proxy.1|workflow-proxy.1.gz"
        "${PROJECT_SOURCE_DIR}/CHANGELOG.md|changelog.gz"
        "${_wfp_pkg_src}/changelog|changelog.Debian.gz")
  string(REPLACE "|" ";" pair "${pair}")
  list(GET pair 0 _in)
  list(GET pair 1 _out)
  add_custom_command(
    OUTPUT "${_wfp_pkg_out}/${_out}"
    COMMAND sh -c "\"$1\" -9nc < \"$2\" > \"$3.tmp\" && mv \"$3.tmp\" \"$3\""
            sh "${WFP_GZIP}" "${_in}" "${_wfp_pkg_out}/${_out}"
    DEPENDS "${_in}"
    COMMENT "gzip -9n ${_out}"
    VERBATIM)
  list(APPEND _wfp_gz_outputs "${_wfp_pkg_out}/${_out}")
endforeach()
add_custom_target(wfp_compressed_docs ALL DEPENDS ${_wfp_gz_outputs})

install(FILES "${_wfp_pkg_out}/workflow-proxy.1.gz" DESTINATION "${CMAKE_INSTALL_MANDIR}/man1")
install(FILES
          ${PROJECT_SOURCE_DIR}/README.md
          "${_wfp_pkg_out}/changelog.gz"
          "${_wfp_pkg_out}/changelog.Debian.gz"
          "${_wfp_pkg_src}/copyright"
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
# Lintian overrides, each justified in docs/packaging.md.
install(FILES "${_wfp_pkg_src}/lintian-overrides"
        DESTINATION "${CMAKE_INSTALL_DATAROOTDIR}/lintian/overrides"
        RENAME workflow-proxy)
# docs/*.md as they are (relative links between them and from README.md work).
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/docs
        FILES_MATCHING PATTERN "*.md")
install(FILES
          ${PROJECT_SOURCE_DIR}/conf/workflow-proxy.yaml
          ${PROJECT_SOURCE_DIR}/conf/sidecar.yaml
          ${PROJECT_SOURCE_DIR}/conf/fleet.yaml
          ${PROJECT_SOURCE_DIR}/systemd/env.example
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# --- Configuration and unit: paths decided at install time --------------------
# The configuration goes to <sysconfdir>/workflow-proxy. The directory is
# decided at install time, from the prefix given to `cmake --install --prefix`
# (or by CPack), not from the one known at configure time:
#   prefix /usr                 -> /etc                 (GNUInstallDirs' rule; DESTDIR applies)
#   prefix <root>/usr           -> <root>/etc           (a staged root, like DESTDIR=<root>)
#   anything else               -> <prefix>/etc         (e.g. /usr/local/etc, /opt/wfp/etc)
# An absolute CMAKE_INSTALL_SYSCONFDIR given at configure time wins.
#
# The unit is generated then too, from systemd/workflow-proxy.service.in, with
# the paths the files have once installed: <bindir>/workflow-proxy and
# <sysconfdir>/workflow-proxy/... For a staged root (<root>/usr) those are the
# paths below <root>, i.e. as seen when <root> is /. Built without WFP_SYSTEMD
# (no sd_notify) the unit is Type=simple without a watchdog.
if(NOT DEFINED WFP_SYSTEMD OR WFP_SYSTEMD)
  set(_wfp_unit_type "notify")
  set(_wfp_unit_watchdog "WatchdogSec=30s")
else()
  set(_wfp_unit_type "simple")
  set(_wfp_unit_watchdog "# No WatchdogSec=: this build has no sd_notify (WFP_SYSTEMD=OFF).")
endif()
install(CODE "
  set(_wfp_sysconfdir \"${CMAKE_INSTALL_SYSCONFDIR}\")
  set(_wfp_bindir \"${CMAKE_INSTALL_BINDIR}\")
  set(_wfp_docdir \"${CMAKE_INSTALL_DOCDIR}\")
  set(_wfp_unitdir \"${WFP_SYSTEMD_UNITDIR}\")
  set(_wfp_strip \"${CMAKE_STRIP}\")
  set(_wfp_conf_src \"${PROJECT_SOURCE_DIR}/conf/workflow-proxy.yaml\")
  set(_wfp_unit_src \"${PROJECT_SOURCE_DIR}/systemd/workflow-proxy.service.in\")
  set(_wfp_unit_outdir \"${_wfp_pkg_out}/units\")
  set(WFP_UNIT_TYPE \"${_wfp_unit_type}\")
  set(WFP_UNIT_WATCHDOG \"${_wfp_unit_watchdog}\")
")
install(CODE [[
  string(REGEX REPLACE "/+$" "" _wfp_prefix "${CMAKE_INSTALL_PREFIX}")
  set(_wfp_root "")
  if(_wfp_prefix MATCHES "^(.+)/usr$")
    set(_wfp_root "${CMAKE_MATCH_1}")
  endif()
  if(IS_ABSOLUTE "${_wfp_sysconfdir}")
    set(_wfp_etc "${_wfp_sysconfdir}")
  elseif(_wfp_prefix STREQUAL "/usr")
    set(_wfp_etc "/etc")
  elseif(NOT _wfp_root STREQUAL "")
    set(_wfp_etc "${_wfp_root}/etc")
  else()
    set(_wfp_etc "${_wfp_prefix}/${_wfp_sysconfdir}")
  endif()
  foreach(_d bindir docdir unitdir)
    if(NOT IS_ABSOLUTE "${_wfp_${_d}}")
      set(_wfp_${_d} "${_wfp_prefix}/${_wfp_${_d}}")
    endif()
  endforeach()

  # `cmake --install --strip` and CPack run a bare strip; remove what dh_strip
  # also removes.
  if(CMAKE_INSTALL_DO_STRIP AND NOT _wfp_strip STREQUAL "")
    execute_process(COMMAND "${_wfp_strip}" --remove-section=.comment --remove-section=.note
                            "$ENV{DESTDIR}${_wfp_bindir}/workflow-proxy"
                    RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "${_wfp_strip} failed on $ENV{DESTDIR}${_wfp_bindir}/workflow-proxy")
    endif()
  endif()

  file(INSTALL DESTINATION "${_wfp_etc}/workflow-proxy" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES "${_wfp_conf_src}")

  # The paths as the running system sees them: without a staged root's <root>.
  foreach(_d bindir etc docdir)
    set(_wfp_unit_${_d} "${_wfp_${_d}}")
    string(LENGTH "${_wfp_root}" _n)
    string(FIND "${_wfp_unit_${_d}}/" "${_wfp_root}/" _at)
    if(_n GREATER 0 AND _at EQUAL 0)
      string(SUBSTRING "${_wfp_unit_${_d}}" ${_n} -1 _wfp_unit_${_d})
    endif()
  endforeach()
  set(WFP_UNIT_BINDIR "${_wfp_unit_bindir}")
  set(WFP_UNIT_CONFDIR "${_wfp_unit_etc}/workflow-proxy")
  set(WFP_UNIT_DOCDIR "${_wfp_unit_docdir}")
  # One generated file per destination: installs to other prefixes do not share it.
  string(MD5 _wfp_key "$ENV{DESTDIR}|${_wfp_unitdir}|${WFP_UNIT_BINDIR}|${WFP_UNIT_CONFDIR}|${WFP_UNIT_DOCDIR}")
  set(_wfp_unit_out "${_wfp_unit_outdir}/${_wfp_key}/workflow-proxy.service")
  configure_file("${_wfp_unit_src}" "${_wfp_unit_out}" @ONLY)
  file(INSTALL DESTINATION "${_wfp_unitdir}" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES "${_wfp_unit_out}")
]])

# --- CPack: Debian package ---------------------------------------------------

set(CPACK_PACKAGE_NAME "workflow-proxy")
set(CPACK_PACKAGE_VENDOR "workflow-proxy")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "workflow-proxy dev <dev@workflow-proxy.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "caching, rate-limiting reverse proxy for the AI Tutor Run Workflow API")
# Lines of at most 72 columns (the extended description is shown as it is).
set(CPACK_PACKAGE_DESCRIPTION
    "workflow-proxy sits between internal services and the AI Tutor Run
Workflow API. It replaces client keys with organisation keys, answers
identical inputs from a cache (in-process or Redis) and coalesces them
while in flight, and queues requests fairly to stay under the upstream
rate limit. It runs as a systemd service, a sidecar, or a fleet of
instances sharing one Redis.
The service is installed but not enabled: it needs the organisations'
keys first (see /usr/share/doc/workflow-proxy/docs/packaging.md).")
# The package installs into / with DESTDIR: the install scripts see the real
# prefix (/usr), which the unit's paths are generated from.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX "/usr")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_STRIP_FILES ON)
set(CPACK_GENERATOR "DEB")

set(CPACK_DEBIAN_PACKAGE_NAME "workflow-proxy")
set(CPACK_DEBIAN_PACKAGE_RELEASE "${WFP_DEBIAN_REVISION}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# The upstream is HTTPS with certificate verification (upstream.tls_verify):
# libcurl needs the system's CA bundle. Library dependencies come from
# dpkg-shlibdeps (package dpkg-dev) and are added to this list.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "ca-certificates")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "redis-server")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

# Control files: conffiles (an edited configuration survives upgrades and is
# kept on remove) and the maintainer scripts of packaging/debian/, which are
# what dh_installsystemd would generate for a unit that is not enabled or
# started on install (it needs keys first).
file(WRITE "${_wfp_pkg_out}/conffiles" "/etc/workflow-proxy/workflow-proxy.yaml\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${_wfp_pkg_out}/conffiles;${_wfp_pkg_src}/postinst;${_wfp_pkg_src}/prerm;${_wfp_pkg_src}/postrm")

# cpack refuses to build a package whose changelog names another version.
file(WRITE "${_wfp_pkg_out}/cpack-project-config.cmake"
     "set(_wfp_version_error [==[${_wfp_version_error}]==])\n"
     "if(NOT _wfp_version_error STREQUAL \"\")\n"
     "  message(FATAL_ERROR \"\${_wfp_version_error}\")\n"
     "endif()\n")
set(CPACK_PROJECT_CONFIG_FILE "${_wfp_pkg_out}/cpack-project-config.cmake")

include(CPack)
