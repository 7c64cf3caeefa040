#include "proxy/keygen.h"

#include <sys/random.h>

#include <array>
#include <stdexcept>

#include "proxy/hash.h"

namespace wfp {

std::string newClientKey() {
  std::array<uint8_t, 24> bytes{};
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = getrandom(bytes.data() + got, bytes.size() - got, 0);
    if (n < 0 && errno != EINTR) throw std::runtime_error("getrandom failed");
    if (n > 0) got += static_cast<size_t>(n);
  }
  return "wfp_" + toHex(bytes.data(), bytes.size());
}

std::string keygenOutput(const std::string& key, const std::string& name) {
  std::string out;
  out += "# client key (give it to the client; it is not stored anywhere):\n";
  out += "#   " + key + "\n";
  out += "# add under the organisation's `clients:`\n";
  out += "clients:\n";
  out += "  - name: " + name + "\n";
  out += "    key_sha256: " + sha256Hex(key) + "\n";
  return out;
}

}  // namespace wfp
