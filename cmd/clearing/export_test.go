package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
)

// TestMain of package main (cmd/clearing): one PostgreSQL for its tests.
func TestMain(m *testing.M) { pgtest.Main(m) }

// cliPeriod builds a settled period 202607 (河南 pays 北京 and 广东, 北京 pays
// 河南) and an open 202608 through the public clearingdb API, and returns the
// database URL and a key file.
func cliPeriod(t *testing.T) (url, keyFile string) {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t, migrations.Clearing)
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, time.July, 20, 10, 0, 0, 0, region.Shanghai)
	if _, err := st.FundPrepay(ctx, clearingdb.PrepayMovement{Province: "410000", Amount: money.MustParse("800.00"), Key: "f1"}, now); err != nil {
		t.Fatal(err)
	}
	outbox := map[string][]clearingdb.Record{}
	for i, u := range []struct{ payer, payee, amount string }{
		{"410000", "110000", "300.00"}, {"410000", "440000", "45.60"}, {"110000", "410000", "120.00"}, {"440000", "110000", "9.99"},
	} {
		r := clearingdb.Record{Kind: clearingdb.RecordUsage, UsageKey: fmt.Sprintf("%s-%03d", u.payee, i), UsageKind: "MEDICAL",
			PayerProvince: u.payer, PayerRegion: firstRegion(t, u.payer), PayeeProvince: u.payee, PayeeRegion: firstRegion(t, u.payee),
			Amount: u.amount, OccurredAt: now.Add(-time.Duration(i+1) * time.Hour),
			SharerRef: fmt.Sprintf("%032x", 1000+i), BeneficiaryRef: fmt.Sprintf("%032x", 2000+i), RelationshipID: fmt.Sprintf("R%d", i)}
		pr, pe := r, r
		pr.Role, pr.Seq = clearingdb.RolePayer, int64(len(outbox[u.payer])+1)
		outbox[u.payer] = append(outbox[u.payer], pr)
		pe.Role, pe.Seq = clearingdb.RolePayee, int64(len(outbox[u.payee])+1)
		outbox[u.payee] = append(outbox[u.payee], pe)
	}
	for prov, recs := range outbox {
		if ack, err := st.IngestBatch(ctx, prov, recs, now); err != nil || len(ack.Rejected) > 0 {
			t.Fatalf("ingest %s: %v %+v", prov, err, ack.Rejected)
		}
	}
	p, _ := region.ParsePeriod("202607")
	at := p.CutOff(st.Config().Settlement.CutOffGrace).Add(time.Hour)
	if _, err := st.ClosePeriod(ctx, p, at); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SettlePeriod(ctx, p, prepay.Config{}, at); err != nil {
		t.Fatal(err)
	}
	if _, err := st.EnsurePeriod(ctx, p.Next(), at); err != nil {
		t.Fatal(err)
	}
	keyFile = filepath.Join(t.TempDir(), "export.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("3c", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return db.URL, keyFile
}

func firstRegion(t *testing.T, province string) string {
	p, err := region.ParseProvince(province)
	if err != nil {
		t.Fatal(err)
	}
	return p.Regions[0].Code
}

// cli runs the clearing command line with args and returns its stdout.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := rootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestExportAndVerifyCommands drives `clearing export` and `clearing verify`
// as an operator and an auditor would.
func TestExportAndVerifyCommands(t *testing.T) {
	t.Parallel()
	url, key := cliPeriod(t)
	base := t.TempDir()
	nat := filepath.Join(base, "202607")
	common := []string{"--database-url", url, "--export-key-file", key}

	out, err := cli(t, append([]string{"export", "--period", "202607", "--out", nat, "--workbook"}, common...)...)
	if err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if !strings.Contains(out, "national bundle of 202607, 4 usages") || !strings.Contains(out, filepath.Join(base, "202607.xlsx")) {
		t.Errorf("export output:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(base, "202607.xlsx")); err != nil {
		t.Errorf("workbook beside the bundle: %v", err)
	}
	if out, err := cli(t, "verify", nat); err != nil || out != "ok\n" {
		t.Errorf("verify: %q, %v", out, err)
	}

	// Byte-identical second export.
	again := filepath.Join(base, "again")
	if _, err := cli(t, append([]string{"export", "--period", "202607", "--out", again}, common...)...); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"usages.csv", "gross.csv", "positions.csv", "allocation.csv", "instructions.csv", "prepay.csv", "manifest.json"} {
		a, _ := os.ReadFile(filepath.Join(nat, n))
		b, _ := os.ReadFile(filepath.Join(again, n))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two exports", n)
		}
	}

	// A province bundle, verified alone and against the national one.
	hn := filepath.Join(base, "202607-410000")
	if out, err := cli(t, append([]string{"export", "--period", "202607", "--out", hn, "--province", "410000"}, common...)...); err != nil ||
		!strings.Contains(out, "bundle of province 410000") {
		t.Fatalf("export --province: %v\n%s", err, out)
	}
	if out, err := cli(t, "verify", hn, "--national", nat); err != nil || out != "ok\n" {
		t.Errorf("verify province bundle: %q, %v", out, err)
	}
	if _, err := cli(t, "verify", nat, "--national", hn); err == nil {
		t.Error("--national on a national bundle must be refused")
	}

	// A changed amount: a difference naming the file, and a non-zero exit.
	pos := filepath.Join(nat, "positions.csv")
	b, _ := os.ReadFile(pos)
	if err := os.WriteFile(pos, bytes.Replace(b, []byte("410000,"), []byte("410000,1"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, "verify", nat)
	if err == nil || !strings.HasPrefix(out, "verify: positions.csv line ") {
		t.Errorf("verify of a changed bundle: %q, %v", out, err)
	}
	if _, err := cli(t, "verify", nat, "--journal-head", "xyz"); err == nil {
		t.Error("a malformed --journal-head must be refused")
	}

	// Refusals: an open period, an existing folder, a weak key.
	_, err = cli(t, append([]string{"export", "--period", "202608", "--out", filepath.Join(base, "open")}, common...)...)
	if err == nil || !strings.Contains(err.Error(), "OPEN") {
		t.Errorf("export of an open period: %v", err)
	}
	_, err = cli(t, append([]string{"export", "--period", "202607", "--out", nat}, common...)...)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("export into a full folder: %v", err)
	}
	weak := filepath.Join(t.TempDir(), "weak.key")
	if err := os.WriteFile(weak, []byte("abcd"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = cli(t, "export", "--period", "202607", "--out", filepath.Join(base, "weak"), "--database-url", url, "--export-key-file", weak)
	if err == nil || !strings.Contains(err.Error(), "32 bytes") || strings.Contains(err.Error(), "abcd") {
		t.Errorf("weak key: %v", err)
	}
}
