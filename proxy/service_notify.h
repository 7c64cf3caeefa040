// The service manager's notification protocol (systemd, Type=notify):
// READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1. Built with WFP_SYSTEMD
// (the default) through libsystemd's sd_notify; without it these do nothing
// and the unit runs the proxy as Type=simple.
#pragma once

#include <cstdint>
#include <string>

namespace wfp {

// Sends `state` when NOTIFY_SOCKET is set; otherwise nothing.
void notifyServiceManager(const std::string& state);
// The watchdog interval the service manager asks for (WatchdogSec=), in
// microseconds; 0 when it asks for none.
uint64_t watchdogIntervalMicros();

}  // namespace wfp
