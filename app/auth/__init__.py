"""Identity: who is calling (`Principal`), their API keys (`KeyStore`), what they did (`AuditLog`) and how
often they may (`RateLimits`). `Authenticator` turns a request's bearer key into a `Principal`; the HTTP
layer resolves it once per request (`app.api.guards`) and every service takes it. docs/SECURITY.md has the
access model."""

from app.auth.principal import ROLES, Principal, Role

__all__ = ["ROLES", "Principal", "Role"]
