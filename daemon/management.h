// The management API over HTTP (SPEC 8): Coder's REST paths for API keys and sessions, plus user
// administration, authenticated by the caller's token and authorised by its permissions.
//
// Rules: the caller's token must verify; acting on another user's tokens needs the `owner` role;
// each action needs the matching permission for the target user (api_key:create, :read, :update,
// :delete, checked with owner = the target user, so a member's owned api_key:* serves for their
// own tokens); only publicly requestable scopes may be granted, and only within the calling
// token's reach (its scopes, allow list and expiry; sessions only from a session or a full token:
// verifier/reach.h). User administration needs user:* permissions on the site (user-admin or
// owner); only an owner changes an owner, nobody suspends themselves, and the last active owner
// stays. Writes run on the worker that received them.
#pragma once

#include <string>

#include "daemon/http.h"
#include "daemon/service.h"
#include "verifier/manage.h"

namespace tokend::daemon {

class Management {
 public:
  Management(Service& service, verifier::Manager& manager) : service_(service), manager_(manager) {}

  // Answers one request whose path starts with /api/v2/.
  void handle(Service::Worker& worker, const HttpRequest& request, DecodeBuffer& scratch,
              std::string& out);

 private:
  Service& service_;
  verifier::Manager& manager_;
};

}  // namespace tokend::daemon
