#include "attend/errors.h"

namespace attend {

namespace {
std::string format(const std::string& summary, const std::vector<rejection>& rejections) {
  std::string s = summary;
  for (const rejection& r : rejections) s += "\n  " + r.backend + ": " + r.reason;
  return s;
}
}  // namespace

unsupported::unsupported(const std::string& summary, std::vector<rejection> rejections)
    : error(format(summary, rejections)), rejections_(std::move(rejections)) {}

}  // namespace attend
