package clearingdb_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// TestCloseSplitsAgree closes the same 6,000 rows (all 32 provinces, their
// regions, 2 % reversals, every seventh late, some still one-sided) once per
// number of block ranges — 1 (one statement in the close transaction), 2, 3
// and 7 (more ranges than some blocks hold rows, so some ranges are empty) —
// and requires every close to equal the domain's settlement.Compute and to
// count the same usages, late usages and one-sided usages. The partition
// spans dozens of blocks, so the ranges really split it.
func TestCloseSplitsAgree(t *testing.T) {
	t.Parallel()
	b := opSetup(t)
	provinces := region.Provinces()
	rng := rand.New(rand.NewPCG(3, 9))
	rows := make([]settlement.Row, 6000)
	late := 0
	for i := range rows {
		pi := rng.IntN(len(provinces))
		ei := (pi + 1 + rng.IntN(len(provinces)-1)) % len(provinces)
		payer, payee := provinces[pi], provinces[ei]
		fen := 1 + rng.Int64N(200_000)
		if i > 0 && rng.IntN(50) == 0 {
			fen = -fen
		}
		rows[i] = settlement.Row{
			PayerProvince: payer.Code, PayerRegion: payer.Regions[rng.IntN(len(payer.Regions))].Code,
			PayeeProvince: payee.Code, PayeeRegion: payee.Regions[rng.IntN(len(payee.Regions))].Code,
			Amount: money.FromFen(fen),
		}
		if i%7 == 3 { // opCopyRows marks these late
			late++
		}
	}
	want := opRender(settlement.Compute(rows))

	p := opPeriod(t, "202001")
	for _, splits := range []int{1, 2, 3, 7} {
		t.Run(fmt.Sprintf("splits=%d", splits), func(t *testing.T) {
			p = p.Next()
			at := p.Start().Add(12 * 3600e9)
			opCopyRows(t, b, p, rows, at)
			var pages int64
			if err := b.db.Pool.QueryRow(b.ctx, fmt.Sprintf(`SELECT pg_relation_size('usages_p%d') / 8192`, p.Int())).Scan(&pages); err != nil {
				t.Fatal(err)
			}
			if pages < 20 {
				t.Fatalf("the partition has %d blocks: too few to split", pages)
			}
			// 17 usages still reported by one side only.
			tag, err := b.db.Pool.Exec(b.ctx, fmt.Sprintf(`UPDATE usages_p%d SET payee_reported = false
				WHERE entry_type = 'USAGE' AND usage_id IN (SELECT usage_id FROM usages_p%d WHERE entry_type = 'USAGE'
				ORDER BY usage_id LIMIT 17)`, p.Int(), p.Int()))
			if err != nil || tag.RowsAffected() != 17 {
				t.Fatalf("mark one-sided: %v (%d rows)", err, tag.RowsAffected())
			}
			st, err := b.store.ClosePeriod(clearingdb.WithCloseSplits(b.ctx, splits), p, opAfterCutOff(p))
			if err != nil {
				t.Fatal(err)
			}
			if got := opRender(opResult(t, b, p)); got != want {
				t.Errorf("close in %d ranges ≠ settlement.Compute:\n%s\nwant\n%s", splits, got, want)
			}
			if st.UsageCount != int64(len(rows)) || st.LateCount != int64(late) || st.OneSidedAtClose != 17 {
				t.Errorf("counted %d usages, %d late, %d one-sided; want %d, %d, 17",
					st.UsageCount, st.LateCount, st.OneSidedAtClose, len(rows), late)
			}
			opVerify(t, b)
		})
	}
}
