// The route-rules file parser and the allocation-free matcher.
#include "daemon/route_rules.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "verifier/catalog.h"

namespace tokend::daemon {
namespace {

bool isBlank(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

// RFC 9110 5.6.2 token characters: what a method may hold.
bool isMethod(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    bool alnum = (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z');
    if (!alnum && std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos)
      return false;
  }
  return true;
}

bool isCaptureName(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (!((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || c == '_'))
      return false;
  }
  return true;
}

// "." or "..", also percent-encoded ("%2e", ".%2E"...): segments a gateway may resolve before it
// routes, so that the path it serves is not the one a rule saw.
bool isDotSegment(std::string_view s) {
  size_t dots = 0;
  while (!s.empty()) {
    if (s[0] == '.') {
      s.remove_prefix(1);
    } else if (s.size() >= 3 && s[0] == '%' && s[1] == '2' && (s[2] == 'e' || s[2] == 'E')) {
      s.remove_prefix(3);
    } else {
      return false;
    }
    ++dots;
  }
  return dots == 1 || dots == 2;
}

// The next '/'-separated segment of `path` from `pos` (just after a '/'); `pos` moves past it and
// its '/', or to npos after the last one.
std::string_view nextSegment(std::string_view path, size_t& pos) {
  size_t slash = path.find('/', pos);
  std::string_view seg = path.substr(pos, slash == std::string_view::npos ? slash : slash - pos);
  pos = slash == std::string_view::npos ? std::string_view::npos : slash + 1;
  return seg;
}

}  // namespace

Result<RouteRules> RouteRules::parse(std::string_view text, std::string_view source) {
  RouteRules out;
  size_t lineNo = 0;
  while (!text.empty()) {
    ++lineNo;
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);

    std::string_view words[5];
    size_t count = 0;
    for (size_t i = 0; i < line.size();) {
      while (i < line.size() && isBlank(line[i])) ++i;
      if (i == line.size()) break;
      size_t start = i;
      while (i < line.size() && !isBlank(line[i])) ++i;
      if (count == std::size(words)) {
        count = std::size(words) + 1;
        break;
      }
      words[count++] = line.substr(start, i - start);
    }
    if (count == 0) continue;
    auto fail = [&](const std::string& why) {
      return makeError(fmt::format("{} line {}: {}", source, lineNo, why), -EINVAL);
    };
    if (count < 3 || count > 4) {
      return fail("want METHOD PATH-PATTERN PERMISSION [OBJECT-TEMPLATE], got " +
                  (count > 4 ? std::string("more than 4") : std::to_string(count)) + " words");
    }

    Rule rule;
    if (words[0] != "*") {
      std::string_view m = words[0];
      while (true) {
        size_t comma = m.find(',');
        std::string_view one = m.substr(0, comma);
        if (!isMethod(one)) return fail(fmt::format("malformed method \"{}\"", one));
        rule.methods.emplace_back(one);
        if (comma == std::string_view::npos) break;
        m.remove_prefix(comma + 1);
      }
    }

    std::string_view pattern = words[1];
    if (pattern.empty() || pattern[0] != '/')
      return fail(fmt::format("path pattern \"{}\" must start with '/'", pattern));
    if (pattern.find_first_of("?%") != std::string_view::npos)
      return fail(
          fmt::format("path pattern \"{}\": no '?' or '%' (paths are matched undecoded)", pattern));
    std::vector<std::string> names;
    for (size_t pos = 1; pos != std::string_view::npos;) {
      std::string_view seg = nextSegment(pattern, pos);
      if (rule.rest) return fail(fmt::format("path pattern \"{}\": '*' must be last", pattern));
      if (seg == "*") {
        rule.rest = true;
        continue;
      }
      if (seg.empty() && pattern != "/")
        return fail(fmt::format("path pattern \"{}\": empty segment", pattern));
      if (isDotSegment(seg))
        return fail(fmt::format("path pattern \"{}\": '.' and '..' match nothing", pattern));
      Segment s;
      if (seg.size() >= 2 && seg.front() == '{' && seg.back() == '}') {
        std::string_view name = seg.substr(1, seg.size() - 2);
        if (!isCaptureName(name))
          return fail(fmt::format("malformed capture \"{}\" (want {{letters, digits, _}})", seg));
        for (const std::string& n : names)
          if (n == name) return fail(fmt::format("capture \"{}\" twice", seg));
        if (names.size() == kMaxRouteCaptures)
          return fail(fmt::format("more than {} captures", kMaxRouteCaptures));
        s.capture = static_cast<int>(names.size());
        names.emplace_back(name);
      } else if (seg.find_first_of("{}*") != std::string_view::npos) {
        return fail(
            fmt::format("segment \"{}\": a capture is a whole segment, '*' the last one", seg));
      } else {
        s.literal = std::string(seg);
      }
      rule.segments.push_back(std::move(s));
    }

    if (words[2] != "-") {
      if (!verifier::catalog::findPermission(words[2]))
        return fail(fmt::format("unknown permission \"{}\"", words[2]));
      rule.permission = std::string(words[2]);
    }

    if (count == 4 && words[3] != "-") {
      std::string_view t = words[3];
      size_t colon = t.find(':');
      if (colon == std::string_view::npos || !verifier::catalog::findResource(t.substr(0, colon)))
        return fail(
            fmt::format("object template \"{}\" must start with a resource type and ':'", t));
      while (!t.empty()) {
        Piece p;
        size_t open = t.find('{');
        if (open != 0) {
          std::string_view lit = t.substr(0, open);
          if (lit.find('}') != std::string_view::npos)
            return fail(fmt::format("object template \"{}\": unbalanced '}}'", words[3]));
          p.literal = std::string(lit);
          t.remove_prefix(lit.size());
        } else {
          size_t close = t.find('}');
          if (close == std::string_view::npos)
            return fail(fmt::format("object template \"{}\": unbalanced '{{'", words[3]));
          std::string_view name = t.substr(1, close - 1);
          for (size_t i = 0; i < names.size(); ++i)
            if (names[i] == name) p.capture = static_cast<int>(i);
          if (p.capture < 0)
            return fail(fmt::format("object template \"{}\": no capture {{{}}} in \"{}\"", words[3],
                                    name, pattern));
          t.remove_prefix(close + 1);
        }
        rule.object.push_back(std::move(p));
      }
    }
    out.rules_.push_back(std::move(rule));
  }
  return out;
}

Result<RouteRules> RouteRules::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return makeError(fmt::format("{}: {}", path, std::strerror(errno)), -errno);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return makeError(fmt::format("{}: read error", path), -EIO);
  return parse(text.str(), path);
}

bool RouteRules::match(std::string_view method, std::string_view path, RouteMatch& out) const {
  if (path.empty() || path[0] != '/') return false;
  for (size_t pos = 1; pos != std::string_view::npos;)
    if (isDotSegment(nextSegment(path, pos))) return false;

  std::array<std::string_view, kMaxRouteCaptures> caps;
  for (const Rule& rule : rules_) {
    if (!rule.methods.empty()) {
      bool any = false;
      for (const std::string& m : rule.methods) any = any || m == method;
      if (!any) continue;
    }
    size_t pos = 1;
    bool ok = true;
    for (const Segment& s : rule.segments) {
      if (pos == std::string_view::npos) {
        ok = false;
        break;
      }
      std::string_view seg = nextSegment(path, pos);
      if (s.capture >= 0) {
        if (seg.empty()) {
          ok = false;
          break;
        }
        caps[static_cast<size_t>(s.capture)] = seg;
      } else if (seg != s.literal) {
        ok = false;
        break;
      }
    }
    if (!ok || (pos != std::string_view::npos && !rule.rest)) continue;

    out.permission = rule.permission;
    out.object = {};
    out.objectTooLong = false;
    size_t used = 0;
    for (const Piece& p : rule.object) {
      std::string_view v = p.capture >= 0 ? caps[static_cast<size_t>(p.capture)] : p.literal;
      if (v.size() > out.storage.size() - used) {
        out.objectTooLong = true;
        return true;
      }
      std::memcpy(out.storage.data() + used, v.data(), v.size());
      used += v.size();
    }
    out.object = std::string_view(out.storage.data(), used);
    return true;
  }
  return false;
}

RouteOutcome applyRouteRules(const RouteRules& rules, const HttpRequest& request,
                             VerifyQuery& query, RouteMatch& match) {
  if (rules.empty() || !query.permission.empty()) return RouteOutcome::NotApplied;
  std::string_view method, path;
  if (!forwardedRequest(request, method, path)) return RouteOutcome::NotApplied;
  if (!rules.match(method, path, match)) return RouteOutcome::NoRule;
  if (match.objectTooLong) return RouteOutcome::ObjectTooLong;
  query.permission = match.permission;
  if (query.object.empty()) query.object = match.object;
  return RouteOutcome::Matched;
}

}  // namespace tokend::daemon
