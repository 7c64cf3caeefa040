// The application log's lines: text and JSON, with and without the journal's
// priority prefix, and how the journal is recognised.
#include "proxy/logging.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

namespace wfp {
namespace {

constexpr int64_t kTime = 1796213457123456;  // 2026-12-02T12:10:57.123456Z

TEST(Logging, JsonLinesAreOneObjectWhateverTheMessageHolds) {
  std::string line = formatLogLine(LogConfig::Format::Json, false, spdlog::level::warn,
                                   "path \"/a\\b\"\nnext\x01 \xff end", kTime);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["time"], "2026-12-02T12:10:57.123Z");
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"], "path \"/a\\b\"\nnext\x01 \u00ff end");
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(j.size(), 3u);
}

TEST(Logging, TextLinesKeepTheirFormAndOneLinePerRecord) {
  setenv("TZ", "UTC", 1);
  tzset();
  std::string line = formatLogLine(LogConfig::Format::Text, false, spdlog::level::info, "two\nlines", kTime);
  EXPECT_EQ(line, "2026-12-02T12:10:57.123+0000 info two lines");
}

TEST(Logging, TheJournalGetsEachLinesPriority) {
  for (auto [level, prefix] : {std::pair{spdlog::level::debug, "<7>"}, std::pair{spdlog::level::info, "<6>"},
                               std::pair{spdlog::level::warn, "<4>"}, std::pair{spdlog::level::err, "<3>"},
                               std::pair{spdlog::level::critical, "<2>"}}) {
    EXPECT_EQ(formatLogLine(LogConfig::Format::Text, true, level, "m", kTime).rfind(prefix, 0), 0u) << prefix;
    std::string json = formatLogLine(LogConfig::Format::Json, true, level, "m", kTime);
    ASSERT_EQ(json.rfind(prefix, 0), 0u) << json;
    EXPECT_TRUE(nlohmann::json::parse(json.substr(3)).is_object());
  }
}

TEST(Logging, JournalStreamMustNameTheDescriptorsFile) {
  char path[] = "/tmp/wfp-logging-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  std::string other = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1);
  EXPECT_TRUE(isJournalStream(fd, mine.c_str()));
  EXPECT_FALSE(isJournalStream(fd, other.c_str()));
  EXPECT_FALSE(isJournalStream(fd, nullptr));
  EXPECT_FALSE(isJournalStream(fd, ""));
  EXPECT_FALSE(isJournalStream(fd, "garbage"));
  close(fd);
  unlink(path);
}

}  // namespace
}  // namespace wfp
