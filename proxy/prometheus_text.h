// The pieces of the Prometheus text format (0.0.4) every exporter in the
// proxy writes: a family's HELP/TYPE head and a number in its shortest form.
#pragma once

#include <charconv>
#include <string>
#include <string_view>

namespace wfp {

// The shortest text that reads back as the same double: le="0.005", not
// le="0.0050000000000000001".
inline std::string formatNumber(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

// "# HELP <name> <help>\n# TYPE <name> <type>\n"
inline void appendFamilyHead(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

}  // namespace wfp
