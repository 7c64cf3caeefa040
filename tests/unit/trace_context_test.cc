// traceparent → the trace id the access log names (W3C Trace Context, level 1).
#include "proxy/trace_context.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

constexpr const char* kValid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContext, AValidTraceparentGivesItsTraceId) {
  EXPECT_EQ(parseTraceparent(kValid).hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(parseTraceparent(std::string(" ") + kValid + "\t").hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  // A later version may carry more after another '-'.
  EXPECT_EQ(parseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next").hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(parseTraceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736");
}

TEST(TraceContext, AnythingElseGivesNone) {
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",            // no flags
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",   // version 00 is exact
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",         // version ff is invalid
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",         // upper case
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",         // all-zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",         // all-zero parent id
           "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",         // not hex
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",         // wrong separator
           "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",        // later version, no '-'
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\n",        // a control character
       }) {
    TraceId id = parseTraceparent(bad);
    EXPECT_FALSE(id.valid()) << bad;
    EXPECT_EQ(id.hex(), "") << bad;
  }
}

TEST(TraceContext, TwoTraceparentHeadersGiveNone) {
  EXPECT_EQ(traceIdOf({{"Traceparent", kValid}}).hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_FALSE(traceIdOf({{"traceparent", kValid}, {"TRACEPARENT", kValid}}).valid());
  EXPECT_FALSE(traceIdOf({{"tracestate", "a=b"}}).valid());
}

}  // namespace
}  // namespace wfp
