-- silo api, schema version 2: the tamper-evident audit trail and requested actions.
-- (docs/audit.md explains the design; never edit an applied migration.)
--
-- Roles. `silo_api_writer` (NOLOGIN) holds what `silo api` needs at run time: read/write on
-- its own tables, but only SELECT and INSERT on `audit_records` and only SELECT on
-- `audit_heads`. Give it to the API's login role (`GRANT silo_api_writer TO silo_api`) and run
-- migrations and `silo audit archive` as the owner (`api.database.ownerUrl`). Creating the
-- role needs CREATEROLE; without it the migration goes on (a notice) and the grants below are
-- skipped, leaving the append-only triggers as the only guard.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'silo_api_writer') THEN
        CREATE ROLE silo_api_writer NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'silo: cannot create role silo_api_writer (no CREATEROLE); grants skipped';
END
$$;

-- One hash chain per tenant root (`chain` = the root's name; '' for calls without a valid
-- token). `seq` counts from 1 in each chain; `prev_hash` is the previous record's `hash`
-- (32 zero bytes for seq 1); `hash` = SHA-256(prev_hash || canonical(record)), computed by
-- the BEFORE INSERT trigger below from what is stored, never taken from the client.
CREATE TABLE audit_records (
    id           bigserial PRIMARY KEY,
    chain        text NOT NULL,
    seq          bigint NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_token  text NOT NULL,
    actor_name   text NOT NULL DEFAULT '',
    tenant       text NOT NULL,
    path         text[] NOT NULL,
    action       text NOT NULL,
    target       text NOT NULL,
    summary      jsonb NOT NULL,
    status       integer NOT NULL,
    outcome      text NOT NULL,
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX audit_records_chain_id ON audit_records (chain, id);
CREATE INDEX audit_records_path ON audit_records USING gin (path);
-- GET /v1/tenants/{name}/audit reads newest first by (at, id): time windows, cursors and
-- the archive cut are index ranges.
CREATE INDEX audit_records_at ON audit_records (at, id);

-- The head of each chain: the last seq and hash. Appends lock the row (FOR UPDATE), so
-- appends to one chain are serialized across replicas and the operator; other chains do not
-- wait. `silo audit verify` compares it with the last record (a deleted tail is detected).
CREATE TABLE audit_heads (
    chain text PRIMARY KEY,
    seq   bigint NOT NULL,
    hash  bytea NOT NULL
);

-- One length-prefixed field of the canonical form: `<octets>:<text>;`.
CREATE FUNCTION silo_audit_field(t text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT octet_length(t)::text || ':' || t || ';' $$;

-- The canonical bytes of a record (also computed by `silo audit verify`, src/audit/chain.rs):
-- seq, chain, at (Unix microseconds), actor_token, actor_name, tenant, path joined by '/',
-- action, target, summary (jsonb text), status, outcome; each as silo_audit_field.
CREATE FUNCTION silo_audit_canonical(r audit_records) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
SELECT convert_to(
    silo_audit_field(r.seq::text) ||
    silo_audit_field(r.chain) ||
    silo_audit_field(((extract(epoch FROM r.at) * 1000000)::bigint)::text) ||
    silo_audit_field(r.actor_token) ||
    silo_audit_field(r.actor_name) ||
    silo_audit_field(r.tenant) ||
    silo_audit_field(array_to_string(r.path, '/')) ||
    silo_audit_field(r.action) ||
    silo_audit_field(r.target) ||
    silo_audit_field(r.summary::text) ||
    silo_audit_field(r.status::text) ||
    silo_audit_field(r.outcome),
    'UTF8')
$$;

-- Chains the new record: the chain is the first element of its path (the root; '' when
-- empty), then it locks the chain's head, takes the next seq and the head's hash,
-- stamps the time, computes the hash, moves the head. SECURITY DEFINER: the API's role
-- needs no right on audit_heads beyond SELECT.
CREATE FUNCTION silo_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_catalog AS $$
DECLARE
    h audit_heads;
BEGIN
    NEW.chain := coalesce(NEW.path[1], '');
    INSERT INTO audit_heads (chain, seq, hash)
        VALUES (NEW.chain, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (chain) DO NOTHING;
    SELECT * INTO h FROM audit_heads WHERE chain = NEW.chain FOR UPDATE;
    NEW.seq := h.seq + 1;
    NEW.prev_hash := h.hash;
    NEW.at := clock_timestamp();
    NEW.hash := sha256(NEW.prev_hash || silo_audit_canonical(NEW));
    UPDATE audit_heads SET seq = NEW.seq, hash = NEW.hash WHERE chain = NEW.chain;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_records_chain BEFORE INSERT ON audit_records
    FOR EACH ROW EXECUTE FUNCTION silo_audit_chain();

-- Append-only for everybody, the owner included: UPDATE, DELETE and TRUNCATE fail with
-- SQLSTATE SA001. Only `silo audit archive`, as the owner, disables this trigger inside its
-- transaction to remove records it has exported behind a signed checkpoint.
CREATE FUNCTION silo_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only: % refused', TG_OP
        USING ERRCODE = 'SA001',
              HINT = 'records are removed only by `silo audit archive` behind a signed checkpoint';
END
$$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION silo_audit_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION silo_audit_append_only();
CREATE TRIGGER audit_heads_append_only BEFORE DELETE OR TRUNCATE ON audit_heads
    FOR EACH STATEMENT EXECUTE FUNCTION silo_audit_append_only();

-- Requested actions: an operation (method, path, body) a caller lacked the permission for,
-- waiting for an admin of `tenant` or an ancestor (`path` = root … tenant). Decided at most
-- once: the decision is `UPDATE … WHERE status = 'Pending' RETURNING` in the transaction that
-- executes it.
CREATE TABLE api_requests (
    id               text PRIMARY KEY,
    status           text NOT NULL DEFAULT 'Pending'
        CHECK (status IN ('Pending', 'Approved', 'Declined', 'Expired', 'Failed')),
    tenant           text NOT NULL,
    path             text[] NOT NULL,
    method           text NOT NULL,
    uri              text NOT NULL,
    body             jsonb,
    permission       text,
    reason           text NOT NULL DEFAULT '',
    requester_token  text NOT NULL,
    requester_name   text NOT NULL DEFAULT '',
    requester_tenant text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    decided_by_token text,
    decided_by_name  text,
    decided_at       timestamptz,
    comment          text,
    outcome          jsonb
);
CREATE INDEX api_requests_requester ON api_requests (requester_token, created_at);
CREATE INDEX api_requests_path ON api_requests USING gin (path);
CREATE INDEX api_requests_pending ON api_requests (expires_at) WHERE status = 'Pending';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'silo_api_writer') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON api_tokens, api_creations, api_requests
            TO silo_api_writer;
        GRANT SELECT, INSERT ON audit_records TO silo_api_writer;
        GRANT SELECT ON audit_heads TO silo_api_writer;
        GRANT USAGE ON SEQUENCE audit_records_id_seq TO silo_api_writer;
        -- Tables of later migrations (devices, …) get the ordinary rights automatically.
        ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO silo_api_writer;
        ALTER DEFAULT PRIVILEGES GRANT USAGE ON SEQUENCES TO silo_api_writer;
    END IF;
END
$$;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM PUBLIC;
