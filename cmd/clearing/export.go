package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shopspring/decimal"
	"github.com/spf13/cobra"

	"gongji/audit"
	"gongji/audit/verify"
	"gongji/clearingdb"
	"gongji/config"
	"gongji/region"
)

// workbookAuto is the value of a bare --workbook: the workbook goes beside
// the bundle folder, named after the period (and province).
const workbookAuto = "auto"

type exportFlags struct {
	period, out, databaseURL, exportKeyFile, workbook, province, threshold string
}

func exportCmd() *cobra.Command {
	var f exportFlags
	cmd := &cobra.Command{
		Use:   "export --period YYYYMM --out DIR",
		Short: "write the audit export bundle of a closed and settled period (DESIGN §11)",
		Long: "export writes the audit bundle of one clearing period into DIR: usages.csv, gross.csv, positions.csv,\n" +
			"allocation.csv, instructions.csv, prepay.csv and manifest.json (DESIGN §11). DIR must not exist or be\n" +
			"empty; the bundle is written into a hidden folder beside it and renamed when complete and checked.\n" +
			"The period must be closed and settled (prepay.csv is the settlement's record); an OPEN, CLOSING or\n" +
			"CLOSED-but-unsettled period is refused. Two exports of the same period are byte-identical: rows are\n" +
			"sorted, generated_at is the period's close time (its cut-off), journal_head the journal at close.\n" +
			"sharer_ref and beneficiary_ref are HMAC-SHA256(export key, person_ref): the key never leaves this\n" +
			"process and no ID number or person_ref is written.\n\n" +
			"--province XX0000 writes the bundle scoped to one provincial unit instead: usages where it is payer or\n" +
			"payee, and only its own rows of the derived files, with \"province\" in manifest.json (verify it with\n" +
			"clearing verify, which recognises it).\n\n" +
			"--workbook writes the operators' .xlsx as well (positions, regions, instructions with Chinese names).\n" +
			"A bare --workbook puts it beside DIR as <setlym>.xlsx (<setlym>-<province>.xlsx when scoped), never\n" +
			"inside the bundle folder, which holds exactly the files its manifest describes; --workbook=PATH\n" +
			"chooses the path. An existing workbook is replaced." + config.EnvHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runExport(ctx, f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.period, "period", "", "the settlement month to export, YYYYMM (required)")
	fl.StringVar(&f.out, "out", "", "the bundle folder to create; must not exist or be empty (required)")
	fl.StringVar(&f.databaseURL, "database-url", "", "PostgreSQL URL of the clearing database (required)")
	fl.StringVar(&f.exportKeyFile, "export-key-file", "", "HMAC key for the person pseudonyms in exports, at least 32 bytes as hex; the same file\n"+
		"as clearing serve's (required)")
	fl.StringVar(&f.workbook, "workbook", "", "also write the operators' .xlsx workbook; bare --workbook: beside --out as <setlym>.xlsx,\n"+
		"--workbook=PATH: at PATH")
	fl.Lookup("workbook").NoOptDefVal = workbookAuto
	fl.StringVar(&f.province, "province", "", "write the bundle scoped to this provincial unit (XX0000) instead of the national one")
	fl.StringVar(&f.threshold, "prepay-threshold", config.PrepayWarningThreshold,
		"the prepayment warning threshold the settlement used (as for clearing serve); prepay.csv's warning column\n"+
			"is checked with it")
	config.Operands(cmd, "period", "out", "province")
	return cmd
}

// readExportKey reads a key file (hex, white space around it ignored,
// docs/cli.md). Errors never quote the file's content.
func readExportKey(path string) (audit.PseudonymKey, error) {
	if path == "" {
		return audit.PseudonymKey{}, errors.New("--export-key-file is required")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return audit.PseudonymKey{}, fmt.Errorf("--export-key-file: %w", err)
	}
	k, err := audit.ParsePseudonymKey(string(b))
	switch {
	case errors.Is(err, audit.ErrWeakKey):
		return audit.PseudonymKey{}, fmt.Errorf("--export-key-file %s: %w", path, audit.ErrWeakKey)
	case err != nil:
		return audit.PseudonymKey{}, fmt.Errorf("--export-key-file %s: not a hex key", path)
	}
	return k, nil
}

// parseThreshold reads a warning threshold in (0, 1].
func parseWarningThreshold(flag, s string) (decimal.Decimal, error) {
	d, err := decimal.NewFromString(s)
	if err != nil || !d.IsPositive() || d.GreaterThan(decimal.NewFromInt(1)) {
		return decimal.Decimal{}, fmt.Errorf("%s %q: want a decimal in (0, 1], e.g. 0.70", flag, s)
	}
	return d, nil
}

// workbookPath resolves --workbook.
func workbookPath(flagValue, out string, p region.Period, province string) string {
	if flagValue != workbookAuto {
		return flagValue
	}
	name := p.String()
	if province != "" {
		name += "-" + province
	}
	return filepath.Join(filepath.Dir(filepath.Clean(out)), name+".xlsx")
}

func runExport(ctx context.Context, f exportFlags, stdout io.Writer) error {
	if f.period == "" {
		return errors.New("--period is required")
	}
	p, err := region.ParsePeriod(f.period)
	if err != nil {
		return fmt.Errorf("--period: %w", err)
	}
	if f.out == "" {
		return errors.New("--out is required")
	}
	if f.databaseURL == "" {
		return errors.New("--database-url is required")
	}
	if f.province != "" {
		if _, err := region.ParseProvince(f.province); err != nil {
			return fmt.Errorf("--province: %w", err)
		}
	}
	thr, err := parseWarningThreshold("--prepay-threshold", f.threshold)
	if err != nil {
		return err
	}
	key, err := readExportKey(f.exportKeyFile)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, f.databaseURL)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	store, err := clearingdb.New(pool, clearingdb.Config{})
	if err != nil {
		return err
	}
	src, err := store.ExportSource(ctx, p, clearingdb.ExportOptions{Key: key, WarningThreshold: thr, Province: f.province})
	switch {
	case errors.Is(err, clearingdb.ErrNotFound):
		return fmt.Errorf("period %s does not exist in the clearing database (nothing was ever cleared in it)", p)
	case err != nil:
		return err
	}
	// The bundle is staged beside DIR and renamed into place, so DIR's parent
	// must exist (e.g. demo-out/exports/ for demo-out/exports/202610).
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(f.out)), 0o755); err != nil {
		return fmt.Errorf("--out %s: %w", f.out, err)
	}
	man, err := src.WriteBundle(ctx, f.out)
	if err != nil {
		return err
	}
	scope := "national bundle"
	if f.province != "" {
		scope = "bundle of province " + f.province + " (" + region.ProvinceName(f.province) + ")"
	}
	fmt.Fprintf(stdout, "wrote %s: %s of %s, %d usages, gross %s, closed %s, journal_head %s\n",
		f.out, scope, p, man.Totals.Usages, man.Totals.Gross, man.GeneratedAt.In(region.Shanghai).Format(time.RFC3339), man.JournalHead)
	if f.workbook != "" {
		path := workbookPath(f.workbook, f.out, p, f.province)
		if err := audit.WriteWorkbook(ctx, path, src); err != nil {
			return fmt.Errorf("workbook %s: %w", path, err)
		}
		fmt.Fprintf(stdout, "wrote %s\n", path)
	}
	return nil
}

type verifyFlags struct {
	journalHead, threshold, national string
}

func verifyCmd() *cobra.Command {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify DIR",
		Short: "verify an audit export bundle: recompute every file from usages.csv and check every hash",
		Long: "verify checks the bundle in DIR with the independent verifier (audit/verify): manifest form, every\n" +
			"file's header, lines, codes, amounts, times and order, its row count and sha256, and every derived file\n" +
			"recomputed from usages.csv alone. It prints \"ok\", or the first difference (file, line, column, want,\n" +
			"got) and exits non-zero.\n\n" +
			"A province bundle (manifest.json has \"province\") is checked the same way for that province: every\n" +
			"usage involves it, and its own position, regions, instructions and prepay row are recomputed from its\n" +
			"usages. --national DIR also reconciles it with the national bundle of the period: that bundle must\n" +
			"verify, have the same journal_head, and each province file must be the national file filtered to the\n" +
			"province, byte for byte.\n\n" +
			"generated_at (the close time) and journal_head are attested by the clearing service, not derivable from\n" +
			"the files: pass --journal-head with the head read from the clearing journal to check the latter." + config.EnvHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runVerify(ctx, args[0], f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.journalHead, "journal-head", "", "the clearing journal's head at close (64 hex); manifest journal_head must equal it")
	fl.StringVar(&f.threshold, "warning-threshold", verify.DefaultWarningThreshold,
		"the prepayment warning threshold the settlement used (prepay.csv's warning column)")
	fl.StringVar(&f.national, "national", "", "for a province bundle: the national bundle of the same period to reconcile it with")
	config.Operands(cmd, "journal-head", "national")
	return cmd
}

// errNotVerified makes verify exit non-zero after it printed the difference.
var errNotVerified = errors.New("bundle does not verify")

func runVerify(ctx context.Context, dir string, f verifyFlags, stdout io.Writer) error {
	thr, err := parseWarningThreshold("--warning-threshold", f.threshold)
	if err != nil {
		return err
	}
	if h := f.journalHead; h != "" && (len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "") {
		return fmt.Errorf("--journal-head: want 64 lowercase hex characters")
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("%s: not a bundle folder: %v", dir, err)
	}
	fsys := os.DirFS(dir)
	province, perr := clearingdb.BundleProvince(fsys)
	if perr == nil && province != "" {
		opts := clearingdb.ProvinceVerifyOptions{WarningThreshold: thr, JournalHead: f.journalHead}
		if f.national != "" {
			opts.National = os.DirFS(f.national)
		}
		err = clearingdb.VerifyProvinceBundle(ctx, fsys, opts)
	} else {
		// Not a province bundle, or a manifest too broken to tell: the
		// national verifier reports what is wrong with it.
		if f.national != "" {
			return errors.New("--national applies to a province bundle; " + dir + " is not one")
		}
		err = verify.VerifyFS(ctx, fsys, verify.Options{WarningThreshold: thr, JournalHead: f.journalHead})
	}
	var d *verify.Difference
	switch {
	case errors.As(err, &d):
		fmt.Fprintln(stdout, d.Error())
		return fmt.Errorf("%s: %w", dir, errNotVerified)
	case err != nil:
		return err
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}
