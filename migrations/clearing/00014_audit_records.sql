-- +goose Up
-- The audit trail (issue #10): one row per call of a state-changing RPC
-- (SwitchService, ReportingService per acknowledged batch, StatementService
-- answers, AdminService operations) and per state-changing `clearing`
-- operator command. Written by internal/auditlog inside the transaction of
-- the change it records (the same statement as the switch log row for a
-- routed call), or in a statement of its own for a call that committed
-- nothing (refused, failed). The same table exists in every province node's
-- database (migrations/province/00005_audit_records.sql).
--
--   actor      certificate identity (gongji:province:410000, gongji:operator)
--              or operator-cli:<os user>; never a person
--   method     full gRPC method (/gongji.clearing.v1.AdminService/ClosePeriod)
--              or command path (clearing period close)
--   request_id the caller's x-request-id, or one generated for the call
--   outcome    ok | replayed | refused: <reason> | <gRPC code>[: <reason>] | error: <message>
--   ref        what the call acted on: usage key, relationship id, period,
--              movement key, report batch; NULL when nothing is named
--
-- Append-only: UPDATE, DELETE and TRUNCATE are refused by trigger (the owner
-- of a table cannot have those privileges revoked from itself).
CREATE TABLE audit_records (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text NOT NULL CHECK (actor <> '' AND length(actor) <= 128),
    method     text NOT NULL CHECK (method <> '' AND length(method) <= 128),
    request_id text NOT NULL CHECK (request_id <> '' AND length(request_id) <= 128),
    outcome    text NOT NULL CHECK (outcome <> '' AND length(outcome) <= 256),
    ref        text CHECK (ref <> '' AND length(ref) <= 128)
);
-- Finding every row of one request across the federation's databases.
CREATE INDEX audit_records_request_id ON audit_records (request_id);
-- Time ranges: rows arrive in time order, so a BRIN index is enough and
-- costs the hot paths (the switch, report ingest) almost nothing.
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
