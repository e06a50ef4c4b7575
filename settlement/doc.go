// Package settlement holds the clearing rules of gongji: clearing periods and
// their lifecycle (R14), the gross matrix, multilateral netting and the
// allocation down to pooling regions (R15), tiered settlement instructions
// (R16), statements, confirmation and disputes (R17), and the field-by-field
// reconciliation of the payer's and the payee's reports of one usage.
//
// The package is pure: no SQL, no transport, no logging, no clock. The clearing
// database adapter computes the heavy aggregates with PostgreSQL set operations;
// this package defines the types it fills, the rules it must follow, and a
// reference implementation (Compute) that both this package's tests and the
// adapter's tests compare against. CheckResult verifies the invariants of any
// Result, whoever computed it, and names the first violation.
//
// Everything here follows DESIGN §11 "Meaning" exactly, so that an auditor can
// recompute an export bundle from usages.csv alone:
//
//   - gross[payer][payee] = Σ amount over the period's rows for that province
//     pair; only non-zero pairs are listed, sorted by (payer, payee).
//   - receivable(p) = Σ gross[·][p], payable(p) = Σ gross[p][·],
//     net(p) = receivable − payable, for all 32 provincial units sorted by
//     code; the nets sum to exactly 0.00.
//   - region rows are the same sums by payee_region / payer_region, for every
//     pooling region named by at least one row of the period ("any movement",
//     even when its sums cancel to zero), sorted by (province, region).
//   - instructions: tier NATIONAL (province ↔ 000000) and tier PROVINCE
//     (region ↔ its province XX0000), the payer in from_code; zero nets get
//     none; sorted by (tier, from_code, to_code).
//
// Defaults (DESIGN §8) live in Config: cut-off 5 days after month end,
// confirmation window 10 days after the statement is issued.
package settlement
