// The standard process_* metrics every Prometheus client library exports,
// read from /proc/self at scrape time: CPU seconds, resident and virtual
// memory, open and maximum file descriptors, start time. Nothing is kept
// between scrapes. Where /proc cannot be read, the family is left out (a
// scrape never fails for it).
#pragma once

#include <string>

namespace wfp {

void renderProcessMetrics(std::string& out);

}  // namespace wfp
