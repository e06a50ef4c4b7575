// Package audit writes the audit export bundle of one closed clearing period
// (DESIGN §11): six CSV files and a manifest.json that auditors and other tools
// read, plus an .xlsx workbook for operators. The independent verifier lives in
// audit/verify and shares no code with this package.
//
// # Guarantees
//
//   - Streaming: rows arrive from a Source through callbacks and go straight to
//     disk. Memory is bounded by the code lists (32 provinces, 387 pooling
//     regions, at most 32×31 province pairs), never by the number of usages.
//   - Deterministic: rows must arrive sorted by their key columns (the writer
//     refuses anything else, it never sorts), every value has one canonical
//     text, and generated_at is the period's close time, so two exports of the
//     same period are byte-identical.
//   - Checked before it is written: every row is validated, and WriteBundle
//     recomputes the gross matrix, positions, region allocation, instructions
//     and the derived prepayment columns from the usages it streamed and
//     refuses a Source whose figures disagree (ErrControl). A bundle that
//     WriteBundle produced therefore passes verify.Verify.
//   - Atomic: the files are written into a hidden staging folder next to dir,
//     synced, and the folder is renamed to dir at the end. A crash leaves a
//     ".NAME.partial-*" folder, never a dir that looks complete.
//
// # Canonical formatting (the contract the clearing database's COPY must meet)
//
// A Source may hand over any file's body rows pre-formatted (RawSource), for
// example from PostgreSQL's COPY (SELECT …) TO STDOUT WITH (FORMAT csv). The
// writer then writes its own header line, and checks every body line by parsing
// it and formatting it again: a line that is not byte-for-byte canonical is
// refused with ErrNotCanonical, naming the line and showing want and got. The
// canonical form is:
//
//   - UTF-8, no BOM; every line, the last included, ends in a single "\n"
//     (COPY TO STDOUT always uses "\n"); no "\r" anywhere; no header in the
//     body (HEADER false), the writer writes it.
//   - Fields separated by ","; RFC 4180 minimal quoting: a field is wrapped in
//     double quotes only when it contains ',' or '"', and an inner '"' is
//     doubled. PostgreSQL's CSV output does exactly this, except that it
//     writes a non-NULL empty string as "" — so an absent value (reversal_of of
//     a USAGE) must be NULL, never the empty string.
//   - amounts: a plain decimal with exactly two places, '-' for negatives, no
//     '+', no leading zeros, no exponent, never "-0.00": 12.30, -15.71, 0.00.
//     A NUMERIC(18,2) column cast to text prints exactly this (amount::text);
//     for BIGINT fen use (amount_fen::numeric / 100)::numeric(18,2)::text.
//   - codes (province, region, from_code/to_code): six ASCII digits; a text
//     or char(6) column as is, an integer column as lpad(code::text, 6, '0').
//   - setlym: six digits YYYYMM (setlym::text, or lpad for an integer).
//   - occurred_at: RFC 3339 in Asia/Shanghai with the literal offset +08:00,
//     whole seconds, fractions truncated (not rounded):
//     to_char(occurred_at AT TIME ZONE 'Asia/Shanghai',
//     'YYYY-MM-DD"T"HH24:MI:SS') || '+08:00'. The default timestamptz output
//     ("2026-07-31 17:51:40+08") is NOT accepted.
//   - booleans (late, warning): the words true and false:
//     CASE WHEN late THEN 'true' ELSE 'false' END. COPY's own t/f is refused.
//   - usage_id, reversal_of: 1 to 128 bytes of UTF-8 with no control
//     characters (so no line breaks), and never a resident ID number.
//   - sharer_ref, beneficiary_ref: lowercase hex, 32 characters (Pseudonym) or
//     64 (a full HMAC-SHA256, as in the example bundle).
//   - Order: strictly ascending by the file's key columns in byte order, so
//     ORDER BY … COLLATE "C" (the database's default collation may sort
//     differently): usages by usage_id; gross by payer_province,
//     payee_province; positions and prepay by province_code; allocation by
//     province_code, region_code; instructions by tier, from_code, to_code.
//   - The session's client_encoding must be UTF8.
//
// COPY does not accept bind parameters, so the period is spliced into the
// statement as a validated six-digit integer. A complete usages query, for the
// clearing database's usages table (migrations/clearing):
//
//	COPY (
//	  SELECT usage_id, setlym::text, entry_type, kind,
//	         payer_province, payer_region, payee_province, payee_region,
//	         amount::text,
//	         to_char(occurred_at AT TIME ZONE 'Asia/Shanghai',
//	                 'YYYY-MM-DD"T"HH24:MI:SS') || '+08:00',
//	         CASE WHEN late THEN 'true' ELSE 'false' END,
//	         reversal_of, sharer_ref, beneficiary_ref
//	  FROM usages WHERE setlym = 202607
//	  ORDER BY usage_id COLLATE "C"
//	) TO STDOUT WITH (FORMAT csv, HEADER false)
//
// copy_pg_test.go runs exactly this kind of statement against a real
// PostgreSQL and checks that its output passes the canonical check.
package audit
