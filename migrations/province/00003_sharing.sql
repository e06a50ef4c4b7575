-- +goose Up
-- Relationships, usages, reversals and command idempotency (R3–R13).

-- authority = true: this node holds the sharer and the quota (the sharer's
-- province); false: a replica of a relationship whose beneficiary is here,
-- updated by version from snapshots the authority pushes.
CREATE TABLE relationships (
    id                   text PRIMARY KEY CHECK (id ~ '^R[0-9a-f]{24}$'),
    authority            boolean NOT NULL,
    sharer_ref           text NOT NULL CHECK (sharer_ref ~ '^[0-9a-f]{32}$'),
    sharer_province      text NOT NULL CHECK (sharer_province ~ '^[0-9]{2}0000$'),
    sharer_region        text NOT NULL CHECK (sharer_region ~ '^[0-9]{6}$'),
    beneficiary_ref      text NOT NULL CHECK (beneficiary_ref ~ '^[0-9a-f]{32}$'),
    beneficiary_province text NOT NULL CHECK (beneficiary_province ~ '^[0-9]{2}0000$'),
    relation             text NOT NULL CHECK (relation IN ('SPOUSE', 'PARENT', 'CHILD', 'SIBLING',
                             'GRANDPARENT_PATERNAL', 'GRANDPARENT_MATERNAL', 'GRANDCHILD_PATERNAL', 'GRANDCHILD_MATERNAL')),
    proposed_by          text NOT NULL CHECK (proposed_by IN ('SHARER', 'BENEFICIARY')),
    status               text NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'DECLINED', 'EXPIRED', 'DISSOLVED')),
    dissolve_reason      text CHECK (dissolve_reason IN ('VOLUNTARY_SHARER', 'VOLUNTARY_BENEFICIARY', 'TRANSFER',
                             'SUSPENSION', 'TERMINATION', 'DEATH', 'ACCOUNT_LOST')),
    quota                numeric(18,2) NOT NULL CHECK (quota >= 0),
    used                 numeric(18,2) NOT NULL CHECK (used >= 0 AND used <= quota),
    returned             numeric(18,2) NOT NULL CHECK (returned >= 0),
    version              bigint NOT NULL CHECK (version >= 1),
    proposed_at          timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    activated_at         timestamptz,
    ended_at             timestamptz,
    updated_at           timestamptz NOT NULL,
    CONSTRAINT relationships_not_self CHECK (sharer_ref <> beneficiary_ref),
    CONSTRAINT relationships_reason CHECK ((status = 'DISSOLVED') = (dissolve_reason IS NOT NULL)),
    CONSTRAINT relationships_ended CHECK ((status IN ('PENDING', 'ACTIVE')) = (ended_at IS NULL))
);
-- R3: one live relationship per ordered pair, enforced where the pair is
-- decided (the authority; a lagging replica must not block a newer one).
CREATE UNIQUE INDEX relationships_one_live_pair ON relationships (sharer_ref, beneficiary_ref)
    WHERE authority AND status IN ('PENDING', 'ACTIVE');
CREATE INDEX relationships_sharer ON relationships (sharer_ref, id);
CREATE INDEX relationships_beneficiary ON relationships (beneficiary_ref, id);
CREATE INDEX relationships_pending_expiry ON relationships (expires_at, id) WHERE authority AND status = 'PENDING';

-- A usage key's answer: approved (with its journal entry) or refused (with
-- the reason); both are replayed to a retry with the same request hash (R11).
CREATE TABLE usages (
    usage_key       text PRIMARY KEY CHECK (length(usage_key) BETWEEN 1 AND 128),
    request_hash    bytea NOT NULL CHECK (length(request_hash) = 32),
    role            text NOT NULL CHECK (role IN ('LOCAL', 'PAYER', 'PAYEE')),
    approved        boolean NOT NULL,
    refusal         text CHECK (refusal IN ('QUOTA_EXCEEDED', 'NOT_ACTIVE', 'SHARER_INACTIVE', 'NO_PERSONAL_ACCOUNT')),
    relationship_id text NOT NULL CHECK (relationship_id ~ '^R[0-9a-f]{24}$'),
    kind            text NOT NULL CHECK (kind IN ('MEDICAL', 'PHARMACY', 'RESIDENT_PREMIUM', 'LTC_PREMIUM')),
    amount          numeric(18,2) NOT NULL CHECK (amount > 0),
    reversed        numeric(18,2) NOT NULL DEFAULT 0 CHECK (reversed >= 0 AND reversed <= amount),
    -- The relationship's remaining quota right after the answer (at the
    -- authority; a payee record keeps the payer's figure): part of the answer
    -- a retry gets back.
    quota_remaining numeric(18,2) NOT NULL CHECK (quota_remaining >= 0),
    payer_province  text NOT NULL CHECK (payer_province ~ '^[0-9]{2}0000$'),
    payer_region    text NOT NULL CHECK (payer_region ~ '^[0-9]{6}$'),
    payee_province  text NOT NULL CHECK (payee_province ~ '^[0-9]{2}0000$'),
    payee_region    text NOT NULL CHECK (payee_region ~ '^[0-9]{6}$'),
    sharer_ref      text NOT NULL,
    beneficiary_ref text NOT NULL,
    cross_province  boolean NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    entry_id        bigint REFERENCES journal_entries (id),
    CONSTRAINT usages_answer CHECK (approved = (refusal IS NULL) AND approved = (entry_id IS NOT NULL)),
    CONSTRAINT usages_refused_not_reversed CHECK (approved OR reversed = 0),
    CONSTRAINT usages_cross CHECK (cross_province = (payer_province <> payee_province))
);
CREATE INDEX usages_relationship ON usages (relationship_id, usage_key) WHERE approved;

CREATE TABLE reversals (
    reversal_key text PRIMARY KEY CHECK (length(reversal_key) BETWEEN 1 AND 128),
    request_hash bytea NOT NULL CHECK (length(request_hash) = 32),
    usage_key    text NOT NULL REFERENCES usages (usage_key),
    role         text NOT NULL CHECK (role IN ('LOCAL', 'PAYER', 'PAYEE')),
    amount       numeric(18,2) NOT NULL CHECK (amount > 0),
    -- The answer as given, for replay: the usage's reversals up to and
    -- including this one, and the remaining quota right after it.
    reversed_total  numeric(18,2) NOT NULL CHECK (reversed_total >= amount),
    quota_remaining numeric(18,2) NOT NULL CHECK (quota_remaining >= 0),
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL,
    entry_id     bigint NOT NULL REFERENCES journal_entries (id)
);
CREATE INDEX reversals_usage ON reversals (usage_key);

-- Idempotency of commands (proposals, relationship commands, credits, own
-- spending): the first successful answer, replayed to a retry with the same
-- request hash. Keys are scoped by the province that issued them.
CREATE TABLE commands (
    origin_province text NOT NULL CHECK (origin_province ~ '^[0-9]{2}0000$'),
    command_key     text NOT NULL CHECK (length(command_key) BETWEEN 1 AND 128),
    kind            text NOT NULL,
    request_hash    bytea NOT NULL CHECK (length(request_hash) = 32),
    result          jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (origin_province, command_key)
);

-- +goose Down
DROP TABLE commands;
DROP TABLE reversals;
DROP TABLE usages;
DROP TABLE relationships;
