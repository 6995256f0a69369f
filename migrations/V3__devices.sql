-- silo api, schema version 3: the device registry (devices on master channels).
-- V2 (audit) is added by another change; refinery applies V2 then V3 on a fresh database.
-- Never edit an applied migration: add V4__….sql instead.

-- One row per registered device. Nothing secret is stored: a password device's password is
-- only in the broker's dynamic-security plugin (as its own salted PBKDF2 hash); a certificate
-- device's key was returned once and only the certificate's serial and SHA-256 fingerprint
-- are kept here.
CREATE TABLE devices (
    tenant          text NOT NULL,
    id              text NOT NULL,
    channel         text NOT NULL,
    auth            text NOT NULL CHECK (auth IN ('password', 'certificate')),
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The tenant and its ancestors, root first, at registration (a tenant's parent never
    -- changes: the admission webhook refuses it). Limits of every ancestor count these rows.
    path            text[] NOT NULL,
    -- The MQTT username / dynamic-security client and role name: <tenant>.<id>.
    username        text NOT NULL UNIQUE,
    enabled         boolean NOT NULL DEFAULT true,
    -- Why the device is disabled (`disabled by <token>`, …); null while enabled.
    disabled_reason text,
    cert_serial     text,
    cert_sha256     text,
    cert_not_after  timestamptz,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    credentials_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
-- "devices of X's subtree" = rows whose path contains X.
CREATE INDEX devices_path ON devices USING gin (path);
CREATE INDEX devices_channel ON devices (channel);
