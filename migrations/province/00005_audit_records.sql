-- +goose Up
-- The audit trail (issue #10): one row per call of a state-changing RPC of
-- this node (ProvinceService: registrations, enrollment changes, credits,
-- own spending, relationship commands, quotas, spends, reversals;
-- PeerService: debits, reversals, relayed commands and snapshots). Written
-- by internal/auditlog inside the transaction of the change it records, or in
-- a statement of its own for a call that committed nothing (refused at the
-- edge, failed, or a replay answered from the stored first answer). The same
-- table exists in the clearing database (migrations/clearing/00014).
--
--   actor      certificate identity of the caller: gongji:province:XX0000
--              (this province's own systems) or gongji:clearing; never a person
--   method     full gRPC method (/gongji.province.v1.ProvinceService/Spend)
--   request_id the caller's x-request-id (forwarded by the switch, so a
--              cross-province usage has one request id at both nodes and
--              the clearing service), or one generated for the call
--   outcome    ok | replayed | refused: <reason> | <gRPC code>[: <reason>]
--   ref        usage or reversal key, relationship id, movement key,
--              person_ref (HMAC, never the ID number); NULL when none
--
-- Append-only: UPDATE, DELETE and TRUNCATE are refused by trigger.
CREATE TABLE audit_records (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text NOT NULL CHECK (actor <> '' AND length(actor) <= 128),
    method     text NOT NULL CHECK (method <> '' AND length(method) <= 128),
    request_id text NOT NULL CHECK (request_id <> '' AND length(request_id) <= 128),
    outcome    text NOT NULL CHECK (outcome <> '' AND length(outcome) <= 256),
    ref        text CHECK (ref <> '' AND length(ref) <= 128)
);
CREATE INDEX audit_records_request_id ON audit_records (request_id);
-- Rows arrive in time order: BRIN keeps the spend path's extra insert cheap.
CREATE INDEX audit_records_at ON audit_records USING brin (at);

-- +goose StatementBegin
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();

-- +goose Down
DROP TABLE audit_records;
DROP FUNCTION audit_records_append_only();
