-- silo api, schema version 1: API tokens and the creation ledger.
-- Applied by `silo api` / `silo token create` at start-up (refinery, under a PostgreSQL
-- advisory lock so that two replicas starting at once apply it once). Never edit an applied
-- migration: add V2__….sql instead.

-- API tokens: only the SHA-256 of the secret is stored; revocation and expiry are read on
-- every request, so they take effect at once on every replica.
CREATE TABLE api_tokens (
    id          text PRIMARY KEY,
    secret_hash bytea NOT NULL,
    tenant      text NOT NULL,
    role        text NOT NULL,
    name        text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant);

-- Creations admitted by any replica, kept for a minute: a replica whose watch has not seen
-- another replica's new Tenant or Channel yet counts it from here (race-free limits across
-- replicas; the admission webhook remains the last word).
CREATE TABLE api_creations (
    kind       text NOT NULL,
    name       text NOT NULL,
    at_tenant  text NOT NULL,
    object     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
CREATE INDEX api_creations_at ON api_creations (at_tenant, created_at);
