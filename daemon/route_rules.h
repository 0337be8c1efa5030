// Route rules (--route-rules FILE): the permission a forwarded method and path need (SPEC 7).
//
// A forward-auth gateway (Traefik's forwardAuth, Envoy's ext_authz) asks tokend about the
// client's request itself, not about a permission. One rules file maps that request to the
// permission and object to check, so that one gateway middleware can guard many routes:
//
//   # METHOD[,METHOD...]|*  PATH-PATTERN            PERMISSION|-     [OBJECT-TEMPLATE]
//   GET                     /api/workspaces/{id}     workspace:read   workspace:{id}
//   DELETE                  /api/workspaces/{id}     workspace:delete workspace:{id}
//   GET,HEAD                /healthz                 -
//   *                       /api/templates/*         template:read
//
// - Words are separated by blanks; '#' starts a comment; blank lines are skipped.
// - METHOD: a method (case-sensitive, as HTTP), a comma list of them, or '*' for any.
// - PATH-PATTERN: starts with '/'; segments between '/' are literal (compared exactly, not
//   decoded), `{name}` (one non-empty segment, captured), or a last `*` (any rest, also none).
//   A path with a "." or ".." segment matches no rule: the gateway may resolve it elsewhere.
// - PERMISSION: a catalog permission, or '-' for authentication only.
// - OBJECT-TEMPLATE: `type:...` whose `{name}`s are replaced by the captured segments.
// - The first rule that matches wins. The owner is never taken from a rule: it would be the
//   client's word (SPEC 6); send X-Tokend-Owner from the gateway's own data instead.
//
// Loading allocates; matching does not: captures are views into the path, the object is built in
// the caller's RouteMatch.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "daemon/http.h"

namespace tokend::daemon {

inline constexpr size_t kMaxRouteCaptures = 8;
inline constexpr size_t kMaxRouteObject = 128;

// What a matched rule asks. The views point into the rules or into `storage`.
struct RouteMatch {
  std::string_view permission;  // empty: authentication only
  std::string_view object;      // empty: none
  bool objectTooLong = false;   // the template's expansion did not fit: answer bad_request
  std::array<char, kMaxRouteObject> storage;
};

class RouteRules {
 public:
  // Parses a rules file's text. Errors name the line and the word: `line 3: unknown permission
  // "workspace:fly"`. `source` prefixes the message (the file name).
  static Result<RouteRules> parse(std::string_view text, std::string_view source = "rules");
  // Reads and parses FILE. Errors: the file cannot be read, or parse()'s.
  static Result<RouteRules> load(const std::string& path);

  bool empty() const { return rules_.empty(); }
  size_t size() const { return rules_.size(); }

  // Finds the first rule for `method` and `path` (without its query) and fills `out`. False
  // when none matches. Allocates nothing.
  bool match(std::string_view method, std::string_view path, RouteMatch& out) const;

 private:
  struct Segment {
    std::string literal;  // when capture < 0
    int capture = -1;     // index of the capture this segment fills
  };
  struct Piece {  // of the object template
    std::string literal;
    int capture = -1;
  };
  struct Rule {
    std::vector<std::string> methods;  // empty: any
    std::vector<Segment> segments;
    bool rest = false;  // the pattern ends in '*'
    std::string permission;
    std::vector<Piece> object;
  };
  std::vector<Rule> rules_;
};

// What applyRouteRules() did with a verify request.
enum class RouteOutcome : uint8_t {
  NotApplied,     // no rules, no forwarded request, or the gateway's headers named a permission
  Matched,        // a rule filled the permission (and the object, unless a header had)
  NoRule,         // a forwarded request no rule matches: authenticate, then deny (no_rule, 403)
  ObjectTooLong,  // the rule's object did not fit: bad_request
};

// Completes `query` (from extractVerifyQuery) with the first rule matching the forwarded request
// (forwardedRequest()). What the gateway set wins: a permission from a header (or the gateway's
// own query on /v1/verify) leaves the rules out; an object from there is kept. Allocates nothing;
// `query` may point into `match` afterwards.
RouteOutcome applyRouteRules(const RouteRules& rules, const HttpRequest& request,
                             VerifyQuery& query, RouteMatch& match);

}  // namespace tokend::daemon
