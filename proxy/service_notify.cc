#include "proxy/service_notify.h"

#ifdef WFP_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace wfp {

#ifdef WFP_SYSTEMD
void notifyServiceManager(const std::string& state) { sd_notify(0, state.c_str()); }

uint64_t watchdogIntervalMicros() {
  uint64_t usec = 0;
  return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}
#else
void notifyServiceManager(const std::string&) {}
uint64_t watchdogIntervalMicros() { return 0; }
#endif

}  // namespace wfp
