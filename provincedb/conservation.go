package provincedb

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"gongji/sharing"
)

// violationsMax bounds how many offending rows each check reports.
const violationsMax = 5

// conservationChecks are the invariants of sharing.Service.CheckConservation,
// each a query returning one descriptive text per violating row (none when
// the invariant holds).
var conservationChecks = []struct{ name, sql string }{
	{"entry not balanced", `
		SELECT format('entry %s (%s %s): %s postings summing to %s', e.id, e.kind, e.ref, count(p.entry_id), coalesce(sum(p.amount), 0))
		FROM journal_entries e LEFT JOIN journal_postings p ON p.entry_id = e.id
		GROUP BY e.id HAVING count(p.entry_id) < 2 OR coalesce(sum(p.amount), 0) <> 0
		ORDER BY e.id LIMIT $1`},
	{"cached balance differs from postings", `
		SELECT format('%s: cached %s, postings %s', a.name, a.balance, coalesce(s.total, 0))
		FROM accounts a LEFT JOIN (SELECT account, sum(amount) AS total FROM journal_postings GROUP BY account) s
		  ON s.account = a.name
		WHERE a.balance <> coalesce(s.total, 0)
		ORDER BY a.name LIMIT $1`},
	{"negative personal or quota balance", `
		SELECT format('%s: %s', name, balance) FROM accounts
		WHERE (name LIKE 'person:%' OR name LIKE 'quota:%') AND balance < 0
		ORDER BY name LIMIT $1`},
	{"balances do not sum to zero", `
		SELECT format('sum of all balances is %s', sum(balance)) FROM accounts
		HAVING sum(balance) <> 0 LIMIT $1`},
	{"quota account differs from the relationship", `
		SELECT format('%s %s: quota %s, used %s, returned %s, quota account %s', r.id, r.status, r.quota, r.used,
		              r.returned, coalesce(a.balance::text, 'missing'))
		FROM relationships r LEFT JOIN accounts a ON a.name = 'quota:' || r.id
		WHERE r.authority AND (a.name IS NULL
		   OR (r.status IN ('PENDING', 'ACTIVE') AND (a.balance <> r.quota - r.used OR r.returned <> 0))
		   OR (r.status NOT IN ('PENDING', 'ACTIVE') AND (a.balance <> 0 OR r.returned <> r.quota - r.used)))
		ORDER BY r.id LIMIT $1`},
	{"used differs from usages minus reversals", `
		SELECT format('%s: used %s, usages net of reversals %s', r.id, r.used, coalesce(u.net, 0))
		FROM relationships r LEFT JOIN (
		    SELECT relationship_id, sum(amount - reversed) AS net FROM usages
		    WHERE approved AND role <> 'PAYEE' GROUP BY relationship_id) u ON u.relationship_id = r.id
		WHERE r.authority AND r.used <> coalesce(u.net, 0)
		ORDER BY r.id LIMIT $1`},
	{"usage reversed total differs from its reversals", `
		SELECT format('usage %s: reversed %s, reversals %s', u.usage_key, u.reversed, coalesce(v.total, 0))
		FROM usages u LEFT JOIN (SELECT usage_key, sum(amount) AS total FROM reversals GROUP BY usage_key) v
		  ON v.usage_key = u.usage_key
		WHERE u.reversed <> coalesce(v.total, 0)
		ORDER BY u.usage_key LIMIT $1`},
	{"payout or clearing account differs from usages", `
		WITH expected AS (
		    SELECT 'due:clearing' AS name, coalesce(sum(amount - reversed), 0) AS want
		    FROM usages WHERE approved AND role = 'PAYER'
		    UNION ALL
		    SELECT 'due:from_clearing', coalesce(sum(amount - reversed), 0)
		    FROM usages WHERE approved AND role = 'PAYEE'
		    UNION ALL
		    SELECT 'ext:paid:' || k.kind, coalesce(sum(CASE u.role WHEN 'LOCAL' THEN u.amount - u.reversed
		                                                        WHEN 'PAYEE' THEN u.reversed - u.amount ELSE 0 END), 0)
		    FROM unnest(ARRAY['MEDICAL', 'PHARMACY', 'RESIDENT_PREMIUM', 'LTC_PREMIUM']) AS k(kind)
		    LEFT JOIN usages u ON u.kind = k.kind AND u.approved
		    GROUP BY k.kind)
		SELECT format('%s: balance %s, usages say %s', e.name, a.balance, e.want)
		FROM expected e JOIN accounts a ON a.name = e.name
		WHERE a.balance <> e.want
		ORDER BY e.name LIMIT $1`},
}

// CheckConservation implements sharing.Store: every check of
// conservationChecks in one read-only REPEATABLE READ snapshot. It returns an
// error wrapping sharing.ErrConservation that lists up to violationsMax
// offending rows per failed check.
func (s *Store) CheckConservation(ctx context.Context) error {
	var found []string
	err := s.readTx(ctx, "check conservation", func(tx pgx.Tx) error {
		for _, c := range conservationChecks {
			rows, err := tx.Query(ctx, c.sql, violationsMax)
			if err != nil {
				return fmt.Errorf("provincedb: conservation check %q: %w", c.name, err)
			}
			for rows.Next() {
				var d string
				if err := rows.Scan(&d); err != nil {
					rows.Close()
					return err
				}
				found = append(found, c.name+": "+d)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(found) > 0 {
		return fmt.Errorf("%w: %s", sharing.ErrConservation, strings.Join(found, "; "))
	}
	return nil
}
