-- +goose Up
-- The clearing journal (DESIGN §3): every movement of money the clearing
-- service books (cleared obligations at close, their discharge and the
-- prepayment pool's movements at settlement, deposits, replenishments) is one
-- balanced entry. Entries are hash-chained with package ledger's functions
-- (hash = sha256(previous hash ‖ ledger.Canonical(entry))), numbered without
-- gaps from 1, and append-only: triggers refuse UPDATE, DELETE and TRUNCATE.
--
-- Appends are serialised by the single journal_head row, locked FOR UPDATE by
-- the appending transaction (clearingdb.appendJournal): the id and the
-- previous hash are read and advanced under that lock, so two transactions
-- can never chain onto the same predecessor.
--
-- Accounts (text keys; a posting moves its amount into its account):
--   clearing:receivable:<prov>  cleared net obligation a payer province owes the centre (<= 0)
--   clearing:payable:<prov>     cleared net amount the centre owes a receiver province (>= 0)
--   ext:bank, centre:pool, deposit:<prov>, receivable:<prov>, payable:<prov>
--                               the prepayment pool, as package prepay defines them
CREATE TABLE journal_entries (
    id   bigint PRIMARY KEY CHECK (id > 0),
    kind text NOT NULL CHECK (kind <> ''),
    -- the business key that caused the entry (period, period:province, movement key)
    ref  text NOT NULL,
    at   timestamptz NOT NULL,
    hash bytea NOT NULL CHECK (length(hash) = 32),
    -- one entry per movement: a retried step can never book twice
    UNIQUE (kind, ref)
);

CREATE TABLE journal_postings (
    entry_id bigint NOT NULL REFERENCES journal_entries (id),
    idx      integer NOT NULL CHECK (idx >= 0), -- order inside the entry (hashed)
    account  text NOT NULL CHECK (account <> '' AND length(account) <= 128),
    amount   numeric(18,2) NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, idx)
);
CREATE INDEX journal_postings_account ON journal_postings (account);

-- The end of the chain. last_id = 0 and an empty hash before the first entry.
CREATE TABLE journal_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id   bigint NOT NULL DEFAULT 0 CHECK (last_id >= 0),
    hash      bytea NOT NULL DEFAULT ''::bytea
);
INSERT INTO journal_head DEFAULT VALUES;

-- Cached balance of every account ever posted to, maintained by the append in
-- the same transaction; VerifyJournal recomputes it from the postings.
CREATE TABLE journal_balances (
    account text PRIMARY KEY,
    balance numeric(18,2) NOT NULL
);

-- +goose StatementBegin
CREATE FUNCTION journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the clearing journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'GJ010';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER journal_postings_append_only BEFORE UPDATE OR DELETE ON journal_postings
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER journal_postings_no_truncate BEFORE TRUNCATE ON journal_postings
    FOR EACH STATEMENT EXECUTE FUNCTION journal_append_only();

-- journal_balanced: after every INSERT statement on journal_postings, each
-- entry that statement posted to has at least two postings summing to zero
-- (defence in depth: the adapter validates every entry with package ledger
-- and inserts all postings of an append in one statement).
-- +goose StatementBegin
CREATE FUNCTION journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
BEGIN
    SELECT p.entry_id INTO bad
      FROM journal_postings p
     WHERE p.entry_id IN (SELECT DISTINCT n.entry_id FROM new_postings n)
     GROUP BY p.entry_id
    HAVING count(*) < 2 OR sum(p.amount) <> 0
     ORDER BY p.entry_id
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % is not balanced', bad USING ERRCODE = 'GJ011';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER journal_postings_balanced AFTER INSERT ON journal_postings
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION journal_balanced();

-- +goose Down
DROP TABLE journal_balances;
DROP TABLE journal_head;
DROP TABLE journal_postings;
DROP TABLE journal_entries;
DROP FUNCTION journal_balanced();
DROP FUNCTION journal_append_only();
