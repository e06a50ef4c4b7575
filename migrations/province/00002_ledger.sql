-- +goose Up
-- People and the double-entry journal of personal-account money
-- (docs/architecture.md "Province node money"; DESIGN §3).

-- A person of this province. Only the pseudonym (person_ref, HMAC of the ID
-- number) and a masked ID are stored; the CHECK on masked_id makes storing a
-- clear ID number impossible.
CREATE TABLE persons (
    person_ref    text PRIMARY KEY CHECK (person_ref ~ '^[0-9a-f]{32}$'),
    masked_id     text NOT NULL CHECK (masked_id ~ '^[0-9]{4}\*{10}[0-9]{3}[0-9X]$'),
    province_code text NOT NULL CHECK (province_code ~ '^[0-9]{2}0000$'),
    region_code   text NOT NULL CHECK (region_code ~ '^[0-9]{6}$' AND left(region_code, 2) = left(province_code, 2)),
    scheme        text NOT NULL CHECK (scheme IN ('EMPLOYEE', 'RESIDENT')),
    mode          text NOT NULL CHECK (mode IN ('POOLED_WITH_ACCOUNT', 'POOLING_ONLY')),
    status        text NOT NULL CHECK (status IN ('ACTIVE', 'SUSPENDED', 'TERMINATED', 'DECEASED')),
    insured       boolean NOT NULL,
    version       bigint NOT NULL CHECK (version >= 1),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT persons_resident_no_account CHECK (scheme = 'EMPLOYEE' OR mode = 'POOLING_ONLY')
);

-- Accounts with cached balances (the sum of their postings; checked by the
-- conservation check). Personal and quota accounts can never go negative.
CREATE TABLE accounts (
    name    text PRIMARY KEY CHECK (name ~ '^(ext:funding|ext:paid:[A-Z_]+|due:clearing|due:from_clearing|person:[0-9a-f]{32}|quota:R[0-9a-f]{24})$'),
    balance numeric(18,2) NOT NULL DEFAULT 0,
    CONSTRAINT accounts_not_negative CHECK (balance >= 0 OR (name NOT LIKE 'person:%' AND name NOT LIKE 'quota:%'))
);

INSERT INTO accounts (name) VALUES
    ('ext:funding'), ('due:clearing'), ('due:from_clearing'), ('ext:paid:OWN'),
    ('ext:paid:MEDICAL'), ('ext:paid:PHARMACY'), ('ext:paid:RESIDENT_PREMIUM'), ('ext:paid:LTC_PREMIUM');

CREATE TABLE journal_entries (
    id   bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind <> ''),
    ref  text NOT NULL,
    at   timestamptz NOT NULL
);

CREATE TABLE journal_postings (
    entry_id bigint NOT NULL REFERENCES journal_entries (id),
    idx      smallint NOT NULL CHECK (idx >= 0),
    account  text NOT NULL REFERENCES accounts (name),
    amount   numeric(18,2) NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, idx)
);
CREATE INDEX journal_postings_account ON journal_postings (account);

-- Backstop for the application's ledger.Validate: at commit, every entry has
-- at least two postings and they sum to zero.
-- +goose StatementBegin
CREATE FUNCTION journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    eid bigint;
    n   bigint;
    s   numeric;
BEGIN
    IF TG_TABLE_NAME = 'journal_entries' THEN
        eid := NEW.id;
    ELSE
        eid := NEW.entry_id;
    END IF;
    SELECT count(*), coalesce(sum(amount), 0) INTO n, s FROM journal_postings WHERE entry_id = eid;
    IF n < 2 OR s <> 0 THEN
        RAISE EXCEPTION 'journal entry % is not balanced (% postings, sum %)', eid, n, s
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_entry_balanced';
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER journal_entries_balanced AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_entry_balanced();
CREATE CONSTRAINT TRIGGER journal_postings_balanced AFTER INSERT ON journal_postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_entry_balanced();

-- The journal is append-only: a correction is a new (reversing) entry.
-- +goose StatementBegin
CREATE FUNCTION journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER journal_postings_append_only BEFORE UPDATE OR DELETE ON journal_postings
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();

-- +goose Down
DROP TABLE journal_postings;
DROP TABLE journal_entries;
DROP FUNCTION journal_append_only();
DROP FUNCTION journal_entry_balanced();
DROP TABLE accounts;
DROP TABLE persons;
