// `workflow-proxy keygen`: a new client key from the OS CSPRNG, and the
// `clients:` entry with its digest.
#pragma once

#include <string>

namespace wfp {

std::string newClientKey();  // "wfp_" + 48 lowercase hex characters (192 bits)
// The text keygen prints for a key and a client name.
std::string keygenOutput(const std::string& key, const std::string& name);

}  // namespace wfp
