// The stream token (docs/http.md): the one home of the rules about the
// single-use `token` query parameter of the stream route and the token
// route's answer. Pure: no I/O.
#pragma once

#include <string>
#include <string_view>

namespace wfp {

// Does the query carry a `token` parameter, read as the upstream reads it
// (URLSearchParams: '&'-separated, names and values percent-decoded, '+' a
// space)? Any such parameter, in any encoding and with any value, makes the
// request a client-token stream. `query` is the part after '?'.
bool queryHasToken(std::string_view query);

// The token in a token-route answer ({"success":true,"token":"pub_tok_…"}),
// or "" when the answer is not a 200 with a well-formed token (letters,
// digits, '_' and '-' only, at most 256 characters: nothing that could
// change the URL it is put into).
std::string tokenFromAnswer(int status, std::string_view body);

// `url` with "token=<token>" appended to its query.
std::string withToken(std::string url, std::string_view token);

}  // namespace wfp
