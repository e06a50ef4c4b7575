package audit_test

import (
	"bytes"
	"context"
	"testing"

	"gongji/audit"
)

// FuzzWriteRawCSV feeds arbitrary bodies to the raw usages path. It must never
// panic, and what it accepts must be a fixed point: its output body, fed
// back, gives the same bytes (seed corpus in testdata/fuzz/FuzzWriteRawCSV).
func FuzzWriteRawCSV(f *testing.F) {
	f.Add([]byte("A202608-0001,202608,ADJUSTMENT,MEDICAL,510000,510100,110000,110100,35.25,2026-08-20T15:30:00+08:00,false,U202607-0042,8515a7b0c7e39c93f2e313f157971a70,8ffd3aa1484c66158903fe4f2a862769\n"))
	meta := fixture().Info
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > 1<<20 {
			return
		}
		var out bytes.Buffer
		sum, err := audit.WriteRawCSV(context.Background(), &out, audit.FileUsages, meta, bytes.NewReader(body))
		if err != nil {
			return
		}
		head := out.Bytes()[:bytes.IndexByte(out.Bytes(), '\n')+1]
		if !bytes.Equal(out.Bytes()[len(head):], body) {
			t.Fatalf("accepted body was rewritten")
		}
		var again bytes.Buffer
		sum2, err := audit.WriteRawCSV(context.Background(), &again, audit.FileUsages, meta, bytes.NewReader(out.Bytes()[len(head):]))
		if err != nil || sum2 != sum || !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("not a fixed point: %v", err)
		}
	})
}
