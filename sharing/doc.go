// Package sharing is a province node's domain: people, personal accounts,
// sharing relationships (共济关系), earmarked quotas (共济额度), usages and
// reversals — rules R1–R13 of DESIGN §2, as pure functions and methods with
// sentinel errors, plus the Service that validates requests and routes them to
// the authority. It imports no transport or storage package; provincedb
// implements Store, OutboxReader and RelayQueue, and the gRPC layer maps
// requests to Service calls and errors to codes (errors.Is on the sentinels of
// errors.go).
//
// Decisions recorded here (where DESIGN and docs/architecture.md are silent):
//
//   - Authority. The sharer's node decides everything about a relationship
//     (state, quota, usage). A command issued elsewhere (Origin ≠ this node)
//     is forwarded through Remote and the answer kept as a replica; a command
//     is accepted only from the province of the side that acts.
//   - Replicas. The beneficiary's node holds a replica updated by version
//     from relay snapshots. Usages do not bump the version (that would relay a
//     message per usage), so a replica's Used lags; the payer's answers carry
//     the remaining quota. A replica is never spent on: a payee asks the
//     payer (Debit) even when its replica looks inactive.
//   - Refusals are answers. A usage refused by the authority (quota, not
//     active) is recorded under its key and replayed to a retry (R11), so an
//     answer never changes once given; a new attempt needs a new key. Checks
//     that come before the authority — field validation and the beneficiary's
//     eligibility (R10), which only the beneficiary's node can judge — write
//     nothing and are re-evaluated on a retry.
//   - R10 on the payer side. The payer cannot see the beneficiary's
//     enrollment; it trusts the payee node's check, relayed by the switch.
//   - Quota lifecycle. A quota exists only on an ACTIVE relationship (R8).
//     Once a relationship has ended, a reversal of one of its usages goes
//     straight back to the sharer's personal account, as the rest of the
//     unused quota did at dissolution (R7); Returned records both.
//   - Enrollment changes (R6) end every live relationship, PENDING included.
//     A beneficiary whose relationship's authority is in another province
//     gets a durable DISSOLVE command in the relay queue, written in the same
//     transaction as the change: R6's "same transaction" can only hold for
//     the data this node owns. Reactivation or gaining an account is not an
//     R6 trigger. A move to another province is recorded here as TERMINATED
//     (or the TRANSFER event with the full new state).
//   - Proposals expire at ProposalTTL (7 days): consent, decline and
//     withdrawal at or after expiry are ErrExpired; the sweeper
//     (ExpireProposals) moves them to EXPIRED. Automatic dissolution still
//     ends an expired-but-unswept proposal.
//   - Times are normalised to UTC microseconds (Timestamp) before they are
//     stored or hashed, so a replayed answer read back from PostgreSQL is
//     identical to the first.
//   - Money never uses == : money.Yuan holds a big.Int, so compare amounts
//     with Equal and whole values by their JSON form.
//
// Journal (accounts.go): at a payee node a cross-province usage books
// ext:paid:<KIND> → due:from_clearing, i.e. a payable to the province's own
// institution (−) against the receivable from the clearing centre (+). At the
// payer, quota → due:clearing leaves due:clearing ≥ 0 (the value handed to
// the clearing centre); docs/architecture.md lists its "normal sign" as ≤ 0,
// which cannot hold with balanced entries that move money out of a quota.
package sharing
