# Installation layout and the Debian package (SPEC §7).
#
#   cmake --install build --prefix /usr          # or: DESTDIR=/tmp/root cmake --install build --prefix /usr
#   cd build && cpack -G DEB                     # workflow-proxy_<version>_<arch>.deb
#
# Layout for prefix /usr (GNUInstallDirs names):
#   /usr/bin/workflow-proxy                              (top-level CMakeLists.txt)
#   /usr/lib/systemd/system/workflow-proxy.service
#   /etc/workflow-proxy/workflow-proxy.yaml              (a dpkg conffile)
#   /usr/share/doc/workflow-proxy/README.md
#   /usr/share/doc/workflow-proxy/examples/{workflow-proxy,sidecar,fleet}.yaml, env.example
#
# Included from the top-level CMakeLists.txt after GNUInstallDirs.

set(WFP_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
    "systemd unit directory, relative to the install prefix (or absolute)")

install(FILES ${PROJECT_SOURCE_DIR}/systemd/workflow-proxy.service
        DESTINATION ${WFP_SYSTEMD_UNITDIR})

install(FILES ${PROJECT_SOURCE_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES
          ${PROJECT_SOURCE_DIR}/conf/workflow-proxy.yaml
          ${PROJECT_SOURCE_DIR}/conf/sidecar.yaml
          ${PROJECT_SOURCE_DIR}/conf/fleet.yaml
          ${PROJECT_SOURCE_DIR}/systemd/env.example
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# The configuration goes to <sysconfdir>/workflow-proxy. The directory is
# decided at install time, from the prefix given to `cmake --install --prefix`
# (or by CPack), not from the one known at configure time:
#   prefix /usr                 -> /etc                 (GNUInstallDirs' rule; DESTDIR applies)
#   prefix <root>/usr           -> <root>/etc           (a staged root: CPack, tests)
#   anything else               -> <prefix>/etc         (e.g. /usr/local/etc, /opt/wfp/etc)
# An absolute CMAKE_INSTALL_SYSCONFDIR given at configure time wins.
set(_wfp_conf_src "${PROJECT_SOURCE_DIR}/conf/workflow-proxy.yaml")
set(_wfp_sysconfdir "${CMAKE_INSTALL_SYSCONFDIR}")
install(CODE "
  set(_wfp_sysconfdir \"${_wfp_sysconfdir}\")
  if(IS_ABSOLUTE \"\${_wfp_sysconfdir}\")
    set(_wfp_etc \"\${_wfp_sysconfdir}\")
  elseif(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\" OR CMAKE_INSTALL_PREFIX STREQUAL \"/usr/\")
    set(_wfp_etc \"/etc\")
  elseif(CMAKE_INSTALL_PREFIX MATCHES \"^(.+)/usr/?$\")
    set(_wfp_etc \"\${CMAKE_MATCH_1}/etc\")
  else()
    set(_wfp_etc \"\${CMAKE_INSTALL_PREFIX}/\${_wfp_sysconfdir}\")
  endif()
  file(INSTALL DESTINATION \"\${_wfp_etc}/workflow-proxy\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"${_wfp_conf_src}\")
")

# --- CPack: Debian package ---------------------------------------------------

set(CPACK_PACKAGE_NAME "workflow-proxy")
set(CPACK_PACKAGE_VENDOR "workflow-proxy")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "workflow-proxy dev <dev@workflow-proxy.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "caching, rate-limiting reverse proxy for the AI Tutor Run Workflow API")
set(CPACK_PACKAGE_DESCRIPTION
    "workflow-proxy sits between internal services and the AI Tutor Run Workflow API.
It replaces client keys with organisation keys, answers identical inputs from a
cache (in-process or Redis) and coalesces them while in flight, and queues
requests fairly to stay under the upstream rate limit. It runs as a systemd
daemon (Type=notify), a sidecar, or a fleet of instances sharing one Redis.")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_STRIP_FILES ON)
set(CPACK_GENERATOR "DEB")

set(CPACK_DEBIAN_PACKAGE_NAME "workflow-proxy")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# Library dependencies from dpkg-shlibdeps (package dpkg-dev).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "redis-server")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

# Control files: conffiles (an edited configuration survives upgrades and is
# kept on remove) and maintainer scripts that tell a running systemd about the
# unit. The service is not enabled or started: it needs keys first
# (/etc/workflow-proxy/env, see examples/env.example).
set(_wfp_control_dir "${PROJECT_BINARY_DIR}/debian-control")
file(MAKE_DIRECTORY "${_wfp_control_dir}")
file(WRITE "${_wfp_control_dir}/conffiles" "/etc/workflow-proxy/workflow-proxy.yaml\n")
file(WRITE "${_wfp_control_dir}/postinst" [=[#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null 2>&1 || true
  # An upgrade restarts a service that was running.
  if [ -n "$2" ]; then
    systemctl try-restart workflow-proxy.service >/dev/null 2>&1 || true
  fi
fi
exit 0
]=])
file(WRITE "${_wfp_control_dir}/prerm" [=[#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
  systemctl stop workflow-proxy.service >/dev/null 2>&1 || true
fi
exit 0
]=])
file(WRITE "${_wfp_control_dir}/postrm" [=[#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = "purge" ]; then
  rmdir /etc/workflow-proxy 2>/dev/null || true
fi
exit 0
]=])
file(CHMOD "${_wfp_control_dir}/postinst" "${_wfp_control_dir}/prerm" "${_wfp_control_dir}/postrm"
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${_wfp_control_dir}/conffiles;${_wfp_control_dir}/postinst;${_wfp_control_dir}/prerm;${_wfp_control_dir}/postrm")

include(CPack)
